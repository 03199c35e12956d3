"""The health monitor behind fail-open DNS, with a real listener going away."""

from __future__ import annotations

import asyncio
import ipaddress

from appliance.admin.health import HealthMonitor, NamedCheck
from appliance.admin.health import listening as _listening
from appliance.config.model import Endpoint


async def test_a_closed_listener_is_a_health_problem() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    endpoint = Endpoint(ipaddress.ip_address("127.0.0.1"), port)
    monitor = HealthMonitor([NamedCheck("https listener", lambda: _listening((endpoint,)))])
    assert await monitor.check_once() == ()
    server.close()
    await server.wait_closed()
    problems = await monitor.check_once()
    assert len(problems) == 1 and problems[0].startswith(f"https listener: 127.0.0.1:{port}")


async def test_a_check_that_hangs_counts_as_a_problem() -> None:
    async def hang() -> str | None:
        await asyncio.sleep(10)
        return None

    monitor = HealthMonitor([NamedCheck("slow", hang)], timeout_s=0.1)
    assert await monitor.check_once() == ("slow: no answer within 0 s",)


async def test_a_check_watched_later_counts_like_the_others() -> None:
    async def door_stuck() -> str | None:
        return "stuck"

    monitor = HealthMonitor([])
    assert await monitor.check_once() == ()
    monitor.watch(NamedCheck("https front door", door_stuck))
    assert await monitor.check_once() == ("https front door: stuck",)
