"""A repository's tags as upstream lists them (`GET /v2/<name>/tags/list`), following
the spec's pagination (`Link: <…?n=…&last=…>; rel="next"`), bounded in pages."""

from __future__ import annotations

import json
import re

from appliance.cache.ports import Upstream

_MAX_PAGES = 100
_MAX_PAGE_BYTES = 4 << 20
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class TagsListError(RuntimeError):
    """Upstream would not list the repository's tags."""


async def list_tags(upstream: Upstream, repository_url: str) -> list[str]:
    origin = repository_url.split("/v2/", 1)[0]
    url: str | None = f"{repository_url}/tags/list"
    tags: list[str] = []
    for _ in range(_MAX_PAGES):
        if url is None:
            return tags
        reply = await upstream.fetch("GET", url, {"Accept": "application/json"})
        try:
            if reply.status != 200:
                raise TagsListError(f"GET {url} answered {reply.status}")
            body = await reply.read(_MAX_PAGE_BYTES)
            link = reply.headers.get("Link", "")
        finally:
            reply.close()
        try:
            page = json.loads(body).get("tags") or []
        except (ValueError, AttributeError) as e:
            raise TagsListError(f"GET {url}: not a tag list") from e
        tags.extend(t for t in page if isinstance(t, str))
        found = _NEXT.search(link)
        url = None if found is None else _absolute(origin, found.group(1))
    raise TagsListError(f"{repository_url}: more than {_MAX_PAGES} pages of tags")


def _absolute(origin: str, target: str) -> str:
    """The next page's URL; only on the registry asked (regcache's credentials go there)."""
    url = target if "://" in target else origin + "/" + target.lstrip("/")
    if not url.startswith(origin + "/"):
        raise TagsListError(f"the next page of tags is elsewhere: {url[:200]}")
    return url
