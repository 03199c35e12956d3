"""A dict that cannot grow without bound: the oldest entry goes first, entries may expire.

Every map keyed by something a client or upstream chooses (hosts, repositories, digests,
credentials) is one of these. Reads do not reorder, so a read from another thread (the
serving loops' hit path) never races a write's reordering on the owning loop; `use`
reads and reorders, for least-recently-used order on the owning loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

_NEVER = float("inf")
K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    def __init__(
        self,
        max_entries: int,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """At most `max_entries`; with `ttl_s`, an entry reads as absent once that old."""
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or (entry[0] != _NEVER and entry[0] <= self._clock()):
            return None
        return entry[1]

    def use(self, key: K) -> V | None:
        """`get`, and the entry counts as newest (least-recently-used order; from the
        owning thread only)."""
        value = self.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))

    def set(self, key: K, value: V, ttl_s: float | None = None) -> None:
        """Keep `value` (newest); `ttl_s` overrides the map's for this entry."""
        ttl = ttl_s if ttl_s is not None else self._ttl_s
        expires = self._clock() + ttl if ttl is not None else _NEVER
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def clear(self) -> None:
        self._entries.clear()
