"""Reading blob files for clients without stalling the event loop or paying a thread hop
per chunk: `RWF_NOWAIT` reads what the page cache holds at once, and only a read that
would touch the disk goes to a worker thread."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

CHUNK_BYTES = 256 << 10


async def read_at(fd: int, size: int, offset: int) -> bytes | bytearray:
    """Up to `size` bytes at `offset` (fewer only at end of file)."""
    buffer = bytearray(size)
    try:
        n = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        n = 0
    except OSError:  # filesystems without RWF_NOWAIT support (EOPNOTSUPP)
        n = 0
    if n == size:
        return buffer
    if n > 0:
        return bytes(memoryview(buffer)[:n])
    return await asyncio.to_thread(os.pread, fd, size, offset)


async def read_file(fd: int, start: int, stop: int) -> AsyncIterator[bytes | bytearray]:
    """Bytes [start, stop) of a complete file, open as `fd` (the caller closes it)."""
    pos = start
    while pos < stop:
        chunk = await read_at(fd, min(CHUNK_BYTES, stop - pos), pos)
        if not chunk:
            raise EOFError(f"blob file ends at {pos}, expected {stop}")
        pos += len(chunk)
        yield chunk
