"""Whether the proxy can serve, checked in the background and read by the DNS responder,
which stops intercepting while the answer is no (fail-open) so builds pull directly."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from appliance.config.model import Endpoint

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[str | None]]
"""Returns None when fine, else what is wrong."""


@dataclass(frozen=True, slots=True)
class NamedCheck:
    name: str
    run: Check


class HealthMonitor:
    def __init__(
        self,
        checks: Sequence[NamedCheck],
        interval_s: float = 2.0,
        timeout_s: float = 2.0,
        max_lag_s: float = 1.0,
    ) -> None:
        self._checks = tuple(checks)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._max_lag_s = max_lag_s
        self.problems: tuple[str, ...] = ()

    def watch(self, check: NamedCheck) -> None:
        """One more check, for a part started after the monitor was made."""
        self._checks += (check,)

    @property
    def healthy(self) -> bool:
        return not self.problems

    async def check_once(self) -> tuple[str, ...]:
        problems = []
        for check in self._checks:
            try:
                async with asyncio.timeout(self._timeout_s):
                    problem = await check.run()
            except TimeoutError:
                problem = f"no answer within {self._timeout_s:.0f} s"
            if problem is not None:
                problems.append(f"{check.name}: {problem}")
        return tuple(problems)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self._interval_s)
            lag = time.monotonic() - started - self._interval_s
            problems = await self.check_once()
            if lag > self._max_lag_s:
                problems += (f"event loop stalled for {lag:.1f} s",)
            if problems != self.problems:
                if problems:
                    log.warning("health unhealthy problems=%s", "; ".join(problems))
                else:
                    log.warning("health healthy again")
            self.problems = problems


async def listening(endpoints: tuple[Endpoint, ...]) -> str | None:
    """None if every HTTPS listener accepts a TCP connection."""
    for endpoint in endpoints:
        address = endpoint.address
        if address.is_unspecified:
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        try:
            _, writer = await asyncio.open_connection(str(address), endpoint.port)
        except OSError as e:
            return f"{endpoint}: {e.strerror or e}"
        writer.close()
    return None
