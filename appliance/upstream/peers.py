"""The site's other gateways (`peers`), as the cache's `Peers` port: who owns a digest,
and a client's blob request relayed to its owner.

- Ownership is rendezvous hashing (highest random weight) over the members that are up,
  this gateway included: every gateway with the same list and the same view computes the
  same owner, and a member going down moves only the digests it owned.
- A member is up once a TLS handshake with it succeeds (checked every
  `probe_interval_s`; its certificate must come from the peers' CA), and down from the
  moment a relay to it cannot connect, until a check finds it up again. A relay that
  connected but failed later (the owner slow to answer) does not make it down.
- A relay is the client's own request (its `Authorization`, `Accept`) sent to the owner's
  TLS proxy under the registry's name, exactly as if the client had come there: the
  owner's gate and single-flight fill apply, and it streams the bytes as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from appliance.cache.ports import RELAYED
from appliance.config.values import Endpoint
from appliance.kit.logfields import fields
from appliance.oci.digest import Digest
from appliance.upstream.client import Reply, UpstreamError, end_to_end

log = logging.getLogger(__name__)


_RELAYS_PER_PEER = 64
"""Connections to one peer at most (more relays wait for one): well under what its TLS
listener admits from one address (`tls.max_connections_per_client`, 256 by default)."""


def rendezvous(members: Sequence[str], digest: Digest) -> str:
    """The member with the highest weight for `digest` (`members` must not be empty)."""
    return max(members, key=lambda m: hashlib.sha256(f"{m}\n{digest}".encode()).digest())


@dataclass(slots=True)
class PeerState:
    """One other gateway, as this one sees it."""

    name: str
    up: bool = False
    since_s: float = 0.0
    """When `up` last changed (epoch seconds); 0: never checked yet."""
    why: str = "not checked yet"
    """What the last failed check or relay said."""
    relays: int = 0
    relays_failed: int = 0
    refused: int = 0
    """Relays the owner answered other than 200 (its gate, upstream's no)."""


class _Fixed(AbstractResolver):
    """Every name resolves to the one peer this session talks to."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self._endpoint.address
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": self._endpoint.port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


def _own_source(me: Endpoint) -> tuple[str, int] | None:
    """Connections to peers come from this gateway's member address when this host has
    it, so that each peer knows a relay for what it is (and never relays it on); else
    from whatever address the route picks."""
    family = socket.AF_INET6 if me.address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(me.address), 0))
        except OSError:
            log.warning("peer source-address-missing %s", fields(address=me.address))
            return None
    return (str(me.address), 0)


class PeerSet:
    def __init__(
        self,
        members: Sequence[Endpoint],
        me: int,
        *,
        cadata: str,
        probe_host: str,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 60.0,
        offline: Callable[[], bool] = lambda: False,
    ) -> None:
        """`members[me]` is this gateway; `cadata` the PEM certificates the peers' TLS
        certificates must chain to; `probe_host` a registry name they all serve."""
        self._endpoints = {str(m): m for m in members}
        self._offline = offline
        """In offline mode nothing is relayed: the owner might ask upstream."""
        self.me = str(members[me])
        self._probe_host = probe_host
        self._connect_timeout_s = connect_timeout_s
        self._context = ssl.create_default_context(cadata=cadata)
        self._context.set_alpn_protocols(["http/1.1"])
        self._source = _own_source(members[me])
        self.peers = {name: PeerState(name) for name in self._endpoints if name != self.me}
        self._sessions = {
            name: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=_Fixed(self._endpoints[name]),
                    ssl=self._context,
                    limit=_RELAYS_PER_PEER,
                    use_dns_cache=False,
                    local_addr=self._source,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
                ),
                auto_decompress=False,
                read_bufsize=4 << 20,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            for name in self.peers
        }

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    def live(self) -> list[str]:
        """The members owners are chosen among: this gateway and those up."""
        return [self.me, *(name for name, state in self.peers.items() if state.up)]

    def owner(self, digest: Digest) -> str | None:
        if self._offline():  # a peer would ask upstream for this gateway: it must not
            return None
        owner = rendezvous(self.live(), digest)
        return None if owner == self.me else owner

    async def relay(self, owner: str, url: str, headers: Mapping[str, str]) -> Reply:
        state = self.peers[owner]
        state.relays += 1
        endpoint = self._endpoints[owner]
        target = URL(url, encoded=True).with_port(endpoint.port)
        outgoing = end_to_end(headers)
        outgoing[RELAYED] = self.me
        try:
            response = await self._sessions[owner].get(target, headers=outgoing,
                                                       allow_redirects=False)  # fmt: skip
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            state.relays_failed += 1
            if isinstance(e, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
                # It could not be reached; one slow to answer (waiting on a lease) is up.
                self._set(state, up=False, why=f"relay: {type(e).__name__} {e}")
            raise UpstreamError(f"GET {url} through peer {owner}: {type(e).__name__} {e}") from e
        if response.status != 200:
            state.refused += 1
        return Reply(response.status, end_to_end(response.headers), f"{url} via {owner}", response)

    async def check(self, name: str) -> str | None:
        """A TLS handshake with `name` now: None if it completed, else why not."""
        endpoint = self._endpoints[name]
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    str(endpoint.address),
                    endpoint.port,
                    ssl=self._context,
                    server_hostname=self._probe_host,
                    local_addr=self._source,
                ),
                timeout=self._connect_timeout_s * 2,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            return f"{type(e).__name__} {e}".strip()
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return None

    async def check_all(self) -> None:
        """Check every peer at once and note what was found."""
        names = list(self.peers)
        found = await asyncio.gather(*(self.check(name) for name in names))
        for name, why in zip(names, found, strict=True):
            self._set(self.peers[name], up=why is None, why=why or "")

    async def run(self, interval_s: float) -> None:
        """Check the peers every `interval_s`, as long as regcache serves."""
        while True:
            await self.check_all()
            await asyncio.sleep(interval_s)

    def shares(self, samples: int = 4096) -> dict[str, float]:
        """The part of all digests each live member owns now (estimated from `samples`
        digests): about equal shares, by the design of rendezvous hashing."""
        live = self.live()
        counts = dict.fromkeys(live, 0)
        for i in range(samples):
            digest = Digest("sha256", hashlib.sha256(i.to_bytes(4, "big")).hexdigest())
            counts[rendezvous(live, digest)] += 1
        return {name: count / samples for name, count in counts.items()}

    def _set(self, state: PeerState, *, up: bool, why: str) -> None:
        if state.up != up or not state.since_s:
            state.since_s = time.time()
            log.info("peer %s", fields(peer=state.name, state="up" if up else "down", why=why))
        state.up, state.why = up, why
