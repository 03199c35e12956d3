"""What regcache answers: intercepted registry names locally, everything else forwarded.

Transport-free: `answer()` takes a packet and the client address and returns the reply
bytes (or None to stay silent). The UDP/TCP servers own the sockets.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dnslib import AAAA, CLASS, QTYPE, RCODE, RR, A, DNSRecord

from appliance.config.hostnames import HostSet
from appliance.config.model import IPAddress, IPNetwork
from appliance.dns.cache import AnswerCache
from appliance.dns.message import (
    BADVERS,
    OPCODE_QUERY,
    TCP_MAX_BYTES,
    Edns,
    MalformedMessage,
    bare_reply,
    edns_of,
    header_only_reply,
    is_response,
    pack_for_client,
    parse,
    qname_of,
    reply_limit,
)
from appliance.dns.wire import (
    Query,
    Reply,
    WireError,
    bare,
    cache_key,
    name_of,
    question_end,
    read_query,
)
from appliance.kit.bounded import BoundedMap
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.singleflight import SingleFlight

log = logging.getLogger(__name__)

_KNOWN_QUERIES = 4096  # intercepted answers kept packed (registry names x types x flags)
_KNOWN_CLIENTS = 65536


class Forwarder(Protocol):
    async def exchange(
        self, question: bytes, *, dnssec_ok: bool = ..., checking_disabled: bool = ...
    ) -> Reply: ...


@dataclass(frozen=True, slots=True)
class Interception:
    hosts: HostSet
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address | None
    ttl_s: int
    fail_open: HostSet = field(default_factory=lambda: HostSet.of(()))
    """Names answered with their real addresses while the proxy is unhealthy."""
    healthy: Callable[[], bool] = lambda: True
    real_addresses: Mapping[str, tuple[IPAddress, ...]] = field(default_factory=dict)
    """Static `resolve` entries: the real address of a name, without asking upstream."""


@dataclass(frozen=True, slots=True)
class Forward:
    """A query that needs upstream: finish it with `Responder.forward()`."""

    header: bytes
    """The query's ID and flags, as sent."""
    question: bytes
    """Its question as sent (the name in the client's letter case)."""
    key: bytes
    """What the answer is kept under (`AnswerCache`)."""
    edns: Edns | None
    limit: int
    qtype: str

    @property
    def checking_disabled(self) -> bool:
        return bool(self.header[3] & 0x10)


@dataclass(frozen=True, slots=True)
class _Known:
    """A reply packed before, for a query with the same bytes after its ID."""

    qtype: str
    outcome: str
    packed: bytes
    """The reply after its ID."""
    until: float | None
    """Exact until then (a cached answer); None: while the proxy is healthy (intercepted)."""


