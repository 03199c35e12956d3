"""Background work: `spawn()` for tasks that may end, with a name and a strong reference
(`stop_spawned()` ends them at shutdown), `supervise()` for the few that must run as
long as regcache does, and `to_thread_to_end()` for a thread call whose caller may be
cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

Job = Callable[[], Awaitable[None]]
"""Background work that runs until cancelled."""

# The event loop keeps only weak references to tasks; this set keeps them alive.
_running: set[asyncio.Task[Any]] = set()
_STOP_ROUNDS = 3  # `stop_spawned`: clean-ups spawning clean-ups, a few deep at most


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


async def stop_spawned(grace_s: float) -> None:
    """At shutdown, before what spawned tasks use (the index, the upstream session) is
    released: this loop's spawned tasks get `grace_s` to end, the rest are cancelled and
    waited for; then the same for tasks spawned meanwhile (a cancellation may spawn a
    clean-up, such as a lease's release).
    A fill cancelled so discards its temp file; one left running would commit a file
    after the index closed, leaving it unindexed until the next start. Tasks of other
    loops (the TLS front door's) are theirs to stop."""
    loop = asyncio.get_running_loop()
    for _ in range(_STOP_ROUNDS):  # each round with the grace: at most rounds x grace
        mine = {t for t in _running if t.get_loop() is loop and t is not asyncio.current_task()}
        if not mine:
            return
        _, pending = await asyncio.wait(mine, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("task failed name=%s", task.get_name(), exc_info=task.exception())


async def to_thread_to_end(fn: Callable[..., T], *args: Any) -> T:
    """`asyncio.to_thread`, but a cancellation waits for `fn` to return before it goes
    on: the thread cannot be stopped, and what it works on must not be released under
    it. A file descriptor closed meanwhile may already be another file's, or a client's
    socket, by the time the thread writes to it."""
    call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        while not call.done():  # one call, so bounded; cancelled again, it still waits
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([call])
        if not call.cancelled():
            call.exception()  # retrieved: what goes on is the cancellation
        raise


class TaskEnded(Exception):
    """A supervised job raised (the cause) or returned, though it should run until
    cancelled."""

    def __init__(self, name: str) -> None:
        super().__init__(f"background task {name} ended")
        self.name = name


async def supervise(jobs: Mapping[str, Job], stop: asyncio.Event) -> TaskEnded | None:
    """Run `jobs` in one TaskGroup until `stop` is set, then cancel them: None.

    Restart policy: none. A job that raises or returns cancels the others and is returned
    (its exception as `__cause__`); the caller logs it and exits 1, and systemd
    (Restart=on-failure) starts regcache afresh. Serving on without, say, the health
    monitor would keep DNS intercepting for a proxy nobody watches.
    """
    failed: TaskEnded | None = None
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_forever(n, j), name=n) for n, j in jobs.items()]
            await stop.wait()
            for task in tasks:
                task.cancel()
    except* TaskEnded as ended:
        first = ended.exceptions[0]
        assert isinstance(first, TaskEnded)
        failed = first
    return failed


async def _forever(name: str, job: Job) -> None:
    try:
        await job()
    except Exception as e:
        raise TaskEnded(name) from e
    raise TaskEnded(name)
