"""Background work: supervised jobs run until stopped, and one that ends stops the rest."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading

import pytest

from appliance.kit.tasks import spawn, stop_spawned, supervise, to_thread_to_end


async def test_supervised_jobs_run_until_stop_and_are_then_cancelled() -> None:
    stop, cancelled = asyncio.Event(), []

    async def job() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    loop = asyncio.get_running_loop()
    loop.call_later(0.05, stop.set)
    assert await supervise({"a": job, "b": job}, stop) is None
    assert cancelled == [True, True]


async def test_a_supervised_job_that_fails_stops_the_others_and_is_named() -> None:
    cancelled = []

    async def crash() -> None:
        await asyncio.sleep(0.01)
        raise KeyError("bug")

    async def steady() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def quits() -> None:
        return None

    async with asyncio.timeout(5):  # never waits for `stop`
        failed = await supervise({"health": steady, "eviction": crash}, asyncio.Event())
        assert failed is not None and failed.name == "eviction"
        assert isinstance(failed.__cause__, KeyError) and cancelled == [True]
        ended = await supervise({"savings-history": quits}, asyncio.Event())
        assert ended is not None and ended.name == "savings-history" and ended.__cause__ is None


async def test_a_spawned_task_nothing_else_refers_to_is_kept_until_it_ends() -> None:
    async def forgotten() -> None:
        await asyncio.get_running_loop().create_future()  # referred to by this task only

    spawn(forgotten(), name="forgotten-job")
    gc.collect()
    kept = [t for t in asyncio.all_tasks() if t.get_name() == "forgotten-job"]
    assert len(kept) == 1
    kept[0].cancel()
    await asyncio.sleep(0)


async def test_a_spawned_task_that_fails_is_logged_by_name_and_a_cancelled_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise KeyError("bug")

    failing = spawn(broken(), name="fill sha256:abc")
    with contextlib.suppress(KeyError):
        await failing
    cancelled = spawn(asyncio.sleep(3600), name="index-flush")
    await asyncio.sleep(0)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    await asyncio.sleep(0)  # done callbacks
    assert "task failed name=fill sha256:abc" in caplog.text and "KeyError: 'bug'" in caplog.text
    assert "index-flush" not in caplog.text


async def test_a_thread_call_cancelled_is_waited_for_before_the_cancellation_goes_on() -> None:
    started, release, done = threading.Event(), threading.Event(), []

    def work() -> int:
        started.set()
        release.wait(10)  # a safety net
        done.append(True)
        return 1

    calling = asyncio.ensure_future(to_thread_to_end(work))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        calling.cancel()
        await asyncio.sleep(0.05)
        calling.cancel()  # again: it still waits
        await asyncio.sleep(0.05)
        assert not calling.done() and done == []
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await calling
    assert done == [True]
    assert await to_thread_to_end(int, "2") == 2  # not cancelled: its result…

    def fails() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):  # …or its exception
        await to_thread_to_end(fails)


async def test_stopping_spawned_work_lets_quick_tasks_end_and_cancels_the_rest() -> None:
    """At shutdown: what ends within the grace ends as it would have; what does not is
    cancelled, and its clean-up has run by the time `stop_spawned` returns."""
    ended, cleaned = [], []

    async def quick() -> None:
        await asyncio.sleep(0.01)
        ended.append("quick")

    async def slow() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # a clean-up that itself awaits (a temp file's)
            cleaned.append("slow")

    tasks = [spawn(quick(), name="quick"), spawn(slow(), name="slow")]
    async with asyncio.timeout(10):
        await stop_spawned(0.5)
    assert ended == ["quick"] and cleaned == ["slow"]
    assert tasks[0].done() and not tasks[0].cancelled() and tasks[1].cancelled()
    await stop_spawned(0.5)  # nothing left: returns at once


async def test_stopping_spawned_work_leaves_other_loops_alone_and_waits_for_late_clean_ups() -> (
    None
):
    """Only this loop's tasks are this loop's to cancel (the TLS front door runs its own);
    a clean-up that a cancellation spawns is waited for too."""
    late: list[str] = []

    async def cleaned_late() -> None:
        await asyncio.sleep(0.05)
        late.append("done")

    async def slow() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            spawn(cleaned_late(), name="late clean-up")

    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        theirs = asyncio.run_coroutine_threadsafe(_spawn_sleeper(), other).result(5)
        spawn(slow(), name="slow")
        async with asyncio.timeout(10):
            await stop_spawned(0.1)
        assert late == ["done"]
        assert not theirs.done()  # not cancelled from this thread
        asyncio.run_coroutine_threadsafe(_cancelled(theirs), other).result(5)
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(5)
        other.close()


async def _spawn_sleeper() -> asyncio.Task[None]:
    return spawn(asyncio.sleep(3600), name="another loop's")


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
