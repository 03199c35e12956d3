"""A repository's tags as upstream lists them: every page followed through `Link`, only
on the registry asked, bounded, and a page that is not a tag list refused."""

from __future__ import annotations

import json

import pytest

from appliance.mirror.tagslist import TagsListError, list_tags
from tests.cache.fakes import FakeUpstream

ORIGIN = "https://ghcr.io"
BASE = f"{ORIGIN}/v2/org/app"
FIRST = f"{BASE}/tags/list"


def page(*tags: object) -> bytes:
    return json.dumps({"name": "org/app", "tags": list(tags)}).encode()


async def test_one_page_is_the_list() -> None:
    upstream = FakeUpstream()
    upstream.add("GET", FIRST, 200, page("v1", "v2", 3, None, "latest"))
    assert await list_tags(upstream, BASE) == ["v1", "v2", "latest"]  # strings only
    assert upstream.calls == [("GET", FIRST, {"Accept": "application/json"})]


async def test_pages_are_followed_through_link_relative_or_absolute() -> None:
    upstream = FakeUpstream()
    second = f"{BASE}/tags/list?n=2&last=v2"
    third = f"{BASE}/tags/list?n=2&last=v4"
    upstream.add("GET", FIRST, 200, page("v1", "v2"),
                 Link='</v2/org/app/tags/list?n=2&last=v2>; rel="next"')  # fmt: skip
    upstream.add("GET", second, 200, page("v3", "v4"), Link=f"<{third}>; rel=next")
    upstream.add("GET", third, 200, page("v5"))
    assert await list_tags(upstream, BASE) == ["v1", "v2", "v3", "v4", "v5"]
    assert [url for _, url, _ in upstream.calls] == [FIRST, second, third]


async def test_an_empty_or_null_list_is_no_tags() -> None:
    upstream = FakeUpstream()
    upstream.add("GET", FIRST, 200, b'{"name": "org/app", "tags": null}')
    assert await list_tags(upstream, BASE) == []


@pytest.mark.parametrize(
    "elsewhere",
    ["https://evil.example/v2/org/app/tags/list?last=v2", "https://ghcr.io.evil.example/x",
     "http://ghcr.io/v2/org/app/tags/list?last=v2"],
)  # fmt: skip
async def test_a_next_page_on_another_origin_is_refused_not_asked(elsewhere: str) -> None:
    upstream = FakeUpstream()
    upstream.add("GET", FIRST, 200, page("v1"), Link=f'<{elsewhere}>; rel="next"')
    upstream.add("GET", elsewhere, 200, page("v2"))
    with pytest.raises(TagsListError, match="elsewhere"):
        await list_tags(upstream, BASE)
    assert [url for _, url, _ in upstream.calls] == [FIRST]  # credentials went nowhere else


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b'"tags"'])
async def test_a_page_that_is_no_tag_list_is_an_error(body: bytes) -> None:
    upstream = FakeUpstream()
    upstream.add("GET", FIRST, 200, body)
    with pytest.raises(TagsListError, match="not a tag list"):
        await list_tags(upstream, BASE)


async def test_a_refusal_is_an_error_naming_the_status() -> None:
    upstream = FakeUpstream()
    upstream.add("GET", FIRST, 401, b"{}")
    with pytest.raises(TagsListError, match="answered 401"):
        await list_tags(upstream, BASE)


async def test_pages_are_bounded() -> None:
    upstream = FakeUpstream()
    upstream.add("GET", FIRST, 200, page("v1"), Link=f'<{FIRST}>; rel="next"')  # a loop
    with pytest.raises(TagsListError, match="more than 100 pages"):
        await list_tags(upstream, BASE)
    assert len(upstream.calls) == 100
