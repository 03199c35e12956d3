"""The ClientHello reader, on real ClientHellos and hostile bytes, and the listener's use of it."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.tls.clienthello import (
    MAX_HELLO_RECORDS,
    ClientHello,
    MalformedHello,
    NotTls,
    hello_or_need,
)
from tests.harness import Regcache
from tests.tls.clients import python_handshake


def real_hello(sni: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = sni is not None
    if sni is None:
        ctx.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def split_records(hello: bytes, size: int) -> bytes:
    """The same handshake message spread over records of at most `size` bytes."""
    body = hello[5:]
    return b"".join(
        struct.pack("!BHH", 0x16, 0x0301, len(body[i : i + size])) + body[i : i + size]
        for i in range(0, len(body), size)
    )


def test_reads_sni_from_a_real_client_hello() -> None:
    hello = real_hello("registry-1.docker.io")
    assert hello_or_need(hello) == ClientHello("registry-1.docker.io")
    assert hello_or_need(real_hello(None)) == ClientHello(None)


def asks_for_more(data: bytes) -> bool:
    """Whether `data` is too short to say, and the count asked for grows with it."""
    need = hello_or_need(data)
    return isinstance(need, int) and need > len(data)


def test_every_prefix_asks_for_more_and_records_may_be_split() -> None:
    hello = real_hello("ghcr.io")
    assert all(asks_for_more(hello[:n]) for n in range(len(hello)))
    split = split_records(hello, 100)
    assert hello_or_need(split) == ClientHello("ghcr.io")
    assert all(asks_for_more(split[:n]) for n in range(0, len(split), 7))


@pytest.mark.parametrize("size", [10_000, 100, 9])
def test_each_prefix_names_the_bytes_it_needs_and_waiting_for_them_makes_progress(
    size: int,
) -> None:
    """What the listener sets SO_RCVLOWAT to: more than it has, and never beyond the
    next record header or record end, so a hello needs one wait per header and record."""
    wire = split_records(real_hello("ghcr.io"), size)
    for n in range(len(wire)):
        need = hello_or_need(wire[:n])
        assert isinstance(need, int) and n < need <= len(wire)
    waits, have = 0, 0
    while not isinstance(found := hello_or_need(wire[:have]), ClientHello):
        have, waits = found, waits + 1
    records = -(-len(real_hello("ghcr.io")[5:]) // size)
    assert found.server_name == "ghcr.io" and waits == 2 * records


def test_a_hello_in_more_records_than_the_bound_is_malformed() -> None:
    body = real_hello("ghcr.io")[5:]
    size = len(body) // MAX_HELLO_RECORDS
    assert isinstance(hello_or_need(split_records(real_hello("ghcr.io"), size + 1)), ClientHello)
    with pytest.raises(MalformedHello, match="more than 64 records"):
        hello_or_need(split_records(real_hello("ghcr.io"), size - 1))


def test_plain_http_is_not_tls_and_bad_lengths_are_malformed() -> None:
    with pytest.raises(NotTls):
        hello_or_need(b"GET /v2/ HTTP/1.1\r\n")
    hello = bytearray(real_hello("quay.io"))
    hello[5] = 0x02  # ServerHello, not ClientHello
    with pytest.raises(MalformedHello):
        hello_or_need(bytes(hello))
    bad = bytearray(real_hello("quay.io"))
    bad[6:9] = (len(bad) - 9 - 1).to_bytes(3, "big")  # handshake claims one byte too few
    with pytest.raises(MalformedHello):
        hello_or_need(bytes(bad))


HELLO = real_hello("auth.docker.io")


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=700), st.integers(0, 600), st.binary(max_size=8))
def test_hostile_bytes_only_raise_our_errors(noise: bytes, cut: int, patch: bytes) -> None:
    hello = bytearray(HELLO)
    hello[cut : cut + len(patch)] = patch
    for data in (bytes(hello), noise, b"\x16\x03\x01" + noise):
        with contextlib.suppress(NotTls, MalformedHello):
            hello_or_need(data)


def test_a_client_hello_trickling_in_still_gets_its_certificate(regcache: Regcache, ca_pem) -> None:  # type: ignore[no-untyped-def]
    """The listener waits for the whole ClientHello, however it is segmented."""
    hello = split_records(real_hello("ghcr.io"), 64)
    with socket.create_connection(("127.0.0.1", regcache.https_port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(hello), 50):
            sock.sendall(hello[i : i + 50])
            time.sleep(0.01)
        record = sock.recv(5)
    assert record[0] == 0x16  # a handshake record (ServerHello) came back, not an alert
    python_handshake(regcache.https_port, "ghcr.io", ca_pem)


def test_plain_http_on_the_https_port_is_closed(regcache: Regcache) -> None:
    with socket.create_connection(("127.0.0.1", regcache.https_port), timeout=5) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: ghcr.io\r\n\r\n")
        # Closed with our request unread, the kernel may send RST instead of FIN: both fine.
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    assert "tls refused reason=not-tls" in regcache.log()
