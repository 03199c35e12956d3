"""Upstream DNS client: how regcache asks real resolvers, for its clients and for itself.

RFC 5452 hardening: a fresh random transaction ID and a fresh connected UDP socket
(kernel-chosen random source port) per query; a reply counts only if it comes from the
server (the kernel filters on the connected address), is a response, its ID, name, type
and class match and it holds together (`wire.reply_to`). Anything else, malformed
replies included, is ignored as a possible forgery until the deadline, after which the
next server is tried. A truncated UDP reply is retried over TCP. The proxy resolves
upstream registry names with `resolve()`, so regcache never answers its own lookups with
its interception address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dnslib import CLASS, QTYPE, RCODE, DNSQuestion, DNSRecord

from appliance.config.hostnames import Hostname, normalise
from appliance.config.model import Endpoint, IPAddress
from appliance.dns.message import MalformedMessage, parse
from appliance.dns.wire import Reply, query, reply_to
from appliance.kit.bounded import BoundedMap
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.singleflight import SingleFlight

log = logging.getLogger(__name__)

_RESOLVE_CACHE_ENTRIES = 4096
_MIN_CACHE_TTL_S = 5
_STALE_S = 86400.0
"""How long past its TTL an answer may stand in while no resolver answers (RFC 8767
serve-stale; it suggests 1 to 3 days)."""
_STALE_ANSWER_TTL_S = 30.0
"""How long a stale answer is used before the resolvers are asked again (RFC 8767: 30 s)."""


class ResolverError(RuntimeError):
    """No usable answer from any upstream resolver."""


class _NoAnswer(ResolverError):
    """Not one resolver answered (as opposed to answering that there is no address)."""


def nameservers_from(resolv_conf: Path, exclude: Sequence[Endpoint]) -> list[Endpoint]:
    """The `nameserver` lines of a resolv.conf, minus regcache's own DNS listeners."""
    servers: list[Endpoint] = []
    try:
        lines = resolv_conf.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ResolverError(f"cannot read {resolv_conf}: {e}") from e
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            candidate = Endpoint(address, 53)
            if not any(own.receives(candidate) for own in exclude):
                servers.append(candidate)
    return servers


def _take_reply(
    sock: socket.socket, answer: asyncio.Future[Reply], ident: int, question: bytes
) -> None:
    """A datagram on a query's socket: the answer if it is the reply; anything else may
    be a forgery, and the query keeps waiting."""
    if answer.done():
        return
    try:
        data = sock.recv(65535)
    except BlockingIOError:
        return
    except OSError as e:  # ICMP port unreachable and the like
        answer.set_exception(e)
        return
    reply = reply_to(data, ident, question)
    if reply is not None:
        answer.set_result(reply)


