"""The forward path's view of DNS messages: walked as bytes, never decoded.

dnslib decodes every field into objects (one header sets 13 bit fields); for a message
regcache only passes on, that cost more than the rest of a forward put together (bench:
about 60 % of 190 µs of CPU per forwarded query). A reply is walked once here, record by
record, to check that it holds together within its length and to find what a forwarder
changes: the header, the question's letter case, the OPT record and the TTLs. Record
data is not interpreted, as in any forwarder: compression pointers inside it stay valid
because every byte before them keeps its place (the question is replaced by one of the
same length, and the OPT record, which the walk requires to be the last record, is cut
from the end). dnslib stays the codec for everything regcache answers itself.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from appliance.dns.message import EDNS_UDP_BYTES, Edns

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, data length
_TTL = struct.Struct("!I")
_OPT, _SOA = 41, 6
_QR, _OPCODE, _AA, _TC, _RD, _RA, _AD, _CD = (0x8000, 0x7800, 0x0400, 0x0200, 0x0100,
                                              0x0080, 0x0020, 0x0010)  # fmt: skip
_RCODE = 0x000F
_NOERROR, _NXDOMAIN = 0, 3
_MAX_TTL = 0x7FFFFFFF  # RFC 2181 8: a TTL with the top bit set means zero
MAX_CACHED_BYTES = 4096
"""Larger replies are relayed but not kept: the cache's bytes stay bounded (entries x
this), whatever names an allowed client makes regcache look up. EDNS answers, DNSSEC
signatures included, fit (RFC 6891 buffers of up to 4096 bytes)."""


class WireError(ValueError):
    """A message that does not hold together (lengths, names, counts)."""


def question_end(data: bytes) -> int:
    """Where the one question of `data` ends; WireError unless it holds exactly one,
    written out (a question has nothing before it to point to)."""
    if len(data) < 12 or _HEADER.unpack_from(data)[2] != 1:
        raise WireError("not one question")
    end = _skip_name(data, 12, allow_pointer=False) + 4
    if end > len(data):
        raise WireError("question runs past the end")
    return end


def name_of(question: bytes) -> str:
    """The name of a question (`question_end` checked it), for logs."""
    labels, pos = [], 0
    while question[pos]:
        labels.append(question[pos + 1 : pos + 1 + question[pos]])
        pos += 1 + question[pos]
    return b".".join(labels).decode("ascii", "backslashreplace").lower()


def cache_key(question: bytes) -> bytes:
    """The question with its name in lower case (type and class left as they are)."""
    return question[:-4].lower() + question[-4:]


def query(ident: int, question: bytes, *, edns: bool, dnssec_ok: bool, cd: bool) -> bytes:
    """A recursive query for `question` (its wire bytes), with our OPT when `edns`."""
    head = _HEADER.pack(ident, _RD | (_CD if cd else 0), 1, 0, 0, int(edns))
    return head + question + (opt_record(0, dnssec_ok) if edns else b"")


def opt_record(ext_rcode: int, dnssec_ok: bool) -> bytes:
    """Our OPT record (RFC 6891): root name, 1232-byte payload, version 0, no options."""
    ttl = (ext_rcode << 24) | (0x8000 if dnssec_ok else 0)
    return b"\x00" + _RR_FIXED.pack(_OPT, EDNS_UDP_BYTES, ttl, 0)


@dataclass(frozen=True, slots=True)
class Reply:
    """An upstream reply laid out: what a forwarder passes on and the parts it adjusts."""

    data: bytes
    """As received."""
    flags: int
    counts: tuple[int, int, int]
    """Answer, authority and additional records, the OPT record not counted."""
    question: bytes
    body: bytes
    """The records after the question, without the OPT record."""
    ttl_at: tuple[int, ...]
    """Where each record's TTL is in `body`."""
    ttls: tuple[int, ...]
    opt: tuple[int, int] | None
    """The OPT record's class (payload size) and TTL (extended RCODE, version, DO)."""
    negative_ttl: int | None
    """RFC 2308 5: the smaller of the authority SOA's TTL and its MINIMUM, if there is one."""

    @property
    def rcode(self) -> int:
        return self.flags & _RCODE

    @property
    def has_opt(self) -> bool:
        return self.opt is not None

    @property
    def ext_rcode(self) -> int:
        return 0 if self.opt is None else self.opt[1] >> 24

    @property
    def truncated(self) -> bool:
        return bool(self.flags & _TC)

    def cache_ttl(self, max_positive_s: int, max_negative_s: int) -> int:
        """How long this reply may be reused (0: not at all): its shortest TTL, and with
        an SOA in the authority section (no such name, no record of the type, also at
        the end of a CNAME chain: RFC 2308) at most the SOA's negative TTL. A negative
        answer without an SOA is not cached; nor is anything else (SERVFAIL, REFUSED,
        a cut reply), nor a reply larger than `MAX_CACHED_BYTES`."""
        if self.truncated or self.rcode not in (_NOERROR, _NXDOMAIN):
            return 0
        if len(self.body) > MAX_CACHED_BYTES:
            return 0
        negative = self.rcode == _NXDOMAIN or not self.counts[0] or self.negative_ttl is not None
        if self.negative_ttl is None and negative:
            return 0
        ttl = min(self.ttls, default=0)
        if self.negative_ttl is not None:
            ttl = min(ttl, self.negative_ttl)
        return min(ttl, max_negative_s if negative else max_positive_s)

    def compose(
        self,
        query_header: bytes,
        question: bytes,
        *,
        edns: Edns | None,
        limit: int,
        age_s: int | None = None,
    ) -> bytes:
        """This reply for a client: its ID and RD/CD bits (`query_header`, its first four
        bytes), its `question` (same name in its own letter case), our OPT if it sent one,
        and, reused from the cache (`age_s`), every TTL that much smaller and AA clear.
        Larger than `limit`: TC=1 with the question and OPT kept."""
        ident, asked = struct.unpack_from("!HH", query_header)
        flags = (
            _QR
            | (self.flags & (_OPCODE | _TC | _RA | _AD | _RCODE))
            | (asked & (_RD | _CD))
            | (self.flags & _AA if age_s is None else 0)
        )
        opt = b"" if edns is None else opt_record(self.ext_rcode, edns.dnssec_ok)
        an, ns, ar = self.counts
        body = self.body
        if age_s:
            aged = bytearray(body)
            for at, ttl in zip(self.ttl_at, self.ttls, strict=True):
                _TTL.pack_into(aged, at, max(ttl - age_s, 0))
            body = bytes(aged)
        out = _HEADER.pack(ident, flags, 1, an, ns, ar + bool(opt)) + question + body + opt
        if len(out) <= limit:
            return out
        return _HEADER.pack(ident, flags | _TC, 1, 0, 0, int(bool(opt))) + question + opt

    def capped(self, ttl_s: int) -> Reply:
        """Every TTL at most `ttl_s`: how long the cache keeps it, which for a negative
        answer is its SOA's negative TTL (RFC 2308 5), so that no client keeps it longer."""
        ttls = tuple(min(t, ttl_s) for t in self.ttls)
        body = bytearray(self.body)
        for at, ttl in zip(self.ttl_at, ttls, strict=True):
            _TTL.pack_into(body, at, ttl)
        return _replace(self, body=bytes(body), ttls=ttls)


