"""The HTTPS front door under hostile load, on loopback: stalled ClientHellos cost no
CPU and do not keep others out; one source cannot hold more than its share of
connections, nor a few sources all the pending handshakes; clients outside the
allow-list are closed before a byte is read."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.tls.admission import Admission
from appliance.tls.clienthello import ALERT_DECODE_ERROR
from tests.harness import EXAMPLE_CONFIG, running, write_config
from tests.tls.listening import (
    Hold,
    Listening,
    client_hello,
    connect,
    eventually,
    handshake,
    listening,
    read_all,
    send_raw,
    stalled,
)

PARTIAL = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"  # 9 bytes of a 517-byte ClientHello


def refused_at_once(at: Listening | int, source: str, data: bytes = PARTIAL) -> bool:
    """True if the listener closes a connection from `source` without waiting for the
    rest of its hello (the listeners here wait longer than this client, 5 s)."""
    with connect(at, source, timeout=5) as sock:
        sock.sendall(data)
        try:
            return read_all(sock) == b""
        except TimeoutError:
            return False


async def test_stalled_hellos_cost_no_cpu_and_others_still_get_in(tmp_path: Path) -> None:
    """300 clients that send 9 bytes of a hello and stop: the listener used to re-peek
    each every 10 ms (300 x 100 wake-ups a second; 0.2-0.4 s of CPU per second here)."""
    admission = Admission(max_per_client=1000, max_pending_per_client=1000)
    async with listening(tmp_path, admission=admission, handshake_timeout_s=30) as at:
        with stalled(at, 300, ("127.0.0.1",), PARTIAL):
            await eventually(lambda: admission.held("127.0.0.1") == 300)
            await asyncio.sleep(0.2)  # let every wait settle
            cpu = time.process_time()
            await asyncio.sleep(1.0)
            used = time.process_time() - cpu
            # (b) meanwhile a real client completes its handshake
            greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io")
    assert greeting == b"hello\n"
    assert used < 0.05, f"{used:.3f} s of CPU in 1 s for 300 stalled ClientHellos"


async def test_one_source_beyond_its_cap_is_closed_at_once_and_others_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    admission = Admission(max_per_client=3)
    async with listening(tmp_path, admission=admission, handshake_timeout_s=30) as at:
        with stalled(at, 3, ("127.0.0.2",), PARTIAL) as held:
            await eventually(lambda: admission.held("127.0.0.2") == 3)
            assert await asyncio.to_thread(refused_at_once, at, "127.0.0.2")
            # another source is not affected, with stalled hellos or a real handshake
            with stalled(at, 3, ("127.0.0.3",), PARTIAL):
                await eventually(lambda: admission.held("127.0.0.3") == 3)
            greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io", "127.0.0.3")
            assert greeting == b"hello\n"
            # a stalled connection that ends gives its slot back
            held[0].close()
            await eventually(lambda: admission.held("127.0.0.2") == 2)
            greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io", "127.0.0.2")
            assert greeting == b"hello\n"
    assert "https refused reason=too-many-connections client=127.0.0.2 limit=3" in caplog.text
    assert "client=127.0.0.3" not in caplog.text


def hold_open(at: Listening, source: str) -> tuple[socket.socket, ssl.SSLSocket]:
    ctx = ssl.create_default_context(cafile=str(at.ca_pem))
    sock = connect(at, source)
    tls = ctx.wrap_socket(sock, server_hostname="ghcr.io")
    assert tls.recv(100) == b"hello\n"
    return sock, tls


async def test_a_few_sources_stalling_hellos_no_longer_shut_everyone_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case, at the defaults: four addresses that each open 256 connections
    (their whole share) and stall their hellos used to fill the 1,024 pending handshakes,
    and then every other client's new connection was shed until those hellos timed out.
    Now each holds at most 128 pending; the rest are closed at once."""
    sources = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
    admission = Admission()
    async with listening(tmp_path, admission=admission, handshake_timeout_s=30) as at:
        with stalled(at, 4 * 256, sources, PARTIAL):
            # accepted in order: after all of theirs
            greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io", "127.0.0.9")
            assert greeting == b"hello\n"
            assert [admission.held(source) for source in sources] == [128] * 4
            assert await asyncio.to_thread(refused_at_once, at, "127.0.0.2")
    for source in sources:
        assert f"https refused reason=too-many-pending client={source} limit=128" in caplog.text
    assert "too-many-handshakes" not in caplog.text


async def test_a_connection_stops_counting_as_pending_however_its_handshake_ends(
    tmp_path: Path,
) -> None:
    """Done, refused (not TLS, malformed, a name not served), timed out (the hello or
    the handshake) or failed (the leaf): each gives its pending place back, so a client
    making more than the cap of any of them, one after another, is never refused."""
    admission = Admission(max_pending_per_client=2)
    source = "127.0.0.6"
    async with listening(tmp_path, Hold, admission, handshake_timeout_s=2) as at:
        opened = [await asyncio.to_thread(hold_open, at, source) for _ in range(3)]
        for _sock, tls in opened:
            tls.close()
        for _ in range(3):
            assert await asyncio.to_thread(send_raw, at, b"GET / HTTP/1.1\r\n\r\n", source) == b""
            empty_record = b"\x16\x03\x01\x00\x00"
            assert await asyncio.to_thread(send_raw, at, empty_record, source) == ALERT_DECODE_ERROR
            with pytest.raises(OSError, match="UNRECOGNIZED_NAME"):
                await asyncio.to_thread(handshake, at, "example.com", source)
        for data in (PARTIAL, client_hello("ghcr.io")):  # the hello, then TLS, times out
            with stalled(at, 2, (source,), data) as socks:
                for sock in socks:  # closed by the listener after its time-out
                    await asyncio.to_thread(read_all, sock)
        at.select.fail = True
        for _ in range(3):
            with pytest.raises(OSError, match="INTERNAL_ERROR"):
                await asyncio.to_thread(handshake, at, "ghcr.io", source)
        at.select.fail = False
        with stalled(at, 2, (source,), PARTIAL):  # both places are free again
            await eventually(lambda: admission.held(source) == 2)


