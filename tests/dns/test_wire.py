"""The forward path's byte-level reading and writing, checked against dnslib's."""

from __future__ import annotations

import struct

from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.dns.message import Edns
from appliance.dns.wire import (
    MAX_CACHED_BYTES,
    bare,
    cache_key,
    query,
    question_end,
    read_query,
    reply_to,
)

CLIENT_HEADER = struct.pack("!HH", 0xBEEF, 0x0110)  # ID, RD and CD set


def wire_question(name: str, qtype: str = "A") -> bytes:
    packed: bytes = DNSRecord.question(name, qtype).pack()
    return packed[12:]


def upstream(question: bytes, ident: int = 7, edns: bool = True) -> DNSRecord:
    record = DNSRecord.parse(struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question)
    reply = record.reply()
    if edns:
        reply.add_ar(EDNS0(udp_len=4096))
    return reply


def test_an_ordinary_query_is_read_like_dnslib_reads_it() -> None:
    q = DNSRecord.question("Build.Example.TEST", "AAAA")
    q.add_ar(EDNS0(udp_len=4096, flags="do"))
    read = read_query(q.pack())
    assert read is not None
    assert read.name == "build.example.test" and read.qtype == QTYPE.AAAA and read.qclass == 1
    assert read.edns == Edns(version=0, udp_bytes=4096, dnssec_ok=True)
    assert read.question == q.pack()[12 : question_end(q.pack())]
    assert read_query(DNSRecord.question("plain.test").pack()).edns is None  # type: ignore[union-attr]


def test_anything_unusual_is_left_to_dnslib() -> None:
    odd_name = DNSRecord.question("a b.test").pack()  # a space in a label
    notify = DNSRecord.question("x.test")
    notify.header.opcode = 4
    with_answer = DNSRecord.question("x.test")
    with_answer.add_answer(RR("x.test", QTYPE.A, rdata=A("192.0.2.1")))
    two_opts = DNSRecord.question("x.test")
    two_opts.add_ar(EDNS0())
    two_opts.add_ar(EDNS0())
    short = DNSRecord.question("x.test").pack()[:-2]
    for packet in (odd_name, notify.pack(), with_answer.pack(), two_opts.pack(), short, b""):
        assert read_query(packet) is None


def test_a_reply_counts_only_for_our_id_and_question_in_any_case() -> None:
    question = wire_question("Host.Fwd.Test")
    reply = upstream(wire_question("host.FWD.test"))
    reply.add_answer(RR("host.fwd.test", QTYPE.A, rdata=A("192.0.2.7"), ttl=30))
    data = reply.pack()
    assert reply_to(data, 7, question) is not None
    assert reply_to(data, 8, question) is None  # another ID
    assert reply_to(data, 7, wire_question("other.fwd.test")) is None
    assert reply_to(data, 7, wire_question("host.fwd.test", "AAAA")) is None
    assert reply_to(data[:-3], 7, question) is None  # cut short
    as_query = bytearray(data)
    as_query[2] &= 0x7F  # QR clear: not a reply
    assert reply_to(bytes(as_query), 7, question) is None


def test_replies_that_do_not_hold_together_are_refused() -> None:
    question = wire_question("x.test")
    head = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0)
    fixed = struct.pack("!HHIH", 1, 1, 30, 4)
    forward_pointer = head + question + b"\xc0\x40" + fixed + b"\x01\x02\x03\x04"
    past_the_end = head + question + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 40) + b"\x01"
    opt_not_last = (
        struct.pack("!HHHHHH", 7, 0x8180, 1, 0, 0, 2)
        + question
        + b"\x00"
        + struct.pack("!HHIH", 41, 1232, 0, 0)
        + b"\xc0\x0c"
        + fixed
        + b"\x01\x02\x03\x04"
    )
    for data in (forward_pointer, past_the_end, opt_not_last):
        assert reply_to(data, 7, question) is None
    assert reply_to(head + question + b"\xc0\x0c" + fixed + b"\x01\x02\x03\x04", 7, question)


def test_compose_gives_the_client_its_id_flags_case_and_edns() -> None:
    asked = wire_question("Host.FWD.test")
    reply = upstream(wire_question("host.fwd.test"))
    reply.header.aa = 1
    reply.add_answer(RR("host.fwd.test", QTYPE.A, rdata=A("192.0.2.7"), ttl=300))
    laid = reply_to(reply.pack(), 7, asked)
    assert laid is not None and laid.has_opt
    plain = DNSRecord.parse(laid.compose(CLIENT_HEADER, asked, edns=None, limit=512))
    assert plain.header.id == 0xBEEF and plain.header.rd and plain.header.cd and plain.header.aa
    assert str(plain.q.qname) == "Host.FWD.test." and not plain.ar  # no OPT: it sent none
    assert [(str(rr.rdata), rr.ttl) for rr in plain.rr] == [("192.0.2.7", 300)]
    edns = Edns(version=0, udp_bytes=4096, dnssec_ok=True)
    aged = DNSRecord.parse(laid.compose(CLIENT_HEADER, asked, edns=edns, limit=1232, age_s=42))
    assert [rr.ttl for rr in aged.rr] == [258] and not aged.header.aa
    (opt,) = aged.ar
    assert opt.rtype == QTYPE.OPT and opt.rclass == 1232 and opt.ttl & 0x8000