class UpstreamResolver:
    """Queries upstream resolvers in order; `resolve()` adds static overrides and a cache."""

    def __init__(
        self,
        servers: Sequence[Endpoint],
        timeout_s: float,
        overrides: Mapping[Hostname, tuple[IPAddress, ...]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = tuple(servers)
        self._sockaddrs = {
            server: (
                socket.AF_INET6 if server.address.version == 6 else socket.AF_INET,
                (str(server.address), server.port),
            )
            for server in self.servers
        }
        self._timeout_s = timeout_s
        self._overrides = {normalise(k): v for k, v in (overrides or {}).items()}
        self._cache: BoundedMap[str, tuple[IPAddress, ...]] = BoundedMap(
            _RESOLVE_CACHE_ENTRIES, clock=clock
        )
        self._last_known: BoundedMap[str, tuple[IPAddress, ...]] = BoundedMap(
            _RESOLVE_CACHE_ENTRIES, _STALE_S, clock=clock
        )
        self._stale_log = LogThrottle(log, interval_s=60.0)
        self._lookups: SingleFlight[tuple[IPAddress, ...]] = SingleFlight()

    async def exchange(
        self, question: bytes, *, dnssec_ok: bool = False, checking_disabled: bool = False
    ) -> Reply:
        """The first valid upstream reply to `question` (its wire bytes); ResolverError
        when none comes."""
        if not self.servers:
            raise ResolverError("no upstream resolvers configured")
        failures: list[str] = []
        for server in self.servers:
            try:
                async with asyncio.timeout(self._timeout_s):
                    reply = await self._ask(server, question, dnssec_ok, checking_disabled, True)
                    if reply.rcode == RCODE.FORMERR and not reply.has_opt:
                        # RFC 6891 7: a server that does not know EDNS; ask it plainly.
                        reply = await self._ask(server, question, False, checking_disabled, False)
                return reply
            except (TimeoutError, OSError, ResolverError) as e:
                failures.append(f"{server}: {type(e).__name__} {e}".strip())
        raise ResolverError("; ".join(failures))

    async def _ask(
        self, server: Endpoint, question: bytes, dnssec_ok: bool, cd: bool, edns: bool
    ) -> Reply:
        ident = secrets.randbelow(1 << 16)
        packet = query(ident, question, edns=edns, dnssec_ok=dnssec_ok, cd=cd)
        reply = await self._udp(server, packet, ident, question)
        if reply.truncated:
            reply = await self._tcp(server, packet, ident, question)
        return reply

    async def _udp(self, server: Endpoint, packet: bytes, ident: int, question: bytes) -> Reply:
        loop = asyncio.get_running_loop()
        family, address = self._sockaddrs[server]
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
            # connect(): the kernel picks a random source port and drops datagrams from
            # any other address; ICMP errors surface as OSError on recv.
            sock.connect(address)
            sock.send(packet)
            answer: asyncio.Future[Reply] = loop.create_future()
            loop.add_reader(sock.fileno(), _take_reply, sock, answer, ident, question)
            try:
                return await answer  # bounded by the caller's deadline
            finally:
                loop.remove_reader(sock.fileno())

    async def _tcp(self, server: Endpoint, packet: bytes, ident: int, question: bytes) -> Reply:
        reader, writer = await asyncio.open_connection(str(server.address), server.port)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            while True:  # bounded by the caller's deadline
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = reply_to(await reader.readexactly(size), ident, question)
                if reply is not None:
                    return reply
        except asyncio.IncompleteReadError as e:
            raise ResolverError("tcp connection closed before a reply") from e
        finally:
            writer.close()

    async def resolve(self, host: str) -> tuple[IPAddress, ...]:
        """Addresses of `host` (IPv4 first) from overrides, cache or upstream; never
        ourselves. While no resolver answers at all, the last answer stands in for up to
        a day past its TTL (serve-stale): a build network keeps reaching its registries
        through a resolver outage. A resolver's "no such name" is believed at once."""
        name = normalise(host)
        if name in self._overrides:
            return self._overrides[name]
        cached = self._cache.use(name)
        if cached is not None:
            return cached
        shared = await self._lookups.join(name)  # one lookup per name, however many ask
        if shared is not None:
            return shared
        return await self._lookups.lead(name, lambda: self._fresh_or_stale(name), lambda r: r)

    async def _fresh_or_stale(self, name: str) -> tuple[IPAddress, ...]:
        try:
            result, ttl = await self._lookup(name)
        except _NoAnswer as e:
            stale = self._last_known.get(name)
            if stale is None:
                raise ResolverError(str(e)) from None
            self._stale_log.warning(name, "dns serving-stale %s", fields(name=name, error=e))
            # Not asked again for a while: each new connection would wait the timeouts.
            self._cache.set(name, stale, ttl_s=_STALE_ANSWER_TTL_S)
            return stale
        self._cache.set(name, result, ttl_s=max(ttl, _MIN_CACHE_TTL_S))
        self._last_known.set(name, result)
        return result

    async def _lookup(self, name: str) -> tuple[tuple[IPAddress, ...], int]:
        """(addresses, their smallest TTL); ResolverError for a name that has none,
        _NoAnswer when no resolver answered."""
        questions = (
            DNSRecord(q=DNSQuestion(name, qtype)).pack()[12:] for qtype in (QTYPE.A, QTYPE.AAAA)
        )
        replies = await asyncio.gather(*map(self.exchange, questions), return_exceptions=True)
        addresses: list[IPAddress] = []
        ttl = 3600
        for reply in replies:
            if isinstance(reply, BaseException):
                if not isinstance(reply, ResolverError):
                    raise reply
                continue
            try:
                records = parse(reply.data).rr
            except MalformedMessage:
                continue  # the walk found it whole; dnslib cannot read its records
            for rr in records:
                if rr.rtype in (QTYPE.A, QTYPE.AAAA) and rr.rclass == CLASS.IN:
                    addresses.append(ipaddress.ip_address(str(rr.rdata)))
                    ttl = min(ttl, rr.ttl)
        if not addresses:
            errors = [str(r) for r in replies if isinstance(r, BaseException)]
            text = f"no address for {name}: {'; '.join(errors) or 'empty answer'}"
            if len(errors) == len(replies):
                raise _NoAnswer(text)
            raise ResolverError(text)
        return tuple(sorted(set(addresses), key=lambda a: (a.version, a.packed))), ttl
