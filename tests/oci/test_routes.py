"""Route parsing and the raw path check: what the cache serves, what passes through,
and paths a server could read as another."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.digest import Digest, DigestError
from appliance.oci.routes import Kind, RouteError, check_path, parse_route, written_repository

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


@pytest.mark.parametrize(
    ("path", "repository"),
    [
        ("/v2/team/app/manifests/v1", "team/app"),
        (f"/v2/team/app/manifests/sha256-{HEX}.sig", "team/app"),
        (f"/v2/team/app/manifests/sha256:{HEX}", "team/app"),
        ("/v2/team/app/blobs/uploads/", "team/app"),
        ("/v2/a/blobs/uploads/8f1c", "a"),
        (f"/v2/org/blobs/blobs/sha256:{HEX}", "org/blobs"),
        ("/v2/x/manifests/y/manifests/v1", "x/manifests/y"),
        ("/v2/_catalog", None),
        ("/v2/x/tags/list", None),
        ("/v2/", None),
        ("/token", None),
        ("/v2/UPPER/manifests/v1", None),  # no valid name
    ],
)
def test_the_repository_a_write_changes(path: str, repository: str | None) -> None:
    assert written_repository(path) == repository