def big_txt(question: bytes, records: int) -> DNSRecord:
    reply = upstream(question)
    for i in range(records):
        reply.add_answer(*RR.fromZone(f'big.test. 300 TXT "{i:03d}{"x" * 100}"'))
    return reply


def test_compose_cuts_what_exceeds_the_limit_keeping_question_and_opt() -> None:
    question = wire_question("big.test", "TXT")
    laid = reply_to(big_txt(question, 20).pack(), 7, question)
    assert laid is not None
    cut = DNSRecord.parse(
        laid.compose(CLIENT_HEADER, question, edns=Edns(0, 1232, False), limit=512)
    )
    assert cut.header.tc and not cut.rr and str(cut.q.qname) == "big.test."
    assert [rr.rtype for rr in cut.ar] == [QTYPE.OPT]
    whole = DNSRecord.parse(laid.compose(CLIENT_HEADER, question, edns=None, limit=65535))
    assert len(whole.rr) == 20 and not whole.header.tc


def test_how_long_a_reply_may_be_reused() -> None:
    question = wire_question("x.test")

    def laid(rcode: int, *records: RR, authority: tuple[RR, ...] = ()) -> int:
        reply = upstream(question)
        reply.header.rcode = rcode
        for rr in records:
            reply.add_answer(rr)
        for rr in authority:
            reply.add_auth(rr)
        out = reply_to(reply.pack(), 7, question)
        assert out is not None
        return out.cache_ttl(3600, 900)

    soa = RR("test", QTYPE.SOA, rdata=SOA("ns.test", "hm.test", (1, 2, 3, 4, 120)), ttl=600)
    a = RR("x.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=300)
    assert laid(RCODE.NOERROR, a, RR("x.test", QTYPE.A, rdata=A("192.0.2.2"), ttl=60)) == 60
    assert laid(RCODE.NOERROR, RR("x.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=86400)) == 3600
    assert laid(RCODE.NXDOMAIN, authority=(soa,)) == 120  # min(SOA TTL, MINIMUM)
    assert laid(RCODE.NOERROR, authority=(soa,)) == 120  # no record of the type
    long_soa = RR("test", QTYPE.SOA, rdata=SOA("ns.test", "hm.test", (1, 2, 3, 4, 9999)), ttl=9999)
    assert laid(RCODE.NXDOMAIN, authority=(long_soa,)) == 900  # the negative cap
    assert laid(RCODE.NXDOMAIN) == 0  # no SOA: not cached (RFC 2308 5)
    assert laid(RCODE.SERVFAIL, a) == 0 and laid(RCODE.REFUSED) == 0
    assert laid(RCODE.NOERROR, RR("x.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=0)) == 0
    top_bit = RR("x.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=0x80000001)
    assert laid(RCODE.NOERROR, top_bit) == 0  # RFC 2181 8: means zero


def test_a_reused_answer_carries_at_most_the_time_it_is_kept() -> None:
    question = wire_question("gone.test")
    reply = upstream(question)
    reply.header.rcode = RCODE.NXDOMAIN
    reply.add_auth(
        RR("test", QTYPE.SOA, rdata=SOA("ns.test", "hm.test", (1, 2, 3, 4, 50)), ttl=600)
    )
    laid = reply_to(reply.pack(), 7, question)
    assert laid is not None
    again = DNSRecord.parse(
        laid.capped(50).compose(CLIENT_HEADER, question, edns=None, limit=512, age_s=10)
    )
    assert again.header.rcode == RCODE.NXDOMAIN and [rr.ttl for rr in again.auth] == [40]


def test_our_queries_and_bare_replies_read_back_with_dnslib() -> None:
    question = wire_question("x.test", "MX")
    ours = DNSRecord.parse(query(0x1234, question, edns=True, dnssec_ok=True, cd=True))
    assert ours.header.id == 0x1234 and ours.header.rd and ours.header.cd
    assert str(ours.q.qname) == "x.test." and ours.q.qtype == QTYPE.MX
    assert ours.ar[0].rclass == 1232 and ours.ar[0].ttl & 0x8000
    servfail = DNSRecord.parse(bare(CLIENT_HEADER, question, RCODE.SERVFAIL, Edns(0, 512, False)))
    assert servfail.header.id == 0xBEEF and servfail.header.rcode == RCODE.SERVFAIL
    assert servfail.header.rd and str(servfail.q.qname) == "x.test." and len(servfail.ar) == 1


def test_the_cache_key_ignores_only_the_names_letter_case() -> None:
    assert cache_key(wire_question("A.Test")) == cache_key(wire_question("a.test"))
    # QTYPE 65 (HTTPS) is the byte 'A': it must not be folded into 97 (a type of its own)
    https, other = wire_question("a.test", "HTTPS"), wire_question("a.test")
    other = other[:-4] + struct.pack("!HH", 97, 1)
    assert cache_key(https) != cache_key(other)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 0xFFFF))
def test_arbitrary_bytes_never_raise(data: bytes, ident: int) -> None:
    read_query(data)
    laid = reply_to(data, ident, wire_question("x.test"))
    if laid is not None:
        laid.compose(CLIENT_HEADER, laid.question, edns=None, limit=512, age_s=3)


ZONE = (
    "host.fwd.test. A 192.0.2.1",
    "www.host.fwd.test. CNAME host.fwd.test.",
    "fwd.test. NS ns1.fwd.test.",
    "host.fwd.test. MX 10 mail.host.fwd.test.",
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100_000)), min_size=0, max_size=12),
    st.integers(0, 5000),
)
def test_composed_replies_read_back_as_the_upstream_sent_them(
    records: list[tuple[int, int]], age: int
) -> None:
    """Whatever upstream sends (names compressed against the question and each other),
    the client reads the same records, each TTL `age` smaller."""
    question = wire_question("host.fwd.test")
    reply = upstream(question)
    for kind, ttl in records:
        name, rest = ZONE[kind].split(" ", 1)
        reply.add_answer(*RR.fromZone(f"{name} {ttl} {rest}"))
    laid = reply_to(reply.pack(), 7, question)
    assert laid is not None
    got = DNSRecord.parse(laid.compose(CLIENT_HEADER, question, edns=None, limit=65535, age_s=age))
    assert [(rr.rname, rr.rtype, str(rr.rdata), rr.ttl) for rr in got.rr] == [
        (rr.rname, rr.rtype, str(rr.rdata), max(rr.ttl - age, 0)) for rr in reply.rr
    ]


def test_a_cname_chain_ending_in_nothing_lives_no_longer_than_its_parts() -> None:
    """RFC 2308: with an SOA, the negative TTL bounds the whole reply; so does the
    shortest record, a CNAME's included."""
    question = wire_question("alias.test")
    soa = RR("test", QTYPE.SOA, rdata=SOA("ns.test", "hm.test", (1, 2, 3, 4, 60)), ttl=3600)
    for rcode, cname_ttl, expected in ((RCODE.NOERROR, 300, 60), (RCODE.NXDOMAIN, 5, 5)):
        reply = upstream(question)
        reply.header.rcode = rcode
        reply.add_answer(*RR.fromZone(f"alias.test. {cname_ttl} CNAME gone.test."))
        reply.add_auth(soa)
        laid = reply_to(reply.pack(), 7, question)
        assert laid is not None and laid.cache_ttl(86400, 10800) == expected


def test_large_replies_are_relayed_but_not_kept() -> None:
    question = wire_question("big.test", "TXT")
    laid = reply_to(big_txt(question, 50).pack(), 7, question)
    assert laid is not None and len(laid.body) > MAX_CACHED_BYTES
    assert laid.cache_ttl(86400, 10800) == 0


def test_names_a_client_could_not_read_back_are_refused() -> None:
    question = wire_question("x.test")
    head = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0)
    rr = struct.pack("!HHIH", 1, 1, 30, 4) + b"\x01\x02\x03\x04"
    loop_at = 12 + len(question)
    self_loop = head + question + b"\x01b" + struct.pack("!H", 0xC000 | loop_at) + rr
    into_header = head + question + b"\xc0\x03" + rr
    assert reply_to(self_loop, 7, question) is None
    assert reply_to(into_header, 7, question) is None


def test_a_reply_cut_even_over_tcp_stays_marked_cut() -> None:
    question = wire_question("x.test")
    reply = upstream(question)
    reply.header.tc = 1
    laid = reply_to(reply.pack(), 7, question)
    assert laid is not None and laid.cache_ttl(86400, 10800) == 0
    assert DNSRecord.parse(laid.compose(CLIENT_HEADER, question, edns=None, limit=65535)).header.tc


def test_a_query_with_other_additional_records_is_left_to_dnslib() -> None:
    q = DNSRecord.question("a.example")
    q.add_ar(RR("a.example", QTYPE.A, rdata=A("192.0.2.1")))
    assert read_query(q.pack()) is None
