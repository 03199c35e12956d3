"""The `mirror_mode:` section: regcache as an explicit registry mirror (issue #22), for
hosts that cannot point their DNS at the gateway but whose runtime knows mirrors
(containerd's hosts.toml, dockerd's registry-mirrors, podman's registries.conf)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from appliance.config.hostnames import Hostname
from appliance.config.local import shadowed_public
from appliance.config.values import Endpoint

if TYPE_CHECKING:
    from appliance.config.model import Config
    from appliance.config.registries import Registries


@dataclass(frozen=True, slots=True)
class MirrorModeConfig:
    names: tuple[Hostname, ...] = ()
    """The names clients reach regcache by as a mirror (the gateway's own DNS name, e.g.
    `regcache.build.internal`); each gets a leaf from regcache's CA. None: mirror mode
    is off. Requests to these names are routed by the `ns` query parameter, else by a
    host-like first path segment, else to `default_registry`."""
    listen: tuple[Endpoint, ...] = ()
    """Endpoints served besides `listen.https` (which serves the names too), e.g.
    `0.0.0.0:5443` where 443 is taken or a port of its own is wanted."""
    default_registry: Hostname = Hostname("docker.io")  # noqa: RUF009 - a str
    """The registry of requests that name none: dockerd's `registry-mirrors` are for
    Docker Hub alone, and send no `ns`."""


def check_mirror_mode(
    config: Config, registries: Registries, fail: Callable[[str, str], NoReturn]
) -> None:
    """The names are new (no registry's, the local registry's or a public one's), the
    endpoints are not `listen.https`'s, and the default registry is configured."""
    mode = config.mirror_mode
    for i, name in enumerate(mode.names):
        key = f"mirror_mode.names[{i}]"
        if registries.route(name) is not None or registries.contacted(name):
            fail(key, f"{name!r} is a configured registry's host: a mirror name must be new")
        if registries.local.match(name):
            fail(key, f"{name!r} is a local registry name (local.hosts)")
        public = shadowed_public(name)
        if public is not None:
            fail(key, f"{name!r} lies under the public registry {public!r}: use a name of"
                      " your own network (e.g. regcache.build.internal)")  # fmt: skip
        if name in mode.names[:i]:
            fail(key, f"{name!r} is listed twice")
    for i, endpoint in enumerate(mode.listen):
        if endpoint in config.listen.https:
            fail(f"mirror_mode.listen[{i}]", "is already in listen.https, which serves the"
                 " mirror names too")  # fmt: skip
    if mode.names and registries.origin(mode.default_registry) is None:
        fail("mirror_mode.default_registry", f"{mode.default_registry!r} is no configured"
             " registry's API host (registries[].hosts)")  # fmt: skip
    if mode.listen and not mode.names:
        fail("mirror_mode.names", "mirror_mode.listen needs at least one name to serve")
