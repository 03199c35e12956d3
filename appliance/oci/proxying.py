"""Requests to a registry *proxy* (the distribution-spec's "Registry Proxying"): which
registry a client means, and the request an intercepted client would have sent instead.

Clients name the registry three ways. containerd, BuildKit and nerdctl add `?ns=<host>`
(spec `main`, after v1.1.1); podman's `host/prefix` mirrors put it as the repository's
first path segment; dockerd's `registry-mirrors` name none at all (Docker Hub only). A
repository's first segment names a registry when it looks like a host, the same rule
docker's reference grammar uses: it holds a `.` or a `:`, or is `localhost`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from appliance.oci.names import DOCKER_HUB_HOSTS

REALM_PREFIX = "/_realm/"
"""Where a mirror client fetches tokens: `/_realm/<realm host>/<realm path>` relays to
`https://<realm host>/<realm path>`, so a client that can reach only the gateway can
still do the token step of every registry behind it."""
_OFFICIAL = "library/"
_NAMED = re.compile(r"/v2/(?P<name>.+?)/(?P<rest>(?:manifests|blobs|tags|referrers)/.*)", re.S)
_REALM = re.compile(r'(?P<key>realm=)(?:"(?P<quoted>[^"]*)"|(?P<bare>[^,\s]+))', re.I)
_URL = re.compile(r"https://(?P<host>[^/:?#\s]+)(?::443)?(?P<path>/[^?#\s]*)?(?P<query>\?\S*)?")


def host_like(segment: str) -> bool:
    """Whether a repository's first path segment names a registry (docker's rule)."""
    return "." in segment or ":" in segment or segment == "localhost"


@dataclass(frozen=True, slots=True)
class Proxied:
    """A request to the proxy, as it is to go to a registry."""

    registry: str
    """The registry as the client named it (`docker.io`, `ghcr.io`), lower case."""
    path: str
    """The request path without the registry's name, as the registry serves it."""
    namespace: str | None
    """The `ns` the client sent, to be echoed in `OCI-Namespace`; None if it sent none."""


def proxied(path: str, ns: str | None, default: str) -> Proxied:
    """Where a `/v2/` request to the proxy goes: the registry `ns` names, else the one its
    repository's first segment names, else `default`. Docker Hub's one-segment names get
    their `library/` (`alpine` is `library/alpine`), as docker adds it."""
    registry, namespace = default, None
    if ns and ns.strip().strip("."):
        registry, namespace = ns.strip().lower().rstrip("."), ns
    elif path.startswith("/v2/"):
        first, _, rest = path.removeprefix("/v2/").partition("/")
        # `/v2/ghcr.io/manifests/v1` is Docker Hub's `library/ghcr.io`: a registry's
        # name is followed by a repository's.
        if host_like(first) and _NAMED.fullmatch("/v2/" + rest):
            registry, path = first.lower().rstrip("."), "/v2/" + rest
    if registry in DOCKER_HUB_HOSTS:
        match = _NAMED.fullmatch(path)
        if match is not None and "/" not in match["name"]:
            path = f"/v2/{_OFFICIAL}{match['name']}/{match['rest']}"
    return Proxied(registry, path, namespace)


def realm_target(path: str) -> tuple[str, str] | None:
    """(realm host, realm path) of a token request to the proxy's relay, else None."""
    if not path.startswith(REALM_PREFIX):
        return None
    host, _, rest = path.removeprefix(REALM_PREFIX).partition("/")
    return (host.lower(), "/" + rest) if host else None


def registry_api(path: str) -> bool:
    """Whether `path` is the registry API's (the ping, a repository's routes, the
    catalog) rather than a token realm's (`/token`, quay.io's `/v2/auth`)."""
    return path in ("/v2", "/v2/", "/v2/_catalog") or _NAMED.fullmatch(path) is not None


def relayed_challenge(header: str, proxy: str, relays: Callable[[str], bool]) -> str:
    """`header` (a `WWW-Authenticate` value) with each `https://` realm on a host that
    `relays` takes pointed at the proxy's relay (`https://<proxy>/_realm/<host>/<path>`), so a
    client asks its token through the proxy; other realms (Basic's, unknown hosts) as
    they were."""

    def swap(match: re.Match[str]) -> str:
        value = match["quoted"] if match["quoted"] is not None else match["bare"]
        url = _URL.fullmatch(value)
        if url is None or not relays(url["host"].lower()):
            return match[0]
        path, query = url["path"] or "/", url["query"] or ""
        relayed = f"https://{proxy}{REALM_PREFIX}{url['host'].lower()}{path}{query}"
        return f'{match["key"]}"{relayed}"'

    return _REALM.sub(swap, header)


def _prefixed(item: str) -> tuple[str, str, str] | None:
    """(first segment, the rest of the name, actions) of a `repository:` scope item
    whose name starts with a host-like segment, else None."""
    kind, _, rest = item.partition(":")
    name, sep, actions = rest.rpartition(":")
    first, _, remainder = name.partition("/")
    if kind == "repository" and sep and remainder and host_like(first):
        return first, remainder, actions
    return None


def upstream_scope(scope: str, registry: Callable[[str], bool]) -> str:
    """A token request's `scope` with each repository named as its registry knows it:
    a client of a path-prefixed mirror (podman) asks for `repository:ghcr.io/o/i:pull`,
    ghcr.io's realm knows only `repository:o/i:pull`. Only a first segment that
    `registry` takes for one is dropped (gcr.io's `example.com/project/app` keeps it)."""
    out = []
    for item in scope.split(" "):
        prefixed = _prefixed(item)
        if prefixed is not None and registry(prefixed[0]):
            item = f"repository:{prefixed[1]}:{prefixed[2]}"
        out.append(item)
    return " ".join(out)


def scoped_registry(scope: str) -> str | None:
    """The registry the first repository of a token request's `scope` names in its first
    segment (a path-prefixed mirror's client: `repository:ghcr.io/o/i:pull`), else None."""
    for item in scope.split(" "):
        if (prefixed := _prefixed(item)) is not None:
            return prefixed[0].lower()
    return None
