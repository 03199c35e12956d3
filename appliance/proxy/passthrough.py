"""Sending a client's request on to the real upstream unchanged: its headers and its body,
streamed (pushes pass through)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from appliance.cache.ports import UpstreamReply
from appliance.proxy.loops import Bridge

STREAM_CHUNK_BYTES = 256 * 1024
# Request headers that describe the client's connection to us, not its request upstream.
_NOT_FORWARDED = frozenset({"host", "content-length", "transfer-encoding", "expect"})


class PassThrough(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None = None,
    ) -> UpstreamReply: ...


def forwarded(request: web.Request) -> CIMultiDict[str]:
    """The client's headers for upstream; repeated ones (Accept!) stay repeated."""
    return CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED
    )


async def forward(
    request: web.Request,
    upstream: PassThrough,
    origin: str,
    bridge: Bridge,
    wrap: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None,
) -> UpstreamReply:
    """`request` sent to `origin` as it came, its body streamed (through `wrap` on the
    cache's loop, where it is read: a push kept on the way); upstream's reply (the caller
    closes it). Raises UpstreamUnavailable."""
    body = None
    if request.can_read_body:
        body = bridge.export(request.content.iter_chunked(STREAM_CHUNK_BYTES))
        if wrap is not None:
            body = wrap(body)
    headers = forwarded(request)
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    url = origin + request.path_qs
    return await bridge.run(upstream.send(request.method, url, headers, body))
