"""A TlsListener in the test's process on loopback, and clients for it (from any
127.0.0.x source address, by TLS or by raw bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from appliance.config.hostnames import HostSet
from appliance.config.values import Endpoint
from appliance.tls.admission import Admission
from appliance.tls.ca import to_pem
from appliance.tls.leaves import LeafStore
from appliance.tls.listener import TlsListener
from tests.harness import free_port
from tests.tls.cas import new_ca


class Hello(asyncio.Protocol):
    """What the HTTP server would be: greets each connection that got through TLS."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"hello\n")
        transport.close()


class Hold(asyncio.Protocol):
    """Greets, then keeps the connection open until the client closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"hello\n")


@dataclass
class Selector:
    """The leaf store, with a switch to make minting fail; notes where it was asked."""

    leaves: LeafStore
    fail: bool = False
    asked: list[str | None] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)

    async def __call__(self, name: str | None) -> ssl.SSLContext | None:
        self.asked.append(name)
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise RuntimeError("mint failed")
        return await self.leaves.context(name)


@dataclass
class Listening:
    port: int
    ca_pem: Path
    select: Selector
    admission: Admission
    listener: TlsListener


@contextlib.asynccontextmanager
async def listening(
    tmp_path: Path,
    protocol: Callable[[], asyncio.BaseProtocol] = Hello,
    admission: Admission | None = None,
    hosts: tuple[str, ...] = ("ghcr.io", "*.docker.io"),
    **kwargs: Any,
) -> AsyncIterator[Listening]:
    ca = new_ca(tmp_path)
    (tmp_path / "ca.pem").write_bytes(to_pem([ca.cert]))
    select = Selector(LeafStore(ca, HostSet.of(list(hosts)), dt.timedelta(days=30)))
    port = free_port()
    admission = admission or Admission()
    listener = TlsListener(select, protocol, admission=admission, **kwargs)
    try:
        await listener.start((Endpoint.parse(f"127.0.0.1:{port}"),))
        yield Listening(port, tmp_path / "ca.pem", select, admission, listener)
    finally:
        await listener.close()


def connect(at: Listening | int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    """A connection to the listener (or to a port) from `source`."""
    port = at if isinstance(at, int) else at.port
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )


def handshake(
    at: Listening, sni: str | None, source: str = "127.0.0.1"
) -> tuple[bytes, x509.Certificate]:
    """Verify against the CA, then read what the protocol sent."""
    ctx = ssl.create_default_context(cafile=str(at.ca_pem))
    ctx.check_hostname = sni is not None
    with connect(at, source) as sock, ctx.wrap_socket(sock, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return tls.recv(100), x509.load_der_x509_certificate(der)


def client_hello(sni: str) -> bytes:
    """The ClientHello Python's ssl sends for `sni`."""
    out = ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        return out.read()
    raise AssertionError("a handshake finished with nobody to talk to")


def read_all(sock: socket.socket) -> bytes:
    """Everything received until the listener closed the connection."""
    got = b""
    try:
        while chunk := sock.recv(100):
            got += chunk
    except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
        pass
    return got


def send_raw(at: Listening, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send `data`; everything received before the listener closed the connection."""
    with connect(at, source) as sock:
        sock.sendall(data)
        return read_all(sock)


def trickled_handshake(at: Listening, sni: str, chunks: Callable[[bytes], list[bytes]]) -> bytes:
    """A TLS handshake whose ClientHello goes out as `chunks(hello)`, one segment each
    with a pause between; then what the protocol sent."""
    ctx = ssl.create_default_context(cafile=str(at.ca_pem))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with connect(at) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        for chunk in chunks(outgoing.read()):
            sock.sendall(chunk)
            time.sleep(0.002)
        _pump(sock, tls, incoming, outgoing, tls.do_handshake)
        return _pump(sock, tls, incoming, outgoing, lambda: tls.read(100))


def _pump(
    sock: socket.socket,
    tls: ssl.SSLObject,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
    step: Callable[[], Any],
) -> Any:
    for _ in range(100):
        try:
            result = step()
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            incoming.write(data)
            continue
        if pending := outgoing.read():
            sock.sendall(pending)
        return result
    raise AssertionError("handshake did not finish")


@contextlib.contextmanager
def stalled(
    at: Listening | int, count: int, sources: tuple[str, ...], data: bytes
) -> Iterator[list[socket.socket]]:
    """`count` connections (spread over `sources`) that send `data` and then stall."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            sock = connect(at, sources[i % len(sources)])
            sock.sendall(data)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (bounded) until `check()` holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
