"""The DNS responder over real UDP and TCP sockets, driven by dig, kdig and Python clients."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from tests.dns.fake_upstream import FakeUpstream
from tests.harness import Regcache, dig, query, running, tcp_exchange, udp_query, write_config


def at(rc: Regcache, *args: str) -> str:
    return dig("@127.0.0.1", "-p", str(rc.dns_port), "+time=3", "+tries=1", *args)


def test_intercepted_a_answers_the_appliance_with_short_ttl(regcache: Regcache) -> None:
    out = at(regcache, "registry-1.docker.io", "A")
    assert "status: NOERROR" in out
    assert re.search(r"registry-1\.docker\.io\.\s+60\s+IN\s+A\s+192\.0\.2\.53", out), out
    assert " aa" in out.split("flags:")[1].split(";")[0]


@pytest.mark.parametrize("name", ["REGISTRY-1.Docker.IO", "us-docker.pkg.dev", "eu.gcr.io"])
def test_intercepted_names_match_case_insensitively_and_by_wildcard(
    regcache: Regcache, name: str
) -> None:
    reply = DNSRecord.parse(udp_query(regcache.dns_port, query(name, "A").pack()))
    assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.53"]


def test_intercepted_aaaa_answers_the_appliance_v6(regcache: Regcache) -> None:
    out = at(regcache, "+short", "ghcr.io", "AAAA")
    assert out.strip() == "2001:db8::53"


@pytest.mark.parametrize("qtype", ["HTTPS", "SVCB", "MX", "TXT"])
def test_other_types_of_intercepted_names_get_empty_noerror(regcache: Regcache, qtype: str) -> None:
    out = at(regcache, "quay.io", qtype)
    assert "status: NOERROR" in out and "ANSWER: 0" in out, out


def test_wildcard_does_not_cover_its_own_suffix(regcache: Regcache, upstream: FakeUpstream) -> None:
    reply = DNSRecord.parse(udp_query(regcache.dns_port, query("pkg.dev", "A").pack()))
    assert reply.header.rcode == RCODE.NXDOMAIN  # forwarded, answered by the fake upstream
    assert "pkg.dev." in upstream.names()


def test_forwarded_names_come_from_the_upstream_resolver(
    regcache: Regcache, upstream: FakeUpstream
) -> None:
    q = query("host1.fwd.test", "A")
    reply = DNSRecord.parse(udp_query(regcache.dns_port, q.pack()))
    assert reply.header.id == q.header.id
    assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.7"]
    out = at(regcache, "+tcp", "+short", "host2.fwd.test")
    assert out.strip() == "192.0.2.7"
    out = at(regcache, "nothere.test")
    assert "status: NXDOMAIN" in out


def test_forwarded_queries_use_fresh_ids_and_source_ports(
    regcache: Regcache, upstream: FakeUpstream
) -> None:
    for i in range(20):
        q = query(f"rand{i}.fwd.test", "A")
        q.header.id = 4242
        udp_query(regcache.dns_port, q.pack())
    seen = [s for s in upstream.seen if s.name.startswith("rand") and s.transport == "udp"]
    assert len(seen) == 20
    assert len({s.ident for s in seen}) >= 18  # random 16-bit IDs, never the client's
    assert len({s.source[1] for s in seen}) >= 18


def test_upstream_timeout_gives_servfail(regcache: Regcache) -> None:
    started = time.monotonic()
    out = at(regcache, "slow.test")
    assert "status: SERVFAIL" in out, out
    assert time.monotonic() - started < 3


def test_malformed_upstream_reply_gives_servfail(regcache: Regcache) -> None:
    assert "status: SERVFAIL" in at(regcache, "malformed.test")


def test_upstream_truncation_is_retried_over_tcp(
    regcache: Regcache, upstream: FakeUpstream
) -> None:
    out = at(regcache, "+short", "tc.test")
    assert out.strip() == "192.0.2.7"
    assert [s.transport for s in upstream.seen if s.name == "tc.test."] == ["udp", "tcp"]


def test_upstream_without_edns_is_asked_again_plainly(regcache: Regcache) -> None:
    assert at(regcache, "+short", "noedns.test").strip() == "192.0.2.8"


def test_forged_upstream_replies_sent_first_are_ignored(regcache: Regcache) -> None:
    out = at(regcache, "+short", "forged.test")
    assert out.strip() == "192.0.2.9", out


def test_oversize_answer_is_truncated_with_the_question_kept(regcache: Regcache) -> None:
    q = query("big.test", "TXT")
    reply = DNSRecord.parse(udp_query(regcache.dns_port, q.pack()))
    assert reply.header.tc == 1
    assert [str(x.qname) for x in reply.questions] == ["big.test."]
    assert not reply.rr and not reply.ar  # no OPT: the query had none


def test_truncated_reply_respects_edns_size_and_keeps_opt(regcache: Regcache) -> None:
    q = query("big.test", "TXT")
    q.add_ar(EDNS0(udp_len=4096))
    raw = udp_query(regcache.dns_port, q.pack())
    reply = DNSRecord.parse(raw)
    assert reply.header.tc == 1 and len(raw) <= 1232
    opts = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert len(opts) == 1 and opts[0].rclass <= 1232


def test_go_like_client_falls_back_to_tcp_after_truncation(regcache: Regcache) -> None:
    """Go's resolver only honours TC when the question matches; then it retries on TCP."""
    q = query("big.test", "TXT")
    first = DNSRecord.parse(udp_query(regcache.dns_port, q.pack()))
    assert first.header.id == q.header.id and first.header.tc
    assert (str(first.q.qname), first.q.qtype) == ("big.test.", QTYPE.TXT)
    (raw,) = tcp_exchange(regcache.dns_port, [q.pack()])
    full = DNSRecord.parse(raw)
    assert not full.header.tc and len(full.rr) == 40