async def test_open_connections_count_against_the_cap_until_they_end(tmp_path: Path) -> None:
    admission = Admission(max_per_client=2)
    async with listening(tmp_path, Hold, admission, handshake_timeout_s=30) as at:
        opened = [await asyncio.to_thread(hold_open, at, "127.0.0.4") for _ in range(2)]
        try:
            assert admission.held("127.0.0.4") == 2
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.to_thread(hold_open, at, "127.0.0.4")
            opened.append(await asyncio.to_thread(hold_open, at, "127.0.0.5"))
            opened[0][1].close()
            await eventually(lambda: admission.held("127.0.0.4") == 1)
            opened.append(await asyncio.to_thread(hold_open, at, "127.0.0.4"))
        finally:
            for _sock, tls in opened:
                tls.close()
        await eventually(lambda: admission.held("127.0.0.4") == admission.held("127.0.0.5") == 0)


async def test_clients_outside_the_allow_list_are_closed_before_a_byte_is_read(
    tmp_path: Path,
) -> None:
    allow = (ipaddress.ip_network("127.0.0.2/32"),)
    async with listening(tmp_path, admission=Admission(allow), handshake_timeout_s=30) as at:
        assert await asyncio.to_thread(refused_at_once, at, "127.0.0.3")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(handshake, at, "ghcr.io", "127.0.0.1")
        assert at.select.asked == []  # no hello was read: no leaf was chosen
        greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io", "127.0.0.2")
        assert greeting == b"hello\n"


async def test_a_hello_that_times_out_or_is_cancelled_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wait cut by its time-out or by the listener closing used to be woken anyway
    when its bytes arrived in the same loop iteration: an InvalidStateError traceback."""
    caplog.set_level(logging.DEBUG)
    admission = Admission(max_pending_per_client=50)
    async with listening(tmp_path, admission=admission, handshake_timeout_s=0.5) as at:
        with stalled(at, 20, ("127.0.0.1",), PARTIAL[:3]) as socks:
            for sock in socks:  # closed by the listener after its time-out
                assert await asyncio.to_thread(read_all, sock) == b""
        with stalled(at, 50, ("127.0.0.1",), b"") as socks:
            await eventually(lambda: at.admission.held("127.0.0.1") == 50)
            for sock in socks:
                sock.sendall(PARTIAL)
            await asyncio.sleep(0)  # their bytes are in; the next iteration closes
            await at.listener.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def first_byte_back(port: int, source: str, data: bytes) -> bytes:
    with connect(port, source) as sock:
        sock.sendall(data)
        try:
            return sock.recv(1)
        except ConnectionResetError:
            return b""


@contextlib.contextmanager
def tls_connection(port: int, source: str) -> Iterator[ssl.SSLSocket]:
    """A TLS 1.2 connection, held open: its handshake ends with the server's Finished,
    so the server has finished it too by the time this returns (give or take its
    thread hop)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with connect(port, source) as sock, ctx.wrap_socket(sock, server_hostname="ghcr.io") as tls:
        yield tls


def test_regcache_applies_the_tls_keys_to_its_https_port(tmp_path: Path) -> None:
    """The config keys reach the listener regcache runs (allow-list, per-client caps)."""
    tls = yaml.safe_load(EXAMPLE_CONFIG.read_text())["tls"]
    tls |= {
        "allow_clients": ["127.0.0.2/32", "127.0.0.3/32", "127.0.0.4/32"],
        "max_connections_per_client": 3,
        "max_pending_per_client": 2,
    }
    rc = write_config(tmp_path, tls=tls)
    hello = client_hello("ghcr.io")
    with running(rc):
        assert first_byte_back(rc.https_port, "127.0.0.2", hello) == b"\x16"  # ServerHello
        assert first_byte_back(rc.https_port, "127.0.0.1", hello) == b""  # not allowed
        # accepted in order: the third pending from 127.0.0.3 is the one over its cap
        with stalled(rc.https_port, 2, ("127.0.0.3",), PARTIAL):
            assert refused_at_once(rc.https_port, "127.0.0.3")
            assert first_byte_back(rc.https_port, "127.0.0.2", hello) == b"\x16"
        # three open connections (none pending) are 127.0.0.4's share
        with contextlib.ExitStack() as held:
            for _ in range(3):
                held.enter_context(tls_connection(rc.https_port, "127.0.0.4"))
            assert refused_at_once(rc.https_port, "127.0.0.4")
    log = rc.log()
    assert "https refused reason=too-many-pending client=127.0.0.3 limit=2" in log
    assert "https refused reason=too-many-connections client=127.0.0.4 limit=3" in log
