"""Extra serving loops in threads, and the bridge their handlers use to reach the main loop.

Real threads and event loops; the whole proxy runs on two loops in every end-to-end test
(one per CPU by default), so this covers what those cannot steer: closing, stalls, order.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from appliance.proxy import app
from appliance.proxy.app import start_runner
from appliance.proxy.loops import Bridge, ServingLoops


async def test_bridged_bodies_run_on_their_loop_and_are_closed_there_when_cut_short() -> None:
    home = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []
    closed = asyncio.Event()

    async def body() -> AsyncIterator[int]:  # belongs to the main loop
        try:
            for i in range(100):
                seen.append((threading.current_thread().name, i))
                yield i
        finally:
            closed.set()

    async def consumer() -> list[int]:  # a handler on another loop takes three chunks
        got = []
        chunks = Bridge(home).iterate(body())
        async for item in chunks:
            got.append(item)
            if len(got) == 3:
                break
        await chunks.aclose()  # type: ignore[attr-defined]
        return got

    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, name="other")
    thread.start()
    try:
        got = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(consumer(), other))
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(5)
        other.close()
    assert got == [0, 1, 2]
    assert {name for name, _ in seen} == {threading.current_thread().name}
    assert len(seen) <= 4  # pulled one at a time, not run ahead


async def test_bridged_calls_arrive_in_order_on_the_main_loop() -> None:
    home = asyncio.get_running_loop()
    calls: list[tuple[int, str]] = []
    done = asyncio.Event()

    def record(i: int) -> None:
        calls.append((i, threading.current_thread().name))
        if i == 99:
            done.set()

    async def caller() -> None:
        bridge = Bridge(home)
        for i in range(100):
            bridge.call(record, i)
            if i % 10 == 0:
                await asyncio.sleep(0.005)

    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, name="other")
    thread.start()
    try:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(caller(), other))
        await asyncio.wait_for(done.wait(), 5)
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(5)
        other.close()
    assert [i for i, _ in calls] == list(range(100))
    assert {name for _, name in calls} == {threading.current_thread().name}


async def test_a_stalled_loop_fails_the_health_check_and_loops_stop_cleanly() -> None:
    loops = ServingLoops(2, lambda _bridge: web.Application())
    await loops.start(start_runner)
    try:
        assert len(loops.targets()) == 2
        assert await asyncio.wait_for(loops.stalled(), 2) is None
        stuck, _ = loops.targets()[1]
        stuck.call_soon_threadsafe(time.sleep, 1.5)  # a handler blocking its loop
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):  # the health monitor's deadline, shortened
            await asyncio.wait_for(loops.stalled(), 0.5)
        await asyncio.sleep(1.6)
        assert await asyncio.wait_for(loops.stalled(), 2) is None  # recovered
    finally:
        await loops.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("https-loop")]


async def test_closing_cuts_requests_still_running_after_the_grace_on_every_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop must not wait for a long download (systemd's TimeoutStopSec would end it
    with SIGKILL): what is still running after the grace is cancelled, on every loop and
    on the runners of the calling loop, all at once, and after the grace once (aiohttp's
    own timeout, given as is, is waited out twice: before and after it cuts the body)."""
    grace = 2.0  # twice would be 4 s: the window below has a second of room either way
    monkeypatch.setattr(app, "SHUTDOWN_GRACE_S", grace)
    started, cancelled = threading.Semaphore(0), []

    async def forever(_request: web.Request) -> web.Response:
        started.release()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append((threading.current_thread().name, time.monotonic()))
            raise
        return web.Response()

    def make(_bridge: object) -> web.Application:
        application = web.Application()
        application.router.add_get("/", forever)
        return application

    loops = ServingLoops(2, make)
    await loops.start(start_runner)
    home = await start_runner(make(None))
    assert home.server is not None
    clients = []
    try:
        targets = [*loops.targets(), (asyncio.get_running_loop(), home.server)]
        for loop, factory in targets:
            ours, theirs = socket.socketpair()
            clients.append(ours)
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                loop.connect_accepted_socket(factory, theirs), loop))  # fmt: skip
            ours.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in clients:
            assert await asyncio.to_thread(started.acquire, True, 10)
        closing = time.monotonic()
        async with asyncio.timeout(20):  # aiohttp's default would be 60 s, twice
            await loops.close(home)
    finally:
        await loops.close(home)
        for client in clients:
            client.close()
    names = sorted(name for name, _ in cancelled)
    assert names == ["MainThread", "https-loop-1", "https-loop-2"]
    # Each after its grace and not a second one: all at once, and each once.
    for _, when in cancelled:
        assert grace * 0.9 <= when - closing < grace * 1.5, [w - closing for _, w in cancelled]
