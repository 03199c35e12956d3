"""SingleFlight: one call per key at a time; followers share what the leader found."""

from __future__ import annotations

import asyncio

import pytest

from appliance.kit.singleflight import SingleFlight


async def test_followers_share_the_leaders_result_without_calling() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "answer"

    leader = asyncio.create_task(flight.lead("k", call, lambda r: r))
    await asyncio.sleep(0)
    followers = [asyncio.create_task(flight.join("k")) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    assert await leader == "answer"
    assert await asyncio.gather(*followers) == ["answer"] * 3
    assert calls == 1 and "k" not in flight


async def test_followers_get_none_when_the_leader_fails_or_shares_nothing() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()

    async def failing() -> str:
        await release.wait()
        raise OSError("upstream gone")

    leader = asyncio.create_task(flight.lead("k", failing, lambda r: r))
    await asyncio.sleep(0)
    follower = asyncio.create_task(flight.join("k"))
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(OSError):
        await leader
    assert await follower is None

    async def private() -> str:
        return "not for you"

    assert await flight.lead("k", private, lambda _r: None) == "not for you"
    assert await flight.join("k") is None  # nothing in flight any more


async def test_a_cancelled_follower_does_not_cancel_the_leader() -> None:
    flight: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def call() -> int:
        await release.wait()
        return 7

    leader = asyncio.create_task(flight.lead("k", call, lambda r: r))
    await asyncio.sleep(0)
    follower = asyncio.create_task(flight.join("k"))
    await asyncio.sleep(0)
    follower.cancel()
    release.set()
    assert await leader == 7
    assert follower.cancelled()


async def test_a_cancelled_leader_releases_its_followers_with_none() -> None:
    flight: SingleFlight[int] = SingleFlight()

    async def call() -> int:
        await asyncio.Event().wait()
        return 1

    leader = asyncio.create_task(flight.lead("k", call, lambda r: r))
    await asyncio.sleep(0)
    follower = asyncio.create_task(flight.join("k"))
    await asyncio.sleep(0)
    leader.cancel()
    assert await asyncio.wait_for(follower, 5) is None
