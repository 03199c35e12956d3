"""One call in flight per key: callers that come while it runs share what it found.

Followers wait on a shielded future, so a follower that is cancelled does not cancel the
leader. A leader that fails, is cancelled, or found nothing it may share hands followers
None: they then do the work themselves (with their own credentials, say).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[T | None]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._running

    async def join(self, key: Hashable) -> T | None:
        """What the key's call in flight shares, once it ends; None if there is none."""
        running = self._running.get(key)
        return None if running is None else await asyncio.shield(running)

    async def lead(
        self,
        key: Hashable,
        call: Callable[[], Awaitable[R]],
        share: Callable[[R], T | None],
    ) -> R:
        """Run `call()` for the key; callers of `join` meanwhile get `share(result)`. A
        leader replaces an earlier one (whose followers keep waiting for theirs)."""
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        shared: T | None = None
        try:
            result = await call()
            shared = share(result)
            return result
        finally:
            future.set_result(shared)
            if self._running.get(key) is future:
                del self._running[key]
