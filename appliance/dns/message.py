"""DNS message parsing and reply building on top of dnslib, hardened for hostile input.

dnslib raises far more than `DNSError` on bad packets (a compression-pointer loop raises
`RecursionError`, a CAA record with non-UTF-8 bytes `UnicodeDecodeError`, short buffers
`struct.error`/`IndexError`), so every parse goes through `parse()` here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSRecord

from appliance.config.hostnames import normalise

# RFC 1035 4.2.1 without EDNS; RFC 6891 + DNS Flag Day 2020 advise 1232 with it.
PLAIN_UDP_BYTES = 512
EDNS_UDP_BYTES = 1232
TCP_MAX_BYTES = 65535
BADVERS = 16  # RFC 6891 6.1.3: extended RCODE, upper 8 bits travel in the OPT TTL
OPCODE_QUERY = 0
_QR_BIT = 0x8000


class MalformedMessage(ValueError):
    """Bytes that dnslib cannot parse, whatever exception it raised."""


def parse(data: bytes) -> DNSRecord:
    try:
        return DNSRecord.parse(data)
    except Exception as e:  # dnslib's failure modes are not a closed set
        raise MalformedMessage(f"{type(e).__name__}: {e}") from e


def header_id(data: bytes) -> int | None:
    return struct.unpack_from("!H", data)[0] if len(data) >= 2 else None


def is_response(data: bytes) -> bool:
    return len(data) >= 4 and bool(struct.unpack_from("!H", data, 2)[0] & _QR_BIT)


@dataclass(frozen=True, slots=True)
class Edns:
    """The client's OPT record: absent, or its version, payload size and DO bit."""

    version: int
    udp_bytes: int
    dnssec_ok: bool


def edns_of(record: DNSRecord) -> Edns | None:
    """The OPT record of a message; MalformedMessage if there are several (RFC 6891 6.1.1)."""
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if not opts:
        return None
    if len(opts) > 1:
        raise MalformedMessage("more than one OPT record")
    ttl = opts[0].ttl
    return Edns(version=(ttl >> 16) & 0xFF, udp_bytes=opts[0].rclass, dnssec_ok=bool(ttl & 0x8000))


def reply_limit(edns: Edns | None) -> int:
    """Largest UDP reply this client takes: 512 without EDNS, else min(its size, 1232)."""
    if edns is None:
        return PLAIN_UDP_BYTES
    return max(PLAIN_UDP_BYTES, min(edns.udp_bytes, EDNS_UDP_BYTES))


def qname_of(record: DNSRecord) -> str:
    return normalise(str(record.q.qname))


def bare_reply(query: DNSRecord, rcode: int, edns: Edns | None) -> DNSRecord:
    """An answerless reply keeping the question (Go's resolver needs it), OPT if asked."""
    reply = DNSRecord(
        DNSHeader(id=query.header.id, qr=1, ra=1, rd=query.header.rd, opcode=query.header.opcode),
        questions=list(query.questions),
    )
    reply.header.rcode = rcode & 0xF
    if edns is not None:
        reply.add_ar(
            EDNS0(
                udp_len=EDNS_UDP_BYTES,
                ext_rcode=rcode >> 4,
                flags="do" if edns.dnssec_ok else "",
            )
        )
    return reply


def header_only_reply(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP for a message we could not parse: its ID, flags, no sections."""
    ident = header_id(data)
    if ident is None or len(data) < 12 or is_response(data):
        return None
    opcode = (struct.unpack_from("!H", data, 2)[0] >> 11) & 0xF
    flags = _QR_BIT | (opcode << 11) | (rcode & 0xF)
    return struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0)


def pack_for_client(reply: DNSRecord, query: DNSRecord, edns: Edns | None, limit: int) -> bytes:
    """Pack `reply`; if it exceeds `limit`, send TC=1 with the question and OPT kept."""
    data: bytes = reply.pack()
    if len(data) <= limit:
        return data
    truncated = bare_reply(query, reply.header.rcode, edns)
    truncated.header.tc = 1
    truncated.header.aa = reply.header.aa
    packed: bytes = truncated.pack()
    return packed


def rcode_name(rcode: int) -> str:
    return "BADVERS" if rcode == BADVERS else str(RCODE.get(rcode, rcode))
