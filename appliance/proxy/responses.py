"""Sending the cache's answers as HTTP responses: stored files, fills in progress, HEAD
descriptions and upstream's own replies, with ranges and a write deadline per body."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from aiohttp import web
from multidict import CIMultiDict

from appliance.cache.answers import Answer, Described, Filling, Redirected, Refused, Stored
from appliance.cache.fill import FillFailed, FillState
from appliance.cache.ports import UpstreamReply
from appliance.cache.reading import CHUNK_BYTES, read_file
from appliance.proxy.errors import API_VERSION, refusal
from appliance.proxy.loops import Bridge
from appliance.proxy.ranges import RangeError, parse_range

log = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 120.0


async def render(
    request: web.Request,
    answer: Answer,
    count: Callable[[int, bool], None],
    bridge: Bridge,
    *,
    manifest: bool,
) -> web.StreamResponse:
    """Send `answer`; `count(body bytes, from the store?)` once the body is sent.
    FileNotFoundError: a stored answer's file, or a finished fill's, is gone (nothing
    was sent)."""
    if isinstance(answer, Refused):
        return refusal(answer, manifest=manifest)
    if isinstance(answer, Stored):
        fd = os.open(answer.path, os.O_RDONLY | os.O_CLOEXEC)  # before any byte is sent
        try:
            from_store = not answer.fetched  # a manifest just fetched came from upstream
            return await _stream_stored(request, answer, fd, lambda n: count(n, from_store))
        finally:
            os.close(fd)
    if isinstance(answer, Described):
        response = web.StreamResponse(
            headers=_content_headers(answer.digest, answer.media_type, answer.size)
        )
        await response.prepare(request)
        await response.write_eof()
        return response
    if isinstance(answer, Filling):
        return await _stream_fill(request, answer, lambda n: count(n, False), bridge)
    if isinstance(answer, Redirected):  # the client fetches it from the shared bucket
        headers = {**API_VERSION, "Location": answer.location,
                   "Docker-Content-Digest": str(answer.digest)}  # fmt: skip
        return web.Response(status=307, headers=headers)
    return await relay(request, answer.reply, bridge)


def _content_headers(digest: object, media_type: str, size: int | None) -> dict[str, str]:
    headers = {
        **API_VERSION,
        "Docker-Content-Digest": str(digest),
        "Content-Type": media_type,
        "Accept-Ranges": "bytes",
    }
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


def _span(request: web.Request, size: int | None) -> tuple[int, int | None, bool]:
    """The part of the body to send: (start, stop, partial) — all of it, or the range
    asked for."""
    if "Range" not in request.headers:
        return 0, size, False
    if size is None:
        raise RangeError("range requests on a blob of unknown length")
    start, stop = parse_range(request.headers["Range"], size)
    return start, stop, True


async def _start(
    request: web.Request,
    digest: object,
    media_type: str,
    size: int | None,
    span: tuple[int, int | None, bool],
    *,
    stale: bool = False,
) -> web.StreamResponse:
    """Send the status line and headers of `span` (see `_span`) of the body."""
    start, stop, partial = span
    length = None if stop is None else stop - start
    response = web.StreamResponse(
        status=206 if partial else 200, headers=_content_headers(digest, media_type, length)
    )
    if stale:  # RFC 9111 5.5 is gone, but the Warning header is what tools still show
        response.headers["Warning"] = '110 regcache "Response is Stale: upstream unavailable"'
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"  # type: ignore[operator]
    await response.prepare(request)
    return response


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes | bytearray] | None,
    what: object,
    sent: Callable[[int], None] = lambda _n: None,
) -> web.StreamResponse:
    """Write the body (None for HEAD) and finish the response, or cut the connection."""
    total = 0
    try:
        if chunks is not None:
            loop = asyncio.get_running_loop()
            # A client that stops reading must not hold its handler (and file) forever:
            # no progress for WRITE_TIMEOUT_S cuts it. The deadline moves at most once a
            # second, not per chunk (a timer per chunk is a cost on the hottest path).
            async with asyncio.timeout(WRITE_TIMEOUT_S) as deadline:
                moved = loop.time()
                async for chunk in chunks:
                    await response.write(chunk)
                    total += len(chunk)
                    if (now := loop.time()) - moved > 1.0:
                        deadline.reschedule(now + WRITE_TIMEOUT_S)
                        moved = now
    except ConnectionError:
        return response  # the client went away; a fill it started carries on
    except Exception as e:  # noqa: BLE001 - whatever broke, the response cannot be completed
        # The status line is gone: cutting the connection is how the client learns of it.
        log.warning("response cut short what=%s error=%s", what, e)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        sent(total)
    await response.write_eof()
    return response


async def _stream_stored(
    request: web.Request, answer: Stored, fd: int, sent: Callable[[int], None]
) -> web.StreamResponse:
    span = start, stop, _ = _span(request, answer.size)
    response = await _start(
        request, answer.digest, answer.media_type, answer.size, span, stale=answer.stale
    )
    end = answer.size if stop is None else stop  # never None: a stored size is known
    body = None if request.method == "HEAD" else read_file(fd, start, end)
    return await _send_body(request, response, body, answer.digest, sent)


async def _stream_fill(
    request: web.Request, answer: Filling, sent: Callable[[int], None], bridge: Bridge
) -> web.StreamResponse:
    fill, size = answer.fill, answer.fill.size
    if fill.state is FillState.FAILED:  # joined too late: nothing sent yet, say so properly
        raise FillFailed(str(fill.error))
    span = start, stop, _ = _span(request, size)
    if stop is not None and size is not None and stop < size:
        # A fill's bytes go out as they arrive and only its last byte waits for the
        # digest: a range that ends before it would be sent unverified, and complete.
        # It waits for the fill to be verified and stored (FillFailed: a 502; NotKept,
        # at once when the fill streams through uncached: a 503).
        await bridge.run(fill.wait_stored())
    # Across loops every piece costs a round trip between threads: take bigger ones.
    take = CHUNK_BYTES * (2 if bridge.crosses else 1)
    # Opened before the status line, like a stored file (`render`): a fill that has
    # committed is evictable, and its file may be gone (FileNotFoundError: nothing is
    # sent yet, and the proxy asks again).
    chunks = await bridge.run(fill.opened(start, 1 << 62 if stop is None else stop, take))
    try:
        response = await _start(request, answer.digest, answer.media_type, size, span)
    except BaseException:
        await bridge.run(_close(chunks))  # it counts as a reader until closed
        raise
    return await _send_body(request, response, bridge.iterate(chunks), answer.digest, sent)


async def _close(chunks: AsyncGenerator[bytes | bytearray, None]) -> None:
    await chunks.aclose()


async def relay(request: web.Request, reply: UpstreamReply, bridge: Bridge) -> web.StreamResponse:
    """Upstream's reply as it is: status, headers and body (none for HEAD)."""
    try:
        response = web.StreamResponse(status=reply.status, headers=CIMultiDict(reply.headers))
        await response.prepare(request)
        body = None if request.method == "HEAD" else bridge.iterate(reply.chunks())
        return await _send_body(request, response, body, request.path)
    finally:
        bridge.call(reply.close)
