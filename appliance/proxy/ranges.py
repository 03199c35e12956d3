"""Single `Range: bytes=` requests (RFC 9110 14.2), as registry clients send them."""

from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # fullmatch


class RangeError(ValueError):
    """A range this blob cannot satisfy (416)."""

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        """The blob's length, for the answer's `Content-Range: bytes */size` (RFC 9110
        15.5.17), when known."""


def parse_range(header: str, size: int) -> tuple[int, int]:
    """[start, stop) for a one-range header; suffix ranges (`bytes=-N`) included."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeError(f"unsupported Range {header[:80]!r}: one bytes range expected", size)
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0:
            raise RangeError("empty suffix range", size)
        return max(size - length, 0), size
    start = int(first)
    stop = min(int(last) + 1, size) if last else size
    if start >= size or stop <= start:
        raise RangeError(f"range {header[:80]!r} outside 0..{size}", size)
    return start, stop
