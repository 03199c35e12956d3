"""The HTTPS listener in process, on loopback: real TLS handshakes with Python's ssl, the
leaf chosen by SNI, refusals as real alerts, ClientHellos however they arrive, the front
door off the caller's loop, a listener that outlives bad clients, and one that closes
(and closes its sockets) even when a loop is stuck."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography import x509

from appliance.tls import leaves as leaves_module
from appliance.tls.admission import Admission
from appliance.tls.clienthello import ALERT_DECODE_ERROR, MAX_HELLO_BYTES, MAX_HELLO_RECORDS
from appliance.tls.listener import WRITE_HIGH_WATER_BYTES
from tests.tls.listening import (
    Hello,
    Listening,
    client_hello,
    connect,
    eventually,
    handshake,
    listening,
    read_all,
    send_raw,
    trickled_handshake,
)


@pytest.fixture
async def at(tmp_path: Path) -> AsyncIterator[Listening]:
    async with listening(tmp_path, handshake_timeout_s=5) as listener:
        yield listener


async def test_a_configured_name_gets_its_leaf_and_reaches_the_protocol(at: Listening) -> None:
    greeting, leaf = await asyncio.to_thread(handshake, at, "GHCR.io")
    assert greeting == b"hello\n"
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ghcr.io"]
    assert at.select.asked == ["GHCR.io"]


@pytest.mark.parametrize("sni", ["registry.example", "docker.io", None])
async def test_a_name_not_served_gets_an_unrecognized_name_alert_and_mints_nothing(
    at: Listening, sni: str | None
) -> None:
    with pytest.raises(OSError, match="UNRECOGNIZED_NAME"):
        await asyncio.to_thread(handshake, at, sni)
    assert at.select.leaves.mint_count == 0


async def test_a_failed_mint_costs_one_connection_not_the_listener(
    at: Listening, caplog: pytest.LogCaptureFixture
) -> None:
    at.select.fail = True
    with pytest.raises(OSError, match="INTERNAL_ERROR"):
        await asyncio.to_thread(handshake, at, "ghcr.io")
    assert "tls mint failed sni='ghcr.io'" in caplog.text
    at.select.fail = False
    greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io")
    assert greeting == b"hello\n"


async def test_plain_http_is_closed_and_a_malformed_hello_gets_a_decode_error(
    at: Listening,
) -> None:
    assert await asyncio.to_thread(send_raw, at, b"GET / HTTP/1.1\r\n\r\n") == b""
    empty_record = b"\x16\x03\x01\x00\x00"
    assert await asyncio.to_thread(send_raw, at, empty_record) == ALERT_DECODE_ERROR
    assert at.select.asked == []  # neither got as far as choosing a leaf
    greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io")
    assert greeting == b"hello\n"


def one_byte_each(hello: bytes) -> list[bytes]:
    return [hello[i : i + 1] for i in range(len(hello))]


def two_records(hello: bytes) -> list[bytes]:
    """The handshake message split over two records, each sent in two segments (one
    ending inside the second record's header)."""
    body = hello[5:]
    half = len(body) // 2
    wire = b"".join(
        struct.pack("!BHH", 0x16, 0x0301, len(part)) + part for part in (body[:half], body[half:])
    )
    cut = 5 + half + 2
    return [wire[:cut], wire[cut:]]


@pytest.mark.parametrize("chunks", [one_byte_each, two_records])
async def test_a_hello_however_it_arrives_gets_its_certificate(at: Listening, chunks: Any) -> None:
    greeting = await asyncio.to_thread(trickled_handshake, at, "ghcr.io", chunks)
    assert greeting == b"hello\n"
    assert at.select.asked == ["ghcr.io"]


def big_hello(sni: str, size: int, record: int = 1 << 14) -> bytes:
    """A ClientHello padded to about `size` bytes, in records of at most `record`."""
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    padding = struct.pack("!HH", 21, size) + bytes(size)
    extensions = sni_ext + padding
    body = (
        b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        + struct.pack("!H", len(extensions)) + extensions
    )  # fmt: skip
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"".join(
        struct.pack("!BHH", 0x16, 0x0301, len(message[i : i + record])) + message[i : i + record]
        for i in range(0, len(message), record)
    )


async def test_a_hello_over_several_full_records_is_read_whole_and_a_too_big_one_refused(
    at: Listening,
) -> None:
    # ~48 KiB over four records: read whole, the name chosen (then TLS fails: it is fake).
    wire = big_hello("ghcr.io", 48 << 10)
    assert len(wire) < MAX_HELLO_BYTES
    await asyncio.to_thread(send_raw, at, wire)
    assert at.select.asked == ["ghcr.io"]
    # One whose length says more than 64 KiB: a decode error after its first record.
    first_record = big_hello("ghcr.io", 60 << 10)[: 5 + (1 << 14)]
    too_big = first_record[:6] + (MAX_HELLO_BYTES).to_bytes(3, "big") + first_record[9:]
    assert await asyncio.to_thread(send_raw, at, too_big) == ALERT_DECODE_ERROR
    # One trickled in tiny records: refused after 64 of them, not re-read for each.
    tiny = big_hello("ghcr.io", 1 << 10, record=8)
    assert len(tiny) // 13 > MAX_HELLO_RECORDS
    assert await asyncio.to_thread(send_raw, at, tiny) == ALERT_DECODE_ERROR
    assert at.select.asked == ["ghcr.io"]


async def test_the_front_door_and_minting_run_off_the_callers_loop(
    at: Listening, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a leaf for a new name is being signed, the caller's loop (the cache's, in
    regcache) goes on serving: here it completes another client's handshake."""
    entered, release = threading.Event(), threading.Event()
    mint_threads: list[str] = []
    waited: list[bool] = []
    real_mint = leaves_module.mint_leaf

    def slow_mint(ca: Any, name: str, *args: Any) -> x509.Certificate:
        mint_threads.append(threading.current_thread().name)
        if name == "new.docker.io":
            entered.set()
            waited.append(release.wait(10))
        return real_mint(ca, name, *args)

    monkeypatch.setattr(leaves_module, "mint_leaf", slow_mint)
    first = asyncio.ensure_future(asyncio.to_thread(handshake, at, "new.docker.io"))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        # Same name meanwhile: waits for that one mint rather than minting again.
        second = asyncio.ensure_future(asyncio.to_thread(handshake, at, "new.docker.io"))
        greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io")
        assert greeting == b"hello\n"
    finally:
        release.set()
    assert (await first)[0] == b"hello\n" and (await second)[0] == b"hello\n"
    assert waited == [True]  # released by the test, not by the time-out
    assert at.select.leaves.mint_count == 2  # new.docker.io once, ghcr.io once
    main = threading.current_thread().name
    assert main not in mint_threads and main not in at.select.threads
    assert at.select.threads == {"https-front-door"}


async def test_a_stuck_front_door_is_seen_by_the_health_check(tmp_path: Path) -> None:
    """The front door has its own loop: the health monitor must notice when it stops
    running callbacks (the cache's loop lag says nothing about it)."""
    async with listening(tmp_path) as at:
        assert await at.listener.stalled() is None
        door = at.listener._door
        assert door is not None
        released = threading.Event()
        door.call_soon_threadsafe(released.wait, 10)  # a callback that does not return
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):  # the monitor's deadline, shortened
                    await at.listener.stalled()
        finally:
            released.set()
        assert await at.listener.stalled() is None
    assert await at.listener.stalled() == "the front door's loop is not running"


