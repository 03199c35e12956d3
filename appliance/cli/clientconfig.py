"""`regcache client-config RUNTIME`: what a build host's container runtime needs to use
regcache as a mirror (mirror mode), for hosts that cannot point their DNS at it.

Printed, each file under a `# file:` line naming where it goes, or written under `--out`.
Each runtime reaches the mirror its own way (issue #22): containerd and BuildKit send
`?ns=<registry>`; podman puts the registry in the path (`<gateway>/<registry>`); dockerd
mirrors Docker Hub alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.cli.doctor import DEFAULT_HOSTS
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.oci.names import DOCKER_HUB_HOSTS

HUB_NAME, HUB_SERVER = "docker.io", "https://registry-1.docker.io"
RUNTIMES = ("containerd", "docker", "podman", "buildkit")
Files = dict[str, str]
"""Where each file goes (relative to the runtime's directory) → its text."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("client-config", parents=[common], help=__doc__.splitlines()[0])
    p.add_argument("runtime", choices=RUNTIMES)
    p.add_argument("--gateway", help="the mirror as clients reach it, NAME[:PORT] (default:"
                   " the first mirror_mode.names, with mirror_mode.listen's port)")  # fmt: skip
    p.add_argument("--registry", action="append", default=[], metavar="NAME",
                   help="a registry to mirror (repeatable; default: those configured)")  # fmt: skip
    p.add_argument("--ca", type=Path, help="CA file to name in the snippet (default: none,"
                   " the host's system store trusts regcache's CA)")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the files under this directory")


def run(args: argparse.Namespace, config: Config | None) -> int:
    gateway = args.gateway or (_gateway(config) if config is not None else None)
    if gateway is None:
        print("regcache: client-config needs --gateway, or mirror_mode.names in the config"
              " (mirror mode is off)", file=sys.stderr)  # fmt: skip
        return 2
    names = args.registry or (_configured(config) if config else list(DEFAULT_HOSTS))
    files = RENDER[args.runtime](gateway, _unique(names), args.ca)
    for relative, text in files.items():
        if args.out is not None:
            path = args.out / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        else:
            print(f"# file: {DIRECTORIES[args.runtime]}/{relative}\n{text}")
    return 0


def _gateway(config: Config) -> str | None:
    mode = config.mirror_mode
    if not mode.names:
        return None
    port = next((e.port for e in mode.listen), 443)
    return mode.names[0] if port == 443 else f"{mode.names[0]}:{port}"


def _configured(config: Config) -> list[str]:
    """The registry names clients use (`docker.io` for Hub's API hosts)."""
    return [HUB_NAME if h in DOCKER_HUB_HOSTS else h for h in Registries.of(config).api_names]


def _unique(names: Sequence[str]) -> list[str]:
    seen = [HUB_NAME if n.lower() in DOCKER_HUB_HOSTS else n.lower() for n in names]
    return list(dict.fromkeys(seen))


def _server(name: str) -> str:
    return HUB_SERVER if name == HUB_NAME else f"https://{name}"


def containerd(gateway: str, names: Sequence[str], ca: Path | None) -> Files:
    """hosts.toml per registry: regcache first for pulls and tag lookups, the registry
    itself after it (containerd falls back on any error)."""
    ca_line = f'  ca = "{ca}"\n' if ca else ""
    return {
        f"{name}/hosts.toml": f'server = "{_server(name)}"\n\n[host."https://{gateway}"]\n'
        f'  capabilities = ["pull", "resolve"]\n{ca_line}'
        for name in names
    }


def docker(gateway: str, names: Sequence[str], ca: Path | None) -> Files:
    """daemon.json's `registry-mirrors`: dockerd uses mirrors for Docker Hub alone; its
    other registries stay direct. It trusts the mirror by the system store or
    /etc/docker/certs.d/<gateway>/ca.crt."""
    return {"daemon.json": json.dumps({"registry-mirrors": [f"https://{gateway}"]}, indent=2)}


def podman(gateway: str, names: Sequence[str], ca: Path | None) -> Files:
    """A registries.conf drop-in: a mirror per registry, the registry's name as the
    mirror's path (podman sends no `ns`). Trust: /etc/containers/certs.d/<gateway>/."""
    blocks = [
        f'[[registry]]\nprefix = "{name}"\nlocation = "{name}"\n\n'
        f'[[registry.mirror]]\nlocation = "{gateway}/{name}"\n'
        for name in names
    ]
    return {"50-regcache.conf": "\n".join(blocks)}


def buildkit(gateway: str, names: Sequence[str], ca: Path | None) -> Files:
    """buildkitd.toml: BuildKit keeps its own trust, so the CA is named here."""
    blocks = [f'[registry."{name}"]\n  mirrors = ["{gateway}"]\n' for name in names]
    if ca:
        blocks.append(f'[registry."{gateway}"]\n  ca = ["{ca}"]\n')
    return {"buildkitd.toml": "\n".join(blocks)}


RENDER: dict[str, Callable[[str, Sequence[str], Path | None], Files]] = {
    "containerd": containerd, "docker": docker, "podman": podman, "buildkit": buildkit,
}  # fmt: skip
DIRECTORIES = {
    "containerd": "/etc/containerd/certs.d", "docker": "/etc/docker",
    "podman": "/etc/containers/registries.conf.d", "buildkit": "/etc/buildkit",
}  # fmt: skip
