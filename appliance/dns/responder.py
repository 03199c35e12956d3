"""What regcache answers: intercepted registry names locally, everything else forwarded.

Transport-free: `answer()` takes a packet and the client address and returns the reply
bytes (or None to stay silent). The UDP/TCP servers own the sockets.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dnslib import AAAA, CLASS, EDNS0, QTYPE, RCODE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from appliance.config.hostnames import HostSet
from appliance.config.model import IPAddress, IPNetwork
from appliance.dns.message import (
    BADVERS,
    EDNS_UDP_BYTES,
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
from appliance.kit.bounded import BoundedMap
from appliance.kit.logthrottle import LogThrottle

log = logging.getLogger(__name__)

_KNOWN_QUERIES = 4096  # intercepted answers kept packed (registry names x types x flags)
_KNOWN_CLIENTS = 65536


class Forwarder(Protocol):
    async def exchange(
        self, question: DNSQuestion, *, dnssec_ok: bool = ..., checking_disabled: bool = ...
    ) -> DNSRecord: ...


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

    query: DNSRecord
    edns: Edns | None
    limit: int
    client: str


class Responder:
    """Decides every query at once; only forwards wait (so local answers never queue)."""

    def __init__(
        self,
        interception: Interception,
        forwarder: Forwarder,
        allow_clients: tuple[IPNetwork, ...],
        max_inflight_forwards: int,
        count: Callable[[str, str], None] = lambda _qtype, _outcome: None,
    ) -> None:
        self._count = count
        """(query type, outcome) of every query: intercepted, forwarded, fail-open,
        refused, invalid, servfail."""
        self._interception = interception
        self._forwarder = forwarder
        self._allow = allow_clients
        self._max_inflight = max_inflight_forwards
        self._inflight = 0
        self._failures = LogThrottle(log, interval_s=30.0)
        self._intercepted: BoundedMap[tuple[bool, bytes], tuple[str, bytes]] = BoundedMap(
            _KNOWN_QUERIES
        )
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
        # the client's letter case, type, flags, EDNS) while the proxy is healthy: a
        # query seen before is answered without being parsed or packed again.
        key = (tcp, bytes(data[2:]))
        known = self._intercepted.get(key)
        if known is not None and self._interception.healthy() and self.allowed(client):
            self._count(known[0], "intercepted")
            return bytes(data[:2]) + known[1]
        try:
            query = parse(data)
            edns = edns_of(query)
        except MalformedMessage as e:
            log.debug("dns formerr client=%s error=%s", client, e)
            self._count("-", "invalid")
            return header_only_reply(data, RCODE.FORMERR)
        limit = TCP_MAX_BYTES if tcp else reply_limit(edns)
        qtype = _qtype_label(query)
        reply, outcome = self._local(query, edns, client)
        if reply is not None:
            self._count(qtype, outcome)
            packed = pack_for_client(reply, query, edns, limit)
            if outcome == "intercepted" and self._interception.healthy():
                self._intercepted.set(key, (qtype, packed[2:]))
            return packed
        if self._inflight >= self._max_inflight:
            self._failures.warning("shed", "dns forward shed reason=too-many-in-flight")
            self._count(qtype, "servfail")
            return pack_for_client(bare_reply(query, RCODE.SERVFAIL, edns), query, edns, limit)
        self._count(qtype, outcome)
        return Forward(query, edns, limit, client)

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
        """Ask upstream; its answer relayed, or SERVFAIL when no upstream answers."""
        query, edns = job.query, job.edns
        self._inflight += 1
        try:
            upstream = await self._forwarder.exchange(
                query.q,
                dnssec_ok=bool(edns and edns.dnssec_ok),
                checking_disabled=bool(query.header.cd),
            )
            reply = _relay(upstream, query, edns)
        except Exception as e:  # noqa: BLE001 - any upstream failure is a SERVFAIL
            self._failures.warning("servfail", "dns servfail name=%s error=%s", qname_of(query), e)
            self._count(_qtype_label(query), "servfail")
            reply = bare_reply(query, RCODE.SERVFAIL, edns)
        finally:
            self._inflight -= 1
        return pack_for_client(reply, query, edns, job.limit)


_QTYPE_LABELS = frozenset({"A", "AAAA", "HTTPS", "SVCB", "CNAME", "MX", "TXT", "PTR", "SRV",
                           "NS", "SOA", "ANY", "CAA"})  # fmt: skip


def _qtype_label(query: DNSRecord) -> str:
    """The query type as a metric label; rare types folded into "other" (bounded labels)."""
    name = QTYPE.get(query.q.qtype, "other")
    return name if name in _QTYPE_LABELS else "other"


def _relay(upstream: DNSRecord, query: DNSRecord, edns: Edns | None) -> DNSRecord:
    """Upstream's answer under the client's ID and flags, with the client's view of EDNS."""
    h = upstream.header
    header = DNSHeader(
        id=query.header.id,
        qr=1,
        opcode=h.opcode,
        aa=h.aa,
        tc=0,
        rd=query.header.rd,
        ra=h.ra,
        ad=h.ad,
        cd=query.header.cd,
        rcode=h.rcode,
    )
    reply = DNSRecord(header, questions=list(query.questions), rr=list(upstream.rr))
    reply.auth = list(upstream.auth)
    reply.ar = [rr for rr in upstream.ar if rr.rtype != QTYPE.OPT]
    if edns is not None:
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_BYTES, flags="do" if edns.dnssec_ok else ""))
    return reply
