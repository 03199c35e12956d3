"""Which registry a request to the mirror means, and the request it becomes: by `ns`, by
a host-like first path segment, else the default; Docker Hub's `library/`; realms and
scopes as the relay rewrites them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.proxying import (
    Proxied,
    host_like,
    proxied,
    realm_target,
    registry_api,
    relayed_challenge,
    scoped_registry,
    upstream_scope,
)


@pytest.mark.parametrize(
    ("path", "ns", "registry", "upstream_path"),
    [
        # containerd, BuildKit: ns names the registry, the path is the registry's
        ("/v2/org/app/manifests/v1", "ghcr.io", "ghcr.io", "/v2/org/app/manifests/v1"),
        ("/v2/library/a/blobs/sha256:a", "docker.io", "docker.io", "/v2/library/a/blobs/sha256:a"),
        ("/v2/alpine/manifests/3", "docker.io", "docker.io", "/v2/library/alpine/manifests/3"),
        ("/v2/org/app/manifests/v1", "GHCR.IO.", "ghcr.io", "/v2/org/app/manifests/v1"),
        ("/v2/", "quay.io", "quay.io", "/v2/"),
        ("/v2/app/manifests/v1", "ghcr.io", "ghcr.io", "/v2/app/manifests/v1"),  # no library/
        # podman: the registry as the first segment
        ("/v2/ghcr.io/org/app/manifests/v1", None, "ghcr.io", "/v2/org/app/manifests/v1"),
        ("/v2/docker.io/alpine/tags/list", None, "docker.io", "/v2/library/alpine/tags/list"),
        ("/v2/localhost/app/manifests/v1", None, "localhost", "/v2/app/manifests/v1"),
        ("/v2/reg.example:5000/a/manifests/v1", None, "reg.example:5000", "/v2/a/manifests/v1"),
        # dockerd: neither, so the default (Docker Hub), library/ included
        ("/v2/library/alpine/manifests/3", None, "docker.io", "/v2/library/alpine/manifests/3"),
        ("/v2/alpine/manifests/3", None, "docker.io", "/v2/library/alpine/manifests/3"),
        ("/v2/", None, "docker.io", "/v2/"),
        ("/v2/alpine/manifests/3", "", "docker.io", "/v2/library/alpine/manifests/3"),
        # a registry's name is followed by a repository's: this is Hub's library/ghcr.io
        ("/v2/ghcr.io/manifests/v1", None, "docker.io", "/v2/library/ghcr.io/manifests/v1"),
    ],
)  # fmt: skip
def test_the_registry_comes_from_ns_then_the_path_then_the_default(
    path: str, ns: str | None, registry: str, upstream_path: str
) -> None:
    namespace = ns or None
    assert proxied(path, ns, "docker.io") == Proxied(registry, upstream_path, namespace)


def test_ns_wins_over_a_host_like_first_segment() -> None:
    """With ns the path is the registry's own: gcr.io's domain-scoped projects
    (`example.com/project/app`) keep their first segment."""
    got = proxied("/v2/example.com/proj/app/manifests/v1", "gcr.io", "docker.io")
    assert got == Proxied("gcr.io", "/v2/example.com/proj/app/manifests/v1", "gcr.io")


@pytest.mark.parametrize(("segment", "like"), [
    ("ghcr.io", True), ("localhost", True), ("reg:5000", True), ("library", False),
    ("my-org", False), ("Localhost", False),
])  # fmt: skip
def test_host_like_follows_dockers_reference_rule(segment: str, like: bool) -> None:
    assert host_like(segment) is like


def test_realm_targets_are_the_host_and_path_after_the_prefix() -> None:
    assert realm_target("/_realm/auth.docker.io/token") == ("auth.docker.io", "/token")
    assert realm_target("/_realm/Quay.IO/v2/auth") == ("quay.io", "/v2/auth")
    assert realm_target("/_realm/") is None
    assert realm_target("/v2/_realm/x/token") is None


@pytest.mark.parametrize(("path", "api"), [
    ("/v2/", True), ("/v2", True), ("/v2/_catalog", True), ("/v2/a/b/manifests/v1", True),
    ("/v2/a/blobs/uploads/", True), ("/v2/a/tags/list", True), ("/v2/auth", False),
    ("/token", False), ("/oauth2/token", False),
])  # fmt: skip
def test_registry_api_paths_are_told_from_token_realms(path: str, api: bool) -> None:
    assert registry_api(path) is api


def test_challenges_point_relayed_realms_at_the_proxy_and_leave_the_rest() -> None:
    relays = {"auth.docker.io", "ghcr.io"}.__contains__
    proxy = "regcache.build.internal:5443"
    hub = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/a:pull"'
    assert relayed_challenge(hub, proxy, relays) == (
        f'Bearer realm="https://{proxy}/_realm/auth.docker.io/token",'
        'service="registry.docker.io",scope="repository:library/a:pull"'
    )
    bare = "Bearer realm=https://GHCR.io:443/token?x=1,service=ghcr.io"
    assert relayed_challenge(bare, proxy, relays) == (
        f'Bearer realm="https://{proxy}/_realm/ghcr.io/token?x=1",service=ghcr.io'
    )
    for kept in (
        'Basic realm="gcr-twin"',
        'Bearer realm="https://login.example/token"',  # not a configured registry's host
        'Bearer realm="https://auth.docker.io:8443/token"',  # another port: not ours to relay
        'Bearer realm="http://auth.docker.io/token"',
    ):  # fmt: skip
        assert relayed_challenge(kept, proxy, relays) == kept


@pytest.mark.parametrize(("scope", "want"), [
    ("repository:ghcr.io/org/app:pull", "repository:org/app:pull"),
    ("repository:docker.io/library/alpine:pull", "repository:library/alpine:pull"),
    ("repository:org/app:pull,push", "repository:org/app:pull,push"),
    ("repository:ghcr.io/a:pull repository:b/c:pull", "repository:a:pull repository:b/c:pull"),
    ("registry:catalog:*", "registry:catalog:*"),
    ("repository:reg:5000/a:pull", "repository:a:pull"),
    ("repository:example.com/proj/app:pull", "repository:example.com/proj/app:pull"),
])  # fmt: skip
def test_scopes_name_repositories_as_their_registry_knows_them(scope: str, want: str) -> None:
    served = {"ghcr.io", "docker.io", "reg:5000"}.__contains__  # not example.com: a project
    assert upstream_scope(scope, served) == want


def test_the_registry_a_scope_names_is_its_first_repositorys_host_like_segment() -> None:
    assert scoped_registry("repository:ghcr.io/org/app:pull") == "ghcr.io"
    assert scoped_registry("registry:catalog:* repository:Quay.io/a/b:pull,push") == "quay.io"
    assert scoped_registry("repository:org/app:pull") is None
    assert scoped_registry("repository:ghcr.io:pull") is None  # a name, not a registry
    assert scoped_registry("") is None


@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=40)))
def test_any_path_and_ns_give_an_answer_without_raising(path: str, ns: str | None) -> None:
    got = proxied(path, ns, "docker.io")
    assert got.registry and got.path.endswith(path.rsplit("/", 1)[-1])


@given(st.text(max_size=300))
def test_any_challenge_or_scope_is_rewritten_without_raising(text: str) -> None:
    relayed_challenge(text, "mirror.example", lambda _h: True)
    upstream_scope(text, lambda _r: True)
    scoped_registry(text)
