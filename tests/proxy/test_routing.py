"""Which request paths the cache answers, and the bounded route label metrics use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.digest import Digest
from appliance.oci.routes import RouteError
from appliance.proxy.routing import (
    BlobRoute,
    ManifestRoute,
    ReferrersRoute,
    cache_route,
    route_label,
)

HEX = "c" * 64
DIGEST = Digest("sha256", HEX)


def test_manifests_blobs_and_referrers_are_answered_by_the_cache() -> None:
    assert cache_route("/v2/library/alpine/manifests/3.20") == ManifestRoute(
        "library/alpine", "3.20"
    )
    assert cache_route(f"/v2/x/manifests/sha256:{HEX}") == ManifestRoute("x", DIGEST)
    assert cache_route(f"/v2/org/app/blobs/sha256:{HEX}") == BlobRoute("org/app", DIGEST)
    assert cache_route(f"/v2/x/referrers/sha256:{HEX}") == ReferrersRoute("x", DIGEST)
    assert cache_route(f"/v2/x/referrers/sha256:{HEX}", "n=2&last=x") == ReferrersRoute(
        "x", DIGEST, "n=2&last=x"
    )
    for passed in ("/v2/", "/v2/x/tags/list", "/v2/x/blobs/uploads/", "/token"):
        assert cache_route(passed) is None
    with pytest.raises(RouteError):
        cache_route("/v2/UPPER/manifests/latest")


@pytest.mark.parametrize(
    ("path", "label"),
    [("/v2/", "ping"), ("/v2", "ping"), ("/v2/library/alpine/manifests/3", "manifest"),
     (f"/v2/x/blobs/sha256:{HEX}", "blob"), (f"/v2/x/referrers/sha256:{HEX}", "referrers"),
     ("/v2/x/tags/list", "other"), ("/v2/UPPER/manifests/x", "other"), ("/token", "other")],
)  # fmt: skip
def test_a_path_is_labelled_by_its_kind(path: str, label: str) -> None:
    assert route_label(path) == label


@given(st.text(max_size=200))
def test_a_route_label_is_one_of_five_whatever_the_path(path: str) -> None:
    assert route_label("/v2/" + path) in {"ping", "manifest", "blob", "referrers", "other"}
