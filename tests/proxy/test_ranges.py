"""Single `Range: bytes=` headers, as registry clients send them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.proxy.ranges import RangeError, parse_range


def test_ranges() -> None:
    assert parse_range("bytes=0-", 10) == (0, 10)
    assert parse_range("bytes=4-5", 10) == (4, 6)
    assert parse_range("bytes=4-100", 10) == (4, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    for bad in ("bytes=10-", "bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=-0", "bytes=-",
                "bytes=\u0661-"):  # fmt: skip
        with pytest.raises(RangeError):
            parse_range(bad, 10)


@given(st.text(max_size=60), st.integers(1, 1 << 40))
def test_range_parser_raises_only_range_errors(header: str, size: int) -> None:
    try:
        start, stop = parse_range(header, size)
    except RangeError:
        return
    assert 0 <= start < stop <= size