@pytest.mark.parametrize("tool", [["dig", "+noedns"], ["kdig", "+noedns"]])
def test_real_clients_complete_an_oversize_answer_via_tcp(
    regcache: Regcache, tool: list[str]
) -> None:
    import subprocess

    cmd = [tool[0], "@127.0.0.1", "-p", str(regcache.dns_port), *tool[1:], "big.test", "TXT"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    assert len(re.findall(r'"\d{3}x+"', out)) == 40, out


def test_edns_version_other_than_zero_gets_badvers(regcache: Regcache) -> None:
    out = at(regcache, "+edns=1", "+noednsnegotiation", "ghcr.io")
    assert "status: BADVERS" in out, out


def test_opt_only_when_the_query_had_one(regcache: Regcache) -> None:
    plain = DNSRecord.parse(udp_query(regcache.dns_port, query("ghcr.io").pack()))
    assert not [rr for rr in plain.ar if rr.rtype == QTYPE.OPT]
    q = query("ghcr.io")
    q.add_ar(EDNS0(udp_len=4096))
    with_opt = DNSRecord.parse(udp_query(regcache.dns_port, q.pack()))
    opts = [rr for rr in with_opt.ar if rr.rtype == QTYPE.OPT]
    assert len(opts) == 1 and opts[0].rclass == 1232


def test_client_outside_acl_is_refused_and_nothing_forwarded(
    regcache: Regcache, upstream: FakeUpstream
) -> None:
    for name in ("outside.fwd.test", "registry-1.docker.io"):
        raw = udp_query(regcache.dns_port, query(name).pack(), source="127.0.0.2")
        reply = DNSRecord.parse(raw)
        assert reply.header.rcode == RCODE.REFUSED and not reply.rr
    # Over TCP the connection is closed at once, before any query is read.
    with outside_tcp(regcache, "127.0.0.2") as sock:
        with contextlib.suppress(OSError):
            sock.sendall(framed(query("x.fwd.test").pack()))
        assert closed_by_server(sock)
    assert not [n for n in upstream.names() if n in ("outside.fwd.test.", "x.fwd.test.")]


def test_clients_outside_acl_cannot_take_the_tcp_slots(regcache: Regcache) -> None:
    with contextlib.ExitStack() as stack:
        # More connections than `tcp_max_connections` (256) from a refused source,
        # each of which would hold a slot for the 2 s idle timeout were it admitted.
        socks = [stack.enter_context(outside_tcp(regcache, "127.0.0.66")) for _ in range(300)]
        # The server takes connections in order: once the last is closed, every one
        # before it has been seen (and, before the fix, 256 of them held the slots).
        assert closed_by_server(socks[-1])
        (raw,) = tcp_exchange(regcache.dns_port, [query("ghcr.io").pack()])
        assert [str(rr.rdata) for rr in DNSRecord.parse(raw).rr] == ["192.0.2.53"]


@contextlib.contextmanager
def outside_tcp(rc: Regcache, source: str) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(10)  # a safety net: the server closes a refused client at once
        sock.connect(("127.0.0.1", rc.dns_port))
        yield sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset) with no reply sent."""
    try:
        return sock.recv(512) == b""
    except ConnectionResetError:
        return True


def framed(packet: bytes) -> bytes:
    return struct.pack("!H", len(packet)) + packet


def test_pipelined_tcp_queries_are_all_answered(regcache: Regcache) -> None:
    queries = [query(f"p{i}.fwd.test") for i in range(10)] + [query("gcr.io", "A")]
    replies = [
        DNSRecord.parse(r) for r in tcp_exchange(regcache.dns_port, [q.pack() for q in queries])
    ]
    assert sorted(r.header.id for r in replies) == sorted(q.header.id for q in queries)
    by_id = {r.header.id: r for r in replies}
    assert str(by_id[queries[-1].header.id].rr[0].rdata) == "192.0.2.53"


def test_idle_tcp_connections_do_not_stop_udp_answers(regcache: Regcache) -> None:
    socks: list[socket.socket] = []
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", regcache.dns_port))
            socks.append(s)
        for i in range(20):
            reply = DNSRecord.parse(udp_query(regcache.dns_port, query(f"u{i}.fwd.test").pack()))
            assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.7"]
        # The responder still takes a fresh TCP client once idle connections time out.
        time.sleep(2.5)
        (raw,) = tcp_exchange(regcache.dns_port, [query("ghcr.io").pack()])
        assert DNSRecord.parse(raw).rr
    finally:
        for s in socks:
            s.close()


def test_idle_tcp_connection_is_closed_after_the_timeout(regcache: Regcache) -> None:
    with socket.create_connection(("127.0.0.1", regcache.dns_port), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(1) == b""  # server closes
        assert 1.5 < time.monotonic() - started < 6


def test_responses_are_never_answered(regcache: Regcache) -> None:
    reply = query("ghcr.io").reply()
    with pytest.raises(TimeoutError):
        udp_query(regcache.dns_port, reply.pack(), timeout=0.5)


def test_per_client_rate_limit_drops_the_excess(tmp_path: Path) -> None:
    rc = write_config(
        tmp_path,
        dns={"upstreams": ["127.0.0.1:9"], "rate_limit_qps": 1, "rate_limit_burst": 5},
    )
    with running(rc), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        for i in range(30):
            sock.sendto(query(f"q{i}.ghcr.io").pack(), ("127.0.0.1", rc.dns_port))
        answered = 0
        with contextlib.suppress(TimeoutError):
            while True:
                sock.recv(512)
                answered += 1
    assert 5 <= answered <= 7  # the burst, plus what refilled at 1/s meanwhile


def asked(upstream: FakeUpstream, name: str) -> int:
    return sum(1 for s in upstream.seen if s.name == name)


def test_forwarded_answers_are_reused_with_their_ttls_counting_down(
    regcache: Regcache, upstream: FakeUpstream
) -> None:
    first = DNSRecord.parse(udp_query(regcache.dns_port, query("reuse.fwd.test").pack()))
    assert [(str(rr.rdata), rr.ttl) for rr in first.rr] == [("192.0.2.7", 30)]
    time.sleep(1.2)
    again = DNSRecord.parse(udp_query(regcache.dns_port, query("REUSE.fwd.test").pack()))
    assert str(again.q.qname) == "REUSE.fwd.test."
    assert [str(rr.rdata) for rr in again.rr] == ["192.0.2.7"] and again.rr[0].ttl in (28, 29)
    assert at(regcache, "+tcp", "+short", "reuse.fwd.test").strip() == "192.0.2.7"
    assert asked(upstream, "reuse.fwd.test.") == 1


def test_negative_answers_are_reused_only_with_an_soa(
    regcache: Regcache, upstream: FakeUpstream
) -> None:
    for _ in range(3):
        assert "status: NXDOMAIN" in at(regcache, "neg.test")
        assert "status: NXDOMAIN" in at(regcache, "no-soa.test")
    assert asked(upstream, "neg.test.") == 1  # RFC 2308: for the SOA's MINIMUM
    assert asked(upstream, "no-soa.test.") == 3  # without an SOA: not cached


def test_forged_and_unrelated_records_never_enter_the_cache(
    regcache: Regcache, upstream: FakeUpstream
) -> None:
    """The upstream sends, before its real answer, one with another ID and one for
    another name (both with other addresses); and an answer carrying a record for another
    name. Only whole replies to the very question are kept, under that question."""
    for _ in range(2):
        assert at(regcache, "+short", "forged.test").strip() == "192.0.2.9"
    assert asked(upstream, "forged.test.") == 1
    assert "status: NXDOMAIN" in at(regcache, "evil.test")  # not 203.0.113.67
    assert at(regcache, "+short", "glue.test").strip() == "192.0.2.10"
    assert at(regcache, "+short", "victim.fwd.test").strip() == "192.0.2.7"
    assert asked(upstream, "victim.fwd.test.") == 1


def test_a_reload_empties_the_cache(regcache: Regcache, upstream: FakeUpstream) -> None:
    assert regcache.proc is not None
    for _ in range(2):
        assert at(regcache, "+short", "flush.fwd.test").strip() == "192.0.2.7"
    assert asked(upstream, "flush.fwd.test.") == 1
    regcache.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "dns_cache=emptied" not in regcache.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, "no reload in the log"
        time.sleep(0.05)
    assert at(regcache, "+short", "flush.fwd.test").strip() == "192.0.2.7"
    assert asked(upstream, "flush.fwd.test.") == 2
