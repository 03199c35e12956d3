"""Reading blob files for clients, on a real file: exact ranges across chunks, a short
file is an error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cache.reading import CHUNK_BYTES, read_at, read_file

DATA = os.urandom(2 * CHUNK_BYTES + 12345)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(
    ("start", "stop"),
    [(0, len(DATA)), (1, CHUNK_BYTES + 1), (CHUNK_BYTES - 1, len(DATA) - 1), (7, 8), (5, 5)],
)
async def test_exactly_the_bytes_asked_for_in_chunks_of_at_most_chunk_bytes(
    fd: int, start: int, stop: int
) -> None:
    chunks = [bytes(c) async for c in read_file(fd, start, stop)]
    assert b"".join(chunks) == DATA[start:stop]
    assert all(0 < len(c) <= CHUNK_BYTES for c in chunks)


async def test_a_read_at_the_end_of_the_file_gets_what_is_there(fd: int) -> None:
    assert bytes(await read_at(fd, 100, len(DATA) - 10)) == DATA[-10:]
    assert bytes(await read_at(fd, 100, len(DATA))) == b""


async def test_a_file_shorter_than_expected_is_an_error_not_a_short_body(fd: int) -> None:
    got = b""
    with pytest.raises(EOFError, match=f"ends at {len(DATA)}"):
        async for chunk in read_file(fd, 0, len(DATA) + 1):
            got += chunk
    assert got == DATA