def _replace(reply: Reply, *, body: bytes, ttls: tuple[int, ...]) -> Reply:
    """A copy with its records changed, without the message as received (not needed
    after the walk, and the cache should not keep it twice)."""
    return Reply(b"", reply.flags, reply.counts, reply.question, body, reply.ttl_at,
                 ttls, reply.opt, reply.negative_ttl)  # fmt: skip


def bare(query_header: bytes, question: bytes, rcode: int, edns: Edns | None) -> bytes:
    """An answerless reply (SERVFAIL, say) to a query: its ID, opcode and RD, its
    question, our OPT if it sent one."""
    ident, asked = struct.unpack_from("!HH", query_header)
    flags = _QR | _RA | (asked & (_OPCODE | _RD)) | (rcode & _RCODE)
    opt = b"" if edns is None else opt_record(rcode >> 4, edns.dnssec_ok)
    return _HEADER.pack(ident, flags, 1, 0, 0, int(bool(opt))) + question + opt


@dataclass(frozen=True, slots=True)
class Query:
    """An ordinary query, read without dnslib (`read_query`)."""

    question: bytes
    name: str
    """Lower case, without the final dot."""
    qtype: int
    qclass: int
    edns: Edns | None


_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]+")


def read_query(data: bytes) -> Query | None:
    """`data` if it is an ordinary query: opcode QUERY, one question whose name is plain
    letters, digits, hyphens and underscores, no records but at most one OPT record
    that holds together. None for anything else, which dnslib then reads (and answers
    FORMERR, NOTIMP or BADVERS, or forwards a name in other characters)."""
    if len(data) < 12:
        return None
    _ident, flags, qdcount, an, ns, ar = _HEADER.unpack_from(data)
    if flags & (_QR | _OPCODE) or qdcount != 1 or an or ns:
        return None
    labels: list[bytes] = []
    pos = 12
    while pos < len(data) and 0 < data[pos] < 64:
        label = data[pos + 1 : pos + 1 + data[pos]]
        if not _PLAIN_LABEL.fullmatch(label):
            return None
        labels.append(label)
        pos += 1 + data[pos]
    end = pos + 5
    if pos >= len(data) or data[pos] != 0 or end > len(data):
        return None
    try:
        records = _layout(data, flags, end, (an, ns, ar))
    except WireError:
        return None
    if records.counts[2]:
        return None  # additional records besides OPT: dnslib reads them
    qtype, qclass = struct.unpack_from("!HH", data, pos + 1)
    edns = None
    if records.opt is not None:
        size, ttl = records.opt
        edns = Edns(version=(ttl >> 16) & 0xFF, udp_bytes=size, dnssec_ok=bool(ttl & 0x8000))
    name = b".".join(labels).decode("ascii").lower()
    return Query(data[12:end], name, qtype, qclass, edns)


