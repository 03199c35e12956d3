"""More event loops for TLS: one process serves hits on every core.

The cache, its index, fills and the upstream client live on the main loop. Serving a
stored blob is mostly TLS encryption, file reads and socket writes, which all release
the GIL, so extra loops in threads, each carrying a share of the client connections,
use the other cores. A handler on an extra loop answers hits known in memory itself
(`RegistryCache.stored_now`) and streams stored files itself; it asks the main loop for
every other decision (`Bridge.run`), pulls bodies produced there piece by piece
(`Bridge.iterate`) and sends it its statistics in batches (`Bridge.call`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from appliance.kit.listen import ServingLoop

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP_TIMEOUT_S = 30.0
_BATCH_S = 0.01


class Bridge:
    """How a handler reaches the main loop; `Bridge(None)` is for the main loop itself."""

    def __init__(self, home: asyncio.AbstractEventLoop | None) -> None:
        self._home = home
        self.crosses = home is not None
        """Whether calls cross to another thread (each item iterated costs a round trip)."""
        self._calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the main loop (cancelled there if cancelled here)."""
        if self._home is None:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._home))

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """Call `fn` on the main loop soon, without waiting. Calls are sent in batches
        (`_BATCH_S`): waking the main loop per request would cost every request a
        thread switch (and the GIL) on the way."""
        if self._home is None:
            fn(*args)
            return
        self._calls.append((fn, args))
        if len(self._calls) == 1:
            asyncio.get_running_loop().call_later(_BATCH_S, self._send_calls)

    def _send_calls(self) -> None:
        calls, self._calls = self._calls, []
        if self._home is not None and not self._home.is_closed():
            self._home.call_soon_threadsafe(_call_all, calls)

    def iterate(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """Iterate here an async iterator that belongs to the main loop."""
        return source if self._home is None else _pull(source, self._home)

    def export(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """The reverse: `source` belongs to this loop and is iterated on the main loop."""
        return source if self._home is None else _pull(source, asyncio.get_running_loop())


def _call_all(calls: list[tuple[Callable[..., object], tuple[object, ...]]]) -> None:
    for fn, args in calls:
        try:
            fn(*args)
        except Exception:  # one failed call must not lose the others
            log.exception("bridged call failed fn=%s", fn)


async def _pull(source: AsyncIterator[T], owner: asyncio.AbstractEventLoop) -> AsyncIterator[T]:
    """Each item of `source` fetched on `owner`; closing this closes `source` there."""

    async def step() -> tuple[bool, T | None]:
        try:
            return True, await anext(source)
        except StopAsyncIteration:
            return False, None

    async def close() -> None:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()

    try:
        while True:
            more, item = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(step(), owner))
            if not more:
                return
            yield item  # type: ignore[misc]
    finally:
        # Runs the source's own cleanup (a fill's reader leaving, an upstream body closed).
        if not owner.is_closed():
            asyncio.run_coroutine_threadsafe(close(), owner)


class ServingLoops:
    """`count` event loops in threads, each with its own aiohttp server for `make_app`'s
    application; the TLS listener hands them connections (`targets`)."""

    def __init__(self, count: int, make_app: Callable[[Bridge], web.Application]) -> None:
        self._count = count
        self._make_app = make_app
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._threads: list[threading.Thread] = []
        self._runners: list[web.AppRunner] = []

    async def start(self, start_runner: Callable[[web.Application], Any]) -> None:
        home = asyncio.get_running_loop()
        for number in range(self._count):
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name=f"https-loop-{number + 1}", daemon=True
            )
            thread.start()
            self._loops.append(loop)
            self._threads.append(thread)
            app = self._make_app(Bridge(home))
            runner = await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(start_runner(app), loop)
            )
            self._runners.append(runner)
        if self._count:
            log.info("https loops=%d", self._count + 1)

    def targets(self) -> list[ServingLoop]:
        """(loop, protocol factory) of each extra loop."""
        out: list[ServingLoop] = []
        for loop, runner in zip(self._loops, self._runners, strict=True):
            assert runner.server is not None
            out.append((loop, runner.server))
        return out

    async def stalled(self) -> str | None:
        """None if every extra loop runs a callback promptly (the health monitor's
        deadline applies), else which is not running."""
        for number, loop in enumerate(self._loops, start=1):
            if loop.is_closed() or not loop.is_running():
                return f"https loop {number} is not running"
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop))
        return None

    async def close(self, *home: web.AppRunner) -> None:
        """Stop serving: the runner of every loop, and the `home` runners (of the loop that
        calls), all at once; each may wait out the requests in flight on it."""
        cleanups = [
            asyncio.wait_for(
                asyncio.wrap_future(asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)),
                _STOP_TIMEOUT_S,
            )
            for loop, runner in zip(self._loops, self._runners, strict=False)
        ] + [runner.cleanup() for runner in home]
        for outcome in await asyncio.gather(*cleanups, return_exceptions=True):
            if isinstance(outcome, Exception):  # stopping regardless
                log.warning("https runner cleanup failed error=%s", outcome)
        for loop, thread in zip(self._loops, self._threads, strict=True):
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, _STOP_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()
        self._loops.clear()
        self._threads.clear()
        self._runners.clear()
