"""BoundedMap: at most N entries, oldest written first out, optional expiry."""

from __future__ import annotations

from appliance.kit.bounded import BoundedMap


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_oldest_written_entry_goes_first() -> None:
    m: BoundedMap[str, int] = BoundedMap(2)
    m.set("a", 1)
    m.set("b", 2)
    m.set("a", 3)  # rewriting makes it the newest
    m.set("c", 4)
    assert m.get("b") is None
    assert (m.get("a"), m.get("c"), len(m)) == (3, 4, 2)


def test_reading_does_not_make_an_entry_newer() -> None:
    m: BoundedMap[str, int] = BoundedMap(2)
    m.set("a", 1)
    m.set("b", 2)
    assert m.get("a") == 1
    m.set("c", 3)
    assert "a" not in m and "b" in m


def test_an_entry_reads_as_absent_once_its_ttl_has_passed() -> None:
    clock = Clock()
    m: BoundedMap[str, int] = BoundedMap(8, ttl_s=10.0, clock=clock)
    m.set("a", 1)
    m.set("b", 2, ttl_s=30.0)
    clock.now += 10.0
    assert m.get("a") is None and "a" not in m
    assert m.get("b") == 2
    clock.now += 20.0
    assert m.get("b") is None


def test_pop_and_clear_forget_entries() -> None:
    m: BoundedMap[str, int] = BoundedMap(8)
    m.set("a", 1)
    m.set("b", 2)
    assert m.pop("a") == 1 and m.pop("a") is None
    assert list(m) == ["b"]
    m.clear()
    assert len(m) == 0
