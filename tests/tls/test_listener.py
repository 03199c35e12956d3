"""The HTTPS listener in process, on loopback: real TLS handshakes with Python's ssl, the
leaf chosen by SNI, refusals as real alerts, and a listener that outlives bad clients."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from appliance.config.hostnames import HostSet
from appliance.config.values import Endpoint
from appliance.tls.ca import to_pem
from appliance.tls.clienthello import ALERT_DECODE_ERROR
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


@dataclass
class Selector:
    """The leaf store, with a switch to make minting fail."""

    leaves: LeafStore
    fail: bool = False
    asked: list[str | None] = field(default_factory=list)

    def __call__(self, name: str | None) -> ssl.SSLContext | None:
        self.asked.append(name)
        if self.fail:
            raise RuntimeError("mint failed")
        return self.leaves.context_for(name)


@dataclass
class Listening:
    port: int
    ca_pem: Path
    select: Selector


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[Listening]:
    ca = new_ca(tmp_path)
    (tmp_path / "ca.pem").write_bytes(to_pem([ca.cert]))
    select = Selector(LeafStore(ca, HostSet.of(["ghcr.io"]), dt.timedelta(days=30)))
    port = free_port()
    listener = TlsListener(select, Hello, handshake_timeout_s=5)
    await listener.start((Endpoint.parse(f"127.0.0.1:{port}"),))
    yield Listening(port, tmp_path / "ca.pem", select)
    await listener.close()


def handshake(at: Listening, sni: str | None) -> tuple[bytes, x509.Certificate]:
    """Verify against the CA, then read what the protocol sent."""
    ctx = ssl.create_default_context(cafile=str(at.ca_pem))
    ctx.check_hostname = sni is not None
    with (
        socket.create_connection(("127.0.0.1", at.port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return tls.recv(100), x509.load_der_x509_certificate(der)


def send_raw(at: Listening, data: bytes) -> bytes:
    """Send `data`; everything received before the listener closed the connection."""
    with socket.create_connection(("127.0.0.1", at.port), timeout=10) as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(100):
                got += chunk
        except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
            pass
        return got


async def test_a_configured_name_gets_its_leaf_and_reaches_the_protocol(
    listening: Listening,
) -> None:
    greeting, leaf = await asyncio.to_thread(handshake, listening, "GHCR.io")
    assert greeting == b"hello\n"
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ghcr.io"]
    assert listening.select.asked == ["GHCR.io"]


@pytest.mark.parametrize("sni", ["registry.example", "docker.io", None])
async def test_a_name_not_served_gets_an_unrecognized_name_alert_and_mints_nothing(
    listening: Listening, sni: str | None
) -> None:
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await asyncio.to_thread(handshake, listening, sni)
    assert listening.select.leaves.mint_count == 0


async def test_a_failed_mint_costs_one_connection_not_the_listener(
    listening: Listening, caplog: pytest.LogCaptureFixture
) -> None:
    listening.select.fail = True
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        await asyncio.to_thread(handshake, listening, "ghcr.io")
    assert "tls mint failed sni='ghcr.io'" in caplog.text
    listening.select.fail = False
    greeting, _ = await asyncio.to_thread(handshake, listening, "ghcr.io")
    assert greeting == b"hello\n"


async def test_plain_http_is_closed_and_a_malformed_hello_gets_a_decode_error(
    listening: Listening,
) -> None:
    assert await asyncio.to_thread(send_raw, listening, b"GET / HTTP/1.1\r\n\r\n") == b""
    empty_record = b"\x16\x03\x01\x00\x00"
    assert await asyncio.to_thread(send_raw, listening, empty_record) == ALERT_DECODE_ERROR
    assert listening.select.asked == []  # neither got as far as choosing a leaf
    greeting, _ = await asyncio.to_thread(handshake, listening, "ghcr.io")
    assert greeting == b"hello\n"


async def test_a_hello_that_times_out_or_is_cancelled_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wait cut by its time-out or by the listener closing used to be woken anyway
    when its bytes arrived in the same loop iteration: an InvalidStateError traceback."""
    caplog.set_level(logging.DEBUG)
    ca = new_ca(tmp_path)
    select = Selector(LeafStore(ca, HostSet.of(["ghcr.io"]), dt.timedelta(days=30)))
    port = free_port()
    listener = TlsListener(select, Hello, handshake_timeout_s=0.5)
    await listener.start((Endpoint.parse(f"127.0.0.1:{port}"),))
    at = Listening(port, tmp_path / "ca.pem", select)
    socks: list[socket.socket] = []
    try:
        # 9 bytes of a 517-byte ClientHello: closed after the time-out
        assert await asyncio.to_thread(send_raw, at, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc") == b""
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
        await asyncio.sleep(0.2)  # every connection waits for its hello
        for sock in socks:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")
        await asyncio.sleep(0)  # their bytes are in; the next iteration closes
    finally:
        await listener.close()
        for sock in socks:
            sock.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
