"""The peer set against real TLS servers on loopback (certificates from a regcache CA):
rendezvous ownership, the TLS check that finds a peer up or down, and a client's
request relayed to the owner as the client sent it, from this gateway's own address."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from appliance.cache.ports import RELAYED
from appliance.config.hostnames import HostSet
from appliance.config.values import Endpoint
from appliance.oci.digest import Digest
from appliance.tls.ca import to_pem
from appliance.tls.leaves import LeafStore
from appliance.upstream.client import UpstreamError
from appliance.upstream.peers import PeerSet, rendezvous
from tests.harness import free_port
from tests.tls.cas import new_ca

BODY = b"layer bytes " * 1000
DIGEST = Digest.of(BODY)
URL = f"https://ghcr.io/v2/org/app/blobs/{DIGEST}"
ME = Endpoint.parse("127.0.0.3:1")  # never contacted: this gateway


def digests(count: int) -> list[Digest]:
    return [Digest("sha256", hashlib.sha256(str(i).encode()).hexdigest()) for i in range(count)]


def test_rendezvous_is_the_same_everywhere_and_shares_evenly() -> None:
    members = ["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"]
    owners = [rendezvous(members, d) for d in digests(3000)]
    assert owners == [rendezvous(list(reversed(members)), d) for d in digests(3000)]
    for member in members:
        assert 800 < owners.count(member) < 1200  # a third each, give or take


def test_a_member_leaving_moves_only_what_it_owned() -> None:
    members = ["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"]
    before = {d: rendezvous(members, d) for d in digests(2000)}
    after = {d: rendezvous(members[:2], d) for d in digests(2000)}
    moved = [d for d in before if before[d] != after[d]]
    assert moved and all(before[d] == "10.0.0.3:443" for d in moved)
    assert len(moved) == sum(1 for owner in before.values() if owner == "10.0.0.3:443")


@contextlib.asynccontextmanager
async def peer(
    tmp_path: Path, seen: list[web.Request], *, ca_dir: str = "ca"
) -> AsyncIterator[tuple[Endpoint, str]]:
    """A TLS server on loopback with a leaf from a new CA (under `ca_dir`), answering a
    blob GET as a regcache would: (its endpoint, that CA's PEM)."""
    ca = new_ca(tmp_path / ca_dir)
    leaves = LeafStore(ca, HostSet.of(["ghcr.io"]), dt.timedelta(days=30))
    context = await leaves.context("ghcr.io")
    assert context is not None

    async def blob(request: web.Request) -> web.Response:
        seen.append(request)
        if request.headers.get("Authorization") != "Bearer client":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="r"'})
        return web.Response(body=BODY, headers={"Docker-Content-Digest": str(DIGEST)})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)  # the owner waiting on another gateway's lease
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get("/v2/org/app/blobs/{digest}", blob)
    app.router.add_get("/v2/org/slow/blobs/{digest}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield Endpoint.parse(f"127.0.0.1:{port}"), to_pem([ca.cert]).decode()
    finally:
        await runner.cleanup()


def peer_set(other: Endpoint, cadata: str) -> PeerSet:
    return PeerSet([ME, other], 0, cadata=cadata, probe_host="ghcr.io", connect_timeout_s=1.0)


async def test_a_peer_is_down_until_checked_then_owns_its_share(tmp_path: Path) -> None:
    async with peer(tmp_path, []) as (other, cadata):
        peers = peer_set(other, cadata)
        try:
            assert {peers.owner(d) for d in digests(50)} == {None}  # not checked: all ours
            await peers.check_all()
            assert peers.peers[str(other)].up
            assert {peers.owner(d) for d in digests(50)} == {None, str(other)}
            shares = peers.shares()
            assert set(shares) == {str(ME), str(other)} and 0.4 < shares[str(other)] < 0.6
        finally:
            await peers.close()


async def test_a_relay_is_the_clients_request_under_the_registrys_name(tmp_path: Path) -> None:
    seen: list[web.Request] = []
    async with peer(tmp_path, seen) as (other, cadata):
        peers = peer_set(other, cadata)
        try:
            reply = await peers.relay(str(other), URL, {"Authorization": "Bearer client",
                                                         "Accept": "*/*"})  # fmt: skip
            assert reply.status == 200 and reply.digest == DIGEST
            assert b"".join([c async for c in reply.chunks()]) == BODY
            refused = await peers.relay(str(other), URL, {"Authorization": "Bearer other"})
            assert refused.status == 401
            refused.close()
        finally:
            await peers.close()
    assert [r.host.split(":")[0] for r in seen] == ["ghcr.io", "ghcr.io"]
    assert {r.remote for r in seen} == {"127.0.0.3"}  # from this gateway's own address
    assert {r.headers[RELAYED] for r in seen} == {str(ME)}  # and saying it is a relay
    assert seen[0].headers["Accept"] == "*/*"
    state = peers.peers[str(other)]
    assert (state.relays, state.relays_failed, state.refused) == (2, 0, 1)


async def test_a_peer_that_cannot_be_reached_is_down_at_once(tmp_path: Path) -> None:
    async with peer(tmp_path, []) as (other, cadata):
        peers = peer_set(other, cadata)
        await peers.check_all()
    try:  # the server is gone now
        assert peers.peers[str(other)].up
        with pytest.raises(UpstreamError, match="through peer"):
            await peers.relay(str(other), URL, {"Authorization": "Bearer client"})
        state = peers.peers[str(other)]
        assert not state.up and state.relays_failed == 1
        assert {peers.owner(d) for d in digests(50)} == {None}
        await peers.check_all()
        assert not peers.peers[str(other)].up
    finally:
        await peers.close()


async def test_a_peer_slow_to_answer_fails_the_relay_but_stays_up(tmp_path: Path) -> None:
    async with peer(tmp_path, []) as (other, cadata):
        peers = PeerSet([ME, other], 0, cadata=cadata, probe_host="ghcr.io",
                        connect_timeout_s=1.0, read_timeout_s=1.0)  # fmt: skip
        try:
            await peers.check_all()
            slow = URL.replace("org/app", "org/slow")
            with pytest.raises(UpstreamError, match="through peer"):
                await peers.relay(str(other), slow, {"Authorization": "Bearer client"})
            state = peers.peers[str(other)]
            assert state.up and state.relays_failed == 1
        finally:
            await peers.close()


async def test_offline_nothing_is_relayed(tmp_path: Path) -> None:
    offline = True
    async with peer(tmp_path, []) as (other, cadata):
        peers = PeerSet([ME, other], 0, cadata=cadata, probe_host="ghcr.io",
                        offline=lambda: offline)  # fmt: skip
        try:
            await peers.check_all()
            assert {peers.owner(d) for d in digests(50)} == {None}
            offline = False
            assert {peers.owner(d) for d in digests(50)} == {None, str(other)}
        finally:
            await peers.close()


async def test_a_peer_with_a_certificate_from_another_ca_is_not_trusted(tmp_path: Path) -> None:
    async with peer(tmp_path, [], ca_dir="theirs") as (other, _):
        ours = to_pem([new_ca(tmp_path / "ours").cert]).decode()
        peers = peer_set(other, ours)
        try:
            why = await peers.check(str(other))
            assert why is not None and "CERTIFICATE_VERIFY_FAILED" in why
            await peers.check_all()
            assert not peers.peers[str(other)].up
            with pytest.raises(UpstreamError):
                await peers.relay(str(other), URL, {"Authorization": "Bearer client"})
        finally:
            await peers.close()
