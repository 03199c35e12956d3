"""One fill: nothing unverified is committed or handed out whole; against a real store
with the upstream port faked."""

from __future__ import annotations

import asyncio

import pytest

from appliance.cache.answers import Filling
from appliance.cache.fill import FillFailed
from tests.cache.alpine import B_DIGEST, BLOB, ORIGIN, target


async def test_last_byte_is_held_until_the_digest_checks_out(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    wrong = bytearray(BLOB)
    wrong[-1] ^= 1
    reply = upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, bytes(wrong),
                         Content_Length=str(len(BLOB)))  # fmt: skip
    reply.gate = asyncio.Event()
    answer = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    got = bytearray()
    reply.gate.set()
    with pytest.raises(FillFailed):
        async for chunk in answer.fill.stream(0, len(BLOB)):
            got += chunk
    assert len(got) < len(BLOB)  # never the complete, wrong body
    assert files.size_of(B_DIGEST) is None
    assert list((files.root / "tmp").iterdir()) == []


async def test_a_short_body_is_not_committed(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, BLOB[:-10],
                 Content_Length=str(len(BLOB)))  # fmt: skip
    answer = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    with pytest.raises(FillFailed, match="ended at"):
        _ = [c async for c in answer.fill.stream(0, len(BLOB))]
    assert files.size_of(B_DIGEST) is None


async def test_a_reader_that_has_caught_up_hears_of_the_failure_at_once(parts) -> None:  # type: ignore[no-untyped-def]
    """The reader has every byte so far and waits for more when upstream's connection
    resets: it must get FillFailed then, not wait until the proxy's 120 s write cut."""
    cache, upstream, _files = parts
    reply = upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, BLOB,
                         Content_Length=str(len(BLOB)))  # fmt: skip
    reply.gate = asyncio.Event()
    reply.fails = ConnectionResetError("connection reset by peer")
    answer = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    got = bytearray()

    async def read() -> None:
        async for chunk in answer.fill.stream(0, len(BLOB)):
            got.extend(chunk)
            if len(got) >= len(BLOB) // 2:
                assert reply.gate is not None
                reply.gate.set()  # upstream resets while this reader waits for more

    with pytest.raises(FillFailed, match="reset"):
        async with asyncio.timeout(10):  # a safety net: before the fix, it waited for ever
            await read()
    assert len(got) == len(BLOB) // 2
