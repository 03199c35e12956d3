"""Parsers that see client or upstream input: routes, digests, ranges, challenges."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.digest import Digest, DigestError
from appliance.oci.mediatypes import OCI_INDEX, accepts, parse_accept
from appliance.oci.routes import Kind, RouteError, check_path, parse_route
from appliance.proxy.ranges import RangeError, parse_range
from appliance.upstream.challenge import bearer, parse_challenges

HEX = "a" * 64


@pytest.mark.parametrize(
    ("path", "kind", "repository", "reference"),
    [
        ("/v2/library/alpine/manifests/3.20", Kind.MANIFEST, "library/alpine", "3.20"),
        (f"/v2/a/b/c/manifests/sha256:{HEX}", Kind.MANIFEST, "a/b/c", Digest("sha256", HEX)),
        (f"/v2/org/blobs/blobs/sha256:{HEX}", Kind.BLOB, "org/blobs", Digest("sha256", HEX)),
        (f"/v2/x/referrers/sha256:{HEX}", Kind.REFERRERS, "x", Digest("sha256", HEX)),
    ],
)
def test_cacheable_routes(path: str, kind: Kind, repository: str, reference: object) -> None:
    route = parse_route(path)
    assert route is not None
    assert (route.kind, route.repository, route.reference) == (kind, repository, reference)


@pytest.mark.parametrize(
    "path",
    ["/v2/", "/v2/_catalog", "/v2/x/tags/list", "/v2/x/blobs/uploads/",
     "/v2/x/blobs/uploads/8f1c?_state=abc", "/token", "/"],
)  # fmt: skip
def test_everything_else_passes_through(path: str) -> None:
    assert parse_route(path) is None


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/UPPER/manifests/latest", "NAME_INVALID"),
        ("/v2/x/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/x/manifests/-bad", "MANIFEST_INVALID"),
        ("/v2/x/blobs/md5:" + "a" * 32, "DIGEST_INVALID"),
    ],
)
def test_invalid_names_and_references_are_registry_errors(path: str, code: str) -> None:
    with pytest.raises(RouteError) as err:
        parse_route(path)
    assert err.value.code == code


@given(st.text(max_size=300))
def test_route_parser_never_raises_anything_else(path: str) -> None:
    with contextlib.suppress(RouteError):
        parse_route("/v2/" + path)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("/v2/library%2f..%2fprivate/x/blobs/sha256:" + HEX, "NAME_INVALID"),
        ("/v2/x/blobs/sha256:" + HEX + "%2f..%2f..%2fprivate", "DIGEST_INVALID"),
        ("/v2/x/referrers/sha256:" + HEX + "%5C..", "DIGEST_INVALID"),
        ("/v2/x/manifests/sha256:" + HEX + "%2F", "DIGEST_INVALID"),
        ("/v2/x/manifests/latest%0A", "MANIFEST_INVALID"),
        ("/v2/x/manifests/%zz", "MANIFEST_INVALID"),
        ("/v2/a/../b/manifests/v1", "NAME_INVALID"),
        ("/v2/a/%2e%2E/b/tags/list", "NAME_INVALID"),
        ("/v2/a/./b/blobs/uploads/", "NAME_INVALID"),
        ("/v2/a%00/tags/list", "NAME_INVALID"),
    ],
)
def test_paths_a_server_could_read_as_another_are_refused(raw: str, code: str) -> None:
    with pytest.raises(RouteError) as err:
        check_path(raw)
    assert err.value.code == code


@pytest.mark.parametrize(
    "raw", ["/v2/", "/v2/library/alpine/manifests/3.20", "/v2/x/blobs/uploads/8f1c",
            "/v2/x/manifests/sha256%3A" + HEX, "/token", "/v2/a.b/c..d/tags/list"],
)  # fmt: skip
def test_ordinary_paths_pass_the_path_check(raw: str) -> None:
    check_path(raw)


@given(st.text(max_size=200))
def test_path_check_raises_only_route_errors(raw: str) -> None:
    with contextlib.suppress(RouteError):
        check_path(raw)


@pytest.mark.parametrize(
    "path",
    ["/v2/x/manifests/latest\n", "/v2/x\n/manifests/latest", f"/v2/x/blobs/sha256:{HEX}\n"],
)
def test_grammars_match_whole_strings_never_up_to_a_newline(path: str) -> None:
    with pytest.raises(RouteError):
        parse_route(path)
    with pytest.raises(DigestError):
        Digest.parse(f"sha256:{HEX}\n")


@given(st.text(max_size=140))
def test_digest_parser_is_strict(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except DigestError:
        return
    assert str(digest) == text


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


def test_challenges_as_real_registries_send_them() -> None:
    quay = 'Basic realm="Quay", Bearer realm="https://quay.io/v2/auth",service="quay.io"'
    assert [c.scheme for c in parse_challenges(quay)] == ["basic", "bearer"]
    hub = bearer('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                 'scope="repository:library/alpine:pull,push"')  # fmt: skip
    assert hub is not None and hub.params["scope"] == "repository:library/alpine:pull,push"
    assert bearer('bearer realm="https://gcr.io/v2/token",service="gcr.io"') is not None
    assert bearer('Basic realm="ecr"') is None


@given(st.text(max_size=200))
def test_challenge_parser_never_raises(header: str) -> None:
    parse_challenges(header)


def test_accept_negotiation() -> None:
    accepted = parse_accept([f"{OCI_INDEX}, application/json;q=0.5", "text/plain"])
    assert accepted == {OCI_INDEX, "application/json", "text/plain"}
    assert accepts(accepted, OCI_INDEX)
    assert not accepts(frozenset(), OCI_INDEX)  # registries never send an index unasked