class Responder:
    """Decides every query at once; only forwards wait (so local answers never queue)."""

    def __init__(
        self,
        interception: Interception,
        forwarder: Forwarder,
        allow_clients: tuple[IPNetwork, ...],
        max_inflight_forwards: int,
        count: Callable[[str, str], None] = lambda _qtype, _outcome: None,
        cache: AnswerCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        """(query type, outcome) of every query: intercepted, forwarded, cached,
        fail-open, refused, invalid, servfail."""
        self.cache = cache if cache is not None else AnswerCache(0, 0)
        self._clock = clock
        self._asking: SingleFlight[Reply | Exception] = SingleFlight()
        self._generation = 0
        """Counts flushes: an answer asked for before one is not kept after it."""
        self._interception = interception
        self._forwarder = forwarder
        self._allow = allow_clients
        self._max_inflight = max_inflight_forwards
        self._inflight = 0
        self._failures = LogThrottle(log, interval_s=30.0)
        self._known: BoundedMap[tuple[bool, bytes], _Known] = BoundedMap(_KNOWN_QUERIES)
        self._allowed: BoundedMap[str, bool] = BoundedMap(_KNOWN_CLIENTS)

    def allowed(self, client: str) -> bool:
        allowed = self._allowed.get(client)
        if allowed is None:
            allowed = self._in_allow_list(client)
            self._allowed.set(client, allowed)
        return allowed

    def _in_allow_list(self, client: str) -> bool:
        ip = ipaddress.ip_address(client.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allow)

    async def answer(self, data: bytes, client: str, *, tcp: bool) -> bytes | None:
        """The reply to one query packet from `client`, or None to send nothing."""
        decision = self.decide(data, client, tcp=tcp)
        return await self.forward(decision) if isinstance(decision, Forward) else decision

    def decide(self, data: bytes, client: str, *, tcp: bool) -> bytes | Forward | None:
        """Reply bytes, None to stay silent, or a `Forward` for names we do not own."""
        if is_response(data):
            return None  # never answer answers: no reflection loops
        # An intercepted answer depends only on the query's bytes after its ID (name in
        # the client's letter case, type, flags, EDNS) while the proxy is healthy, and a
        # cached one as well until its TTLs go down a second: a query seen before is
        # answered without being parsed or packed again.
        key = (tcp, bytes(data[2:]))
        known = self._known.get(key)
        if known is not None and self._usable(known) and self.allowed(client):
            self._count(known.qtype, known.outcome)
            return bytes(data[:2]) + known.packed
        # An ordinary query for a name we do not own goes on without dnslib (`wire`).
        plain = read_query(data)
        if plain is not None and self.allowed(client) and not self._local_for(plain):
            limit = TCP_MAX_BYTES if tcp else reply_limit(plain.edns)
            return self._onward(
                data, key, plain.question, plain.edns, limit, _qtype_label(plain.qtype)
            )
        return self._decide_parsed(data, key, client, tcp)

    def _local_for(self, plain: Query) -> bool:
        """Whether an ordinary query needs an answer of ours (or BADVERS)."""
        if plain.edns is not None and plain.edns.version != 0:
            return True
        return plain.qclass == CLASS.IN and self._interception.hosts.match(plain.name)

    def _decide_parsed(
        self, data: bytes, key: tuple[bool, bytes], client: str, tcp: bool
    ) -> bytes | Forward | None:
        try:
            query = parse(data)
            edns = edns_of(query)
        except MalformedMessage as e:
            log.debug("dns formerr client=%s error=%s", client, e)
            self._count("-", "invalid")
            return header_only_reply(data, RCODE.FORMERR)
        limit = TCP_MAX_BYTES if tcp else reply_limit(edns)
        qtype = _qtype_label(query.q.qtype)
        reply, outcome = self._local(query, edns, client)
        if reply is None:
            try:
                question = bytes(data[12 : question_end(data)])
            except WireError as e:  # dnslib read it, but not as regcache forwards it
                log.debug("dns formerr client=%s error=%s", client, e)
                reply, outcome = bare_reply(query, RCODE.FORMERR, edns), "invalid"
            else:
                return self._onward(data, key, question, edns, limit, qtype, outcome)
        self._count(qtype, outcome)
        packed = pack_for_client(reply, query, edns, limit)
        if outcome == "intercepted" and self._interception.healthy():
            self._known.set(key, _Known(qtype, outcome, packed[2:], None))
        return packed

    def _onward(
        self,
        data: bytes,
        key: tuple[bool, bytes],
        question: bytes,
        edns: Edns | None,
        limit: int,
        qtype: str,
        outcome: str = "forwarded",
    ) -> bytes | Forward:
        """A name we do not own: from the cache, or a `Forward`."""
        checking_disabled = bool(data[3] & 0x10)
        flags = bool(edns and edns.dnssec_ok) | checking_disabled << 1
        ckey = bytes([flags]) + cache_key(question)
        hit = self.cache.get(ckey)
        if hit is not None:
            packed = hit.reply.compose(data[:4], question, edns=edns, limit=limit, age_s=hit.age_s)
            self._count(qtype, "cached")
            if outcome == "forwarded":  # a fail-open name's answer is not for when healthy
                self._known.set(key, _Known(qtype, "cached", packed[2:], hit.exact_until))
            return packed
        if self._inflight >= self._max_inflight:
            self._failures.warning("shed", "dns forward shed reason=too-many-in-flight")
            self._count(qtype, "servfail")
            return bare(data[:4], question, RCODE.SERVFAIL, edns)
        self._count(qtype, outcome)
        return Forward(bytes(data[:4]), question, ckey, edns, limit, qtype)

    def _usable(self, known: _Known) -> bool:
        if known.until is None:
            return self._interception.healthy()
        return self._clock() < known.until

    def flush(self) -> None:
        """Forget every forwarded answer (a config reload)."""
        self.cache.clear()
        self._known.clear()
        self._generation += 1

    def _local(
        self, query: DNSRecord, edns: Edns | None, client: str
    ) -> tuple[DNSRecord | None, str]:
        """The local reply (None: forward) and the outcome to count."""
        if not self.allowed(client):
            return bare_reply(query, RCODE.REFUSED, edns), "refused"
        if query.header.opcode != OPCODE_QUERY:
            return bare_reply(query, RCODE.NOTIMP, edns), "invalid"
        if len(query.questions) != 1:
            return bare_reply(query, RCODE.FORMERR, edns), "invalid"
        if edns is not None and edns.version != 0:
            return bare_reply(query, BADVERS, edns), "invalid"
        name = qname_of(query)
        if query.q.qclass == CLASS.IN and self._interception.hosts.match(name):
            if self._interception.healthy() or not self._interception.fail_open.match(name):
                return self._intercept(query, edns), "intercepted"
            # Fail-open: the proxy cannot serve, so send clients to the real registry.
            real = self._interception.real_addresses.get(name)
            if real is not None:
                return self._answer(query, edns, real, self._interception.ttl_s), "fail-open"
            return None, "fail-open"  # forwarded to the real resolvers
        return None, "forwarded"

    def _answer(
        self, query: DNSRecord, edns: Edns | None, addresses: tuple[IPAddress, ...], ttl: int
    ) -> DNSRecord:
        reply = bare_reply(query, RCODE.NOERROR, edns)
        for address in addresses:
            rtype, rdata = (QTYPE.A, A) if address.version == 4 else (QTYPE.AAAA, AAAA)
            if query.q.qtype in (rtype, QTYPE.ANY):
                reply.add_answer(RR(query.q.qname, rtype, rdata=rdata(str(address)), ttl=ttl))
        return reply

    def _intercept(self, query: DNSRecord, edns: Edns | None) -> DNSRecord:
        """A/AAAA → the appliance; every other type an empty NOERROR, never NXDOMAIN.

        Empty HTTPS/SVCB answers (RFC 9460) keep clients from learning alternative
        endpoints or ECH configs that would route around the appliance.
        """
        reply = bare_reply(query, RCODE.NOERROR, edns)
        reply.header.aa = 1
        qtype, ttl = query.q.qtype, self._interception.ttl_s
        if qtype in (QTYPE.A, QTYPE.ANY):
            rdata = A(str(self._interception.ipv4))
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=rdata, ttl=ttl))
        if qtype in (QTYPE.AAAA, QTYPE.ANY) and self._interception.ipv6 is not None:
            rdata = AAAA(str(self._interception.ipv6))
            reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=rdata, ttl=ttl))
        return reply

    async def forward(self, job: Forward) -> bytes:
        """Ask upstream (one question in flight however many ask it at once); its answer
        relayed and kept while its TTLs allow, or SERVFAIL when no upstream answers."""
        self._inflight += 1
        try:
            # A failure is shared too: the askers waiting on it get SERVFAIL with the
            # leader, instead of each going through the resolvers' timeouts again.
            outcome = await self._asking.join(job.key)
            if outcome is None:
                outcome = await self._asking.lead(job.key, lambda: self._ask(job), _same)
        finally:
            self._inflight -= 1
        if isinstance(outcome, Reply):
            return outcome.compose(job.header, job.question, edns=job.edns, limit=job.limit)
        name = name_of(job.question)
        self._failures.warning("servfail", "dns servfail name=%s error=%s", name, outcome)
        self._count(job.qtype, "servfail")
        return bare(job.header, job.question, RCODE.SERVFAIL, job.edns)

    async def _ask(self, job: Forward) -> Reply | Exception:
        """Upstream's reply, kept while its TTLs allow; or what went wrong."""
        generation = self._generation
        try:
            reply = await self._forwarder.exchange(
                job.question,
                dnssec_ok=bool(job.edns and job.edns.dnssec_ok),
                checking_disabled=job.checking_disabled,
            )
        except Exception as e:  # noqa: BLE001 - any upstream failure is a SERVFAIL
            return e
        if generation == self._generation:
            self.cache.put(job.key, reply)
        return reply


_QTYPE_LABELS = frozenset({"A", "AAAA", "HTTPS", "SVCB", "CNAME", "MX", "TXT", "PTR", "SRV",
                           "NS", "SOA", "ANY", "CAA"})  # fmt: skip


def _qtype_label(qtype: int) -> str:
    """The query type as a metric label; rare types folded into "other" (bounded labels)."""
    name = QTYPE.get(qtype, "other")
    return name if name in _QTYPE_LABELS else "other"


def _same(outcome: Reply | Exception) -> Reply | Exception | None:
    return outcome