def finish(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what a stopped loop left pending, let it end, close the loop (from a
    thread that runs no loop)."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


@contextlib.asynccontextmanager
async def stuck_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, stuck in a callback until the test ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    released = threading.Event()
    loop.call_soon_threadsafe(released.wait, 30)
    try:
        yield loop
    finally:
        released.set()
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 10)
        await asyncio.to_thread(finish, loop)


async def test_close_is_bounded_when_the_front_door_is_stuck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A front door stuck in a callback (what `stalled` reports) used to hang `close`,
    and with it regcache's shutdown."""
    async with listening(tmp_path, stop_timeout_s=0.5) as at:
        door, thread = at.listener._door, at.listener._thread
        assert door is not None and thread is not None
        released = threading.Event()
        door.call_soon_threadsafe(released.wait, 30)
        try:
            async with asyncio.timeout(5):  # a safety net: the bound is 0.5 s
                await at.listener.close()
        finally:
            released.set()
        await asyncio.to_thread(thread.join, 10)  # the door ends once it is free
        assert not thread.is_alive()
        await asyncio.to_thread(finish, door)
        assert await at.listener.stalled() == "the front door's loop is not running"
    assert "https close timed-out waiting=front-door-tasks timeout_s=0.5" in caplog.text
    assert "https close timed-out waiting=front-door-thread timeout_s=0.5" in caplog.text


async def test_a_hand_over_given_up_before_its_loop_ran_it_closes_the_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection handed to a serving loop that has not got to it (stuck, here) and
    then given up (the listener closes) used to stay open, unanswered, until garbage
    collection; now the front door closes it and gives its slot back."""
    caplog.set_level(logging.DEBUG)
    admission = Admission()
    async with (
        stuck_loop() as loop,
        listening(tmp_path, admission=admission, other_loops=[(loop, Hello)]) as at,
    ):
        # in turn: the first connection to the caller's loop, the second to the stuck one
        greeting, _ = await asyncio.to_thread(handshake, at, "ghcr.io")
        assert greeting == b"hello\n"
        with connect(at, "127.0.0.7", timeout=5) as sock:
            sock.sendall(client_hello("ghcr.io"))
            await eventually(lambda: at.select.asked == ["ghcr.io", "ghcr.io"])
            await at.listener.close()  # the leaf is chosen: the hand-over is under way
            assert await asyncio.to_thread(read_all, sock) == b""  # closed, not a time-out
        assert admission.held("127.0.0.7") == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


class Flood(asyncio.Protocol):
    """A handler that answers a request by writing as long as its transport lets it,
    as aiohttp's does; notes how much the transport held when it said to wait."""

    held: ClassVar[list[int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport, self.paused = transport, False

    def data_received(self, data: bytes) -> None:
        for _ in range(4096):  # at most 64 MiB, far more than any socket buffer takes
            if self.paused:
                return
            self.transport.write(b"x" * (16 << 10))

    def pause_writing(self) -> None:
        self.paused = True
        Flood.held.append(self.transport.get_write_buffer_size())


async def test_a_client_that_does_not_read_holds_little_of_the_gateways_memory(
    tmp_path: Path,
) -> None:
    """asyncio's TLS lets a handler write 512 KiB beyond what the socket takes before it
    has it wait, and keeps it per connection; regcache's connections wait at 64 KiB."""
    Flood.held.clear()
    async with listening(tmp_path, protocol=Flood, handshake_timeout_s=5) as at:
        ctx = ssl.create_default_context(cafile=str(at.ca_pem))

        def connect_and_stall() -> None:
            with connect(at) as sock, ctx.wrap_socket(sock, server_hostname="ghcr.io") as tls:
                tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: ghcr.io\r\n\r\n")
                time.sleep(1.0)  # never reads the answer

        await asyncio.to_thread(connect_and_stall)
    assert Flood.held, "the handler was never told to wait"
    assert Flood.held[0] <= WRITE_HIGH_WATER_BYTES + (32 << 10)
