"""DNS message parsing hardened for hostile input, and the replies built for clients."""

from __future__ import annotations

import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord

from appliance.dns.message import (
    BADVERS,
    Edns,
    MalformedMessage,
    edns_of,
    header_only_reply,
    pack_for_client,
    parse,
    rcode_name,
    reply_limit,
)
from tests.dns.packets import caa_non_utf8, pointer_chain


@pytest.mark.parametrize("packet", [pointer_chain(), caa_non_utf8()], ids=["pointers", "caa"])
def test_known_dnslib_crashers_become_malformed_message(packet: bytes) -> None:
    # dnslib 0.9.26 raises RecursionError and UnicodeDecodeError here, not DNSError.
    with pytest.raises(MalformedMessage):
        parse(packet)


def test_an_unparseable_query_gets_a_header_only_reply_with_its_id_and_opcode() -> None:
    garbage = struct.pack("!HHHHHH", 0xBEEF, 2 << 11, 1, 0, 0, 0) + b"\xff\xff"
    reply = header_only_reply(garbage, RCODE.FORMERR)
    assert reply is not None and len(reply) == 12
    ident, flags, *counts = struct.unpack("!HHHHHH", reply)
    assert ident == 0xBEEF and counts == [0, 0, 0, 0]
    assert flags == 0x8000 | (2 << 11) | RCODE.FORMERR
    response = struct.pack("!HHHHHH", 1, 0x8000, 0, 0, 0, 0)
    assert header_only_reply(response, RCODE.FORMERR) is None  # never answer an answer
    assert header_only_reply(b"\x00\x01\x00", RCODE.FORMERR) is None


def test_the_udp_reply_limit_follows_edns_within_512_and_1232() -> None:
    assert reply_limit(None) == 512
    assert reply_limit(Edns(0, 4096, dnssec_ok=False)) == 1232
    assert reply_limit(Edns(0, 100, dnssec_ok=False)) == 512
    assert reply_limit(Edns(0, 1000, dnssec_ok=True)) == 1000


def test_edns_is_read_once_and_two_opt_records_are_malformed() -> None:
    query = DNSRecord.question("ghcr.io")
    assert edns_of(query) is None
    query.add_ar(EDNS0(udp_len=4096, flags="do"))
    assert edns_of(query) == Edns(0, 4096, dnssec_ok=True)
    query.add_ar(EDNS0(udp_len=512))
    with pytest.raises(MalformedMessage, match="more than one OPT"):
        edns_of(query)


def test_a_reply_too_big_for_the_client_is_truncated_keeping_the_question() -> None:
    query = DNSRecord.question("many.example")
    reply = query.reply()
    for i in range(60):
        reply.add_answer(RR("many.example", QTYPE.A, rdata=A(f"192.0.2.{i}"), ttl=60))
    whole = pack_for_client(reply, query, None, 65535)
    assert len(DNSRecord.parse(whole).rr) == 60
    cut = DNSRecord.parse(pack_for_client(reply, query, None, 512))
    assert cut.header.tc == 1 and cut.rr == [] and str(cut.q.qname) == "many.example."
    assert cut.header.id == query.header.id


def test_badvers_is_named_although_dnslib_has_no_name_for_it() -> None:
    assert rcode_name(BADVERS) == "BADVERS" and rcode_name(RCODE.NXDOMAIN) == "NXDOMAIN"