def reply_to(data: bytes, ident: int, question: bytes) -> Reply | None:
    """`data` laid out if it is the reply to our query `ident` for `question` (the same
    name in any letter case, type and class); None for anything else, malformed
    messages included, which a forger could have sent as well."""
    if len(data) < 12:
        return None
    got_ident, flags, qdcount, an, ns, ar = _HEADER.unpack_from(data)
    end = 12 + len(question)
    if got_ident != ident or not flags & _QR or qdcount != 1 or len(data) < end:
        return None
    echoed = data[12:end]
    if cache_key(echoed) != cache_key(question):
        return None
    try:
        return _layout(data, flags, end, (an, ns, ar))
    except WireError:
        return None


def _layout(data: bytes, flags: int, start: int, counts: tuple[int, int, int]) -> Reply:
    ttl_at: list[int] = []
    ttls: list[int] = []
    negative_ttl: int | None = None
    opt: int | None = None
    opt_fields = (0, 0)
    pos = start
    for section, count in enumerate(counts):
        for _ in range(count):
            if opt is not None:
                raise WireError("a record after the OPT record")
            here = pos
            pos = _skip_name(data, pos, allow_pointer=True)
            if pos + 10 > len(data):
                raise WireError("record runs past the end")
            rtype, rclass, ttl, size = _RR_FIXED.unpack_from(data, pos)
            end = pos + 10 + size
            if end > len(data):
                raise WireError("record data runs past the end")
            if rtype == _OPT:
                if section != 2:
                    raise WireError("OPT record outside the additional section")
                opt, opt_fields = here, (rclass, ttl)
            else:
                ttl = 0 if ttl > _MAX_TTL else ttl
                ttl_at.append(pos + 4 - start)
                ttls.append(ttl)
                if rtype == _SOA and section == 1 and size >= 22:
                    (minimum,) = _TTL.unpack_from(data, end - 4)
                    soa = min(ttl, minimum)
                    negative_ttl = soa if negative_ttl is None else min(negative_ttl, soa)
            pos = end
    an, ns, ar = counts
    return Reply(
        data=data,
        flags=flags,
        counts=(an, ns, ar - (opt is not None)),
        question=data[12:start],
        body=data[start : pos if opt is None else opt],
        ttl_at=tuple(ttl_at),
        ttls=tuple(ttls),
        opt=None if opt is None else opt_fields,
        negative_ttl=negative_ttl,
    )


def _skip_name(data: bytes, pos: int, *, allow_pointer: bool) -> int:
    """Where the name at `pos` ends, once the whole name (pointers followed) is found
    to be one a client can read back: labels within the message and at most 255 bytes,
    each pointer aiming back, past the header (which the client's copy changes), at a
    name of the same kind."""
    end: int | None = None
    size = 0
    for _ in range(256):  # every step reads a byte of the name or goes back
        if pos >= len(data):
            raise WireError("name runs past the end")
        length = data[pos]
        if length == 0:
            return pos + 1 if end is None else end
        if length & 0xC0 == 0xC0:
            if not allow_pointer or pos + 2 > len(data):
                raise WireError("compression pointer where none may be")
            target = (length & 0x3F) << 8 | data[pos + 1]
            if not 12 <= target < pos:
                raise WireError("compression pointer not back into the message")
            end = pos + 2 if end is None else end
            pos = target
            continue
        if length & 0xC0:
            raise WireError("unknown label type")
        size += 1 + length
        if size > 255:
            raise WireError("name too long")
        pos += 1 + length
    raise WireError("name too long")
