"""The site's other gateways (`peers`) for `regcache serve` and `regcache doctor`: the
peer set opened, its checks run, and what the status page, `/readyz` and the doctor say
of it; `Sharing`, all that several gateways share (bucket and peers), for `serve`."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from appliance.admin import peerpage
from appliance.admin.metrics import Metrics
from appliance.admin.peerpage import PeerRow
from appliance.cache.ports import BlobFiles
from appliance.config.model import Config, StartupError
from appliance.config.peers import PeersConfig
from appliance.config.registries import Registries
from appliance.kit.findings import Finding
from appliance.kit.tasks import Job
from appliance.local.registry import LocalRegistry
from appliance.mirror.records import MirrorRecords
from appliance.runtime.sharing import degraded, sharing_jobs, tier_section
from appliance.store.index import SqliteIndex
from appliance.store.tier import BlobTier
from appliance.tls.ca import CertificateAuthority, load_ca, to_pem
from appliance.upstream.peers import PeerSet


@dataclass(frozen=True, slots=True)
class Sharing:
    """What this gateway shares with the site's others: the bucket's blob tier
    (`store.s3`) and the peers (`peers`), each optional."""

    tier: BlobTier | None
    peers: PeerSet | None

    def section(self) -> str:
        """The status page's sections on them ("" for neither)."""
        return tier_section(self.tier) + peers_section(self.peers)

    async def degraded(self) -> list[str]:
        return await degraded(self.tier, peers_down(self.peers))

    def jobs(
        self,
        config: Config,
        index: SqliteIndex,
        records: MirrorRecords,
        files: BlobFiles,
        local: LocalRegistry | None,
        when_ready: Callable[[Job], Awaitable[None]] | None = None,
    ) -> dict[str, Job]:
        """Their background work; the `local` registry is shared through the bucket too
        (its replica attached to it here, its job started `when_ready`)."""
        shared_local = None if local is None else (local, files)
        return {**sharing_jobs(config, index, records, self.tier, shared_local, when_ready),
                **peer_jobs(config, self.peers)}  # fmt: skip


def open_peers(
    stack: contextlib.AsyncExitStack,
    config: Config,
    ca: CertificateAuthority,
    metrics: Metrics,
    offline: Callable[[], bool] = lambda: False,
) -> PeerSet | None:
    """The peer set, its sessions closed with `stack`; None when no peers are named.
    While `offline()`, nothing is relayed."""
    peers = config.peers
    if peers is None:
        return None
    peer_set = _peer_set(config, peers, _cadata(peers, ca), offline)
    stack.push_async_callback(peer_set.close)
    metrics.watch_peers(lambda: [(s.name, s.up, s.relays, s.relays_failed)
                                 for s in peer_set.peers.values()])  # fmt: skip
    return peer_set


def _peer_set(
    config: Config, peers: PeersConfig, cadata: str, offline: Callable[[], bool] = lambda: False
) -> PeerSet:
    me = peers.self_index(config.appliance.addresses())
    assert me is not None  # the config's own check
    return PeerSet(peers.members, me, cadata=cadata, probe_host=_probe_host(config),
                   connect_timeout_s=peers.connect_timeout_s,
                   read_timeout_s=peers.read_timeout_s, offline=offline)  # fmt: skip


def _cadata(peers: PeersConfig, ca: CertificateAuthority | None) -> str:
    if peers.ca_bundle is not None:
        try:
            return peers.ca_bundle.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise StartupError(f"peers.ca_bundle: cannot read: {e}") from e
    if ca is None:
        raise StartupError("peers: no CA yet to check the peers with (start regcache once)")
    return to_pem(ca.trust_bundle(dt.datetime.now(dt.UTC))).decode("ascii")


def _probe_host(config: Config) -> str:
    """A registry name every gateway of the site serves (its certificate is asked for
    when checking a peer): the first one configured without a wildcard."""
    names = Registries.of(config).api_names
    if not names:
        raise StartupError("peers: a registry host without a wildcard is needed to check peers")
    return names[0]


def peer_addresses(config: Config) -> frozenset[str]:
    """The other gateways' addresses: requests from them are relays, never relayed on."""
    if config.peers is None:
        return frozenset()
    own = config.appliance.addresses()
    return frozenset(str(m.address) for m in config.peers.members if m.address not in own)


def peer_jobs(config: Config, peers: PeerSet | None) -> dict[str, Job]:
    if peers is None or config.peers is None:
        return {}
    return {"peer-checks": functools.partial(peers.run, config.peers.probe_interval_s)}


def peers_down(peers: PeerSet | None) -> list[str]:
    """For `/readyz`'s degraded list: peers that are down fill nothing for this one."""
    if peers is None:
        return []
    return [f"peer {s.name}: down ({s.why})" for s in peers.peers.values() if not s.up]


def peers_section(peers: PeerSet | None) -> str:
    """The status page's section on the peers ("" without any)."""
    if peers is None:
        return ""
    shares = peers.shares()
    rows = [PeerRow(peers.me, True, 0.0, "this gateway", shares.get(peers.me, 0.0), 0, 0, 0)]
    rows += [PeerRow(s.name, s.up, s.since_s, s.why, shares.get(s.name, 0.0), s.relays,
                     s.relays_failed, s.refused) for s in peers.peers.values()]  # fmt: skip
    return peerpage.render(rows)


async def examine_peers(config: Config) -> list[Finding]:
    """What `regcache doctor` says of the peers, on the gateway: each one's TLS proxy
    answers with a certificate from the peers' CA."""
    peers = config.peers
    if peers is None:
        return []
    try:
        peer_set = _peer_set(config, peers, _cadata(peers, load_ca(config.state_dir)))
    except StartupError as e:
        return [Finding("peers", False, str(e), "set peers.ca_bundle, or start regcache once")]
    try:
        found = []
        for name in peer_set.peers:
            why = await peer_set.check(name)
            fix = ("start regcache there, check the route to it, and that its certificate"
                   " comes from the CA in peers.ca_bundle (or this gateway's own)")  # fmt: skip
            found.append(Finding(f"peer {name}", why is None, why or "TLS handshake completed",
                                 "" if why is None else fix))  # fmt: skip
        return found
    finally:
        await peer_set.close()
