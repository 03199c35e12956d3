"""The peers as `regcache serve` and `regcache doctor` see them: none unless configured;
this gateway's own CA checks them unless `peers.ca_bundle` names another; relays are
never relayed on (the other members' addresses); a real TLS peer on loopback is found
up by the doctor, a silent one down, and the status page and metrics show both."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from appliance.admin.metrics import Metrics
from appliance.config.hostnames import HostSet
from appliance.config.model import Config, StartupError
from appliance.runtime.peering import (
    examine_peers,
    open_peers,
    peer_addresses,
    peer_jobs,
    peers_down,
    peers_section,
)
from appliance.tls.ca import CertificateAuthority, create_ca, load_ca
from appliance.tls.leaves import LeafStore
from tests.harness import free_port
from tests.runtime.configs import config

NOW = dt.datetime.now(dt.UTC)


def with_peers(tmp_path: Path, port: int, more: str = "") -> Config:
    return config(tmp_path, f"peers:\n  members: ['192.0.2.1:443', '127.0.0.1:{port}']\n{more}")


@contextlib.asynccontextmanager
async def tls_peer(ca: CertificateAuthority, port: int) -> AsyncIterator[None]:
    """A TLS server on loopback with a certificate from `ca` (what a peer's proxy is)."""
    leaves = LeafStore(ca, HostSet.of(["registry-1.docker.io"]), dt.timedelta(days=30))
    context = await leaves.context("registry-1.docker.io")
    runner = web.AppRunner(web.Application())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield
    finally:
        await runner.cleanup()


def own_ca(tmp_path: Path) -> CertificateAuthority:
    return create_ca(tmp_path / "state", permitted_domains=None, lifetime=dt.timedelta(days=30),
                     now=NOW)  # fmt: skip


async def test_no_section_no_peers(tmp_path: Path) -> None:
    plain = config(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        assert open_peers(stack, plain, own_ca(tmp_path), Metrics()) is None
    assert peer_addresses(plain) == frozenset() and peer_jobs(plain, None) == {}
    assert peers_down(None) == [] and peers_section(None) == ""
    assert await examine_peers(plain) == []


async def test_serve_checks_peers_with_its_own_ca_and_shows_them(tmp_path: Path) -> None:
    port = free_port()
    configured, ca, metrics = with_peers(tmp_path, port), own_ca(tmp_path), Metrics()
    assert peer_addresses(configured) == frozenset({"127.0.0.1"})
    async with contextlib.AsyncExitStack() as stack:
        peers = open_peers(stack, configured, ca, metrics)
        assert peers is not None and peers.me == "192.0.2.1:443"
        assert set(peer_jobs(configured, peers)) == {"peer-checks"}
        await peers.check_all()
        [down] = peers_down(peers)
        assert down.startswith(f"peer 127.0.0.1:{port}: down (ConnectionRefusedError")
        assert f'regcache_peer_up{{peer="127.0.0.1:{port}"}} 0.0' in metrics.render().decode()
        async with tls_peer(ca, port):
            await peers.check_all()
        assert peers_down(peers) == []
        assert f'regcache_peer_up{{peer="127.0.0.1:{port}"}} 1.0' in metrics.render().decode()
        section = peers_section(peers)
        assert "<code>192.0.2.1:443</code></td><td>this gateway</td>" in section
        assert f"<code>127.0.0.1:{port}</code></td><td>up since" in section
        assert section.count("%</td>") == 2


async def test_a_ca_bundle_that_cannot_be_read_names_its_key(tmp_path: Path) -> None:
    configured = with_peers(tmp_path, free_port(), f"  ca_bundle: {tmp_path / 'missing.pem'}\n")
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(StartupError, match=r"peers.ca_bundle: cannot read"):
            open_peers(stack, configured, own_ca(tmp_path), Metrics())


async def test_the_doctor_finds_a_peer_up_and_a_silent_one_down(tmp_path: Path) -> None:
    port = free_port()
    configured = with_peers(tmp_path, port)
    [missing] = await examine_peers(configured)  # no CA yet on this gateway
    assert not missing.ok and "no CA yet" in missing.detail
    own_ca(tmp_path)
    ca = load_ca(configured.state_dir)
    assert ca is not None
    [down] = await examine_peers(configured)
    assert not down.ok and "ConnectionRefused" in down.detail and "peers.ca_bundle" in down.fix
    async with tls_peer(ca, port):
        [up] = await examine_peers(configured)
    assert up.ok and up.check == f"peer 127.0.0.1:{port}"
