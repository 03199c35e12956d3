"""AnswerCache on a hand-moved clock: TTLs, negative answers, bounds, clearing."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord

from appliance.dns.cache import NEGATIVE_MAX_TTL_S, AnswerCache
from appliance.dns.wire import Reply, reply_to
from tests.dns.packets import upstream_reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def question(name: str) -> bytes:
    packed: bytes = DNSRecord.question(name).pack()
    return packed[12:]


def answer(name: str, ttl: int) -> Reply:
    return upstream_reply(question(name), 0, RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=ttl))


def test_an_answer_lives_for_its_ttl_and_ages_in_whole_seconds() -> None:
    clock = Clock()
    cache = AnswerCache(16, 86400, clock=clock)
    cache.put(b"k", answer("a.test", 30))
    hit = cache.get(b"k")
    assert hit is not None and hit.age_s == 0 and hit.exact_until == 1001.0
    clock.now += 12.5
    hit = cache.get(b"k")
    assert hit is not None and hit.age_s == 12 and hit.exact_until == 1013.0
    clock.now += 17.4  # 29.9 s old
    hit = cache.get(b"k")
    assert hit is not None and hit.exact_until == 1030.0  # never past the end of the entry
    clock.now += 0.1
    assert cache.get(b"k") is None


def test_the_longest_ttl_is_capped() -> None:
    clock = Clock()
    cache = AnswerCache(16, 60, clock=clock)
    cache.put(b"k", answer("a.test", 86400))
    clock.now += 59
    hit = cache.get(b"k")
    assert hit is not None and hit.reply.ttls == (60,)  # clients keep it no longer either
    clock.now += 1
    assert cache.get(b"k") is None


def test_negative_answers_live_for_the_soa_minimum_at_most_three_hours() -> None:
    clock = Clock()
    cache = AnswerCache(16, 86400, clock=clock)
    soa = SOA("ns.test", "hm.test", (1, 2, 3, 4, 86400))
    reply = DNSRecord.question("gone.test").reply()
    reply.header.rcode = RCODE.NXDOMAIN
    reply.add_auth(RR("test", QTYPE.SOA, rdata=soa, ttl=86400))
    laid = reply_to(reply.pack(), reply.header.id, question("gone.test"))
    assert laid is not None
    cache.put(b"n", laid)
    clock.now += NEGATIVE_MAX_TTL_S - 1
    hit = cache.get(b"n")
    assert hit is not None and hit.reply.ttls == (NEGATIVE_MAX_TTL_S,)
    clock.now += 1
    assert cache.get(b"n") is None
    cache.put(b"plain", upstream_reply(question("gone.test"), RCODE.NXDOMAIN))  # no SOA
    assert cache.get(b"plain") is None


def test_errors_and_ttl_zero_are_not_kept() -> None:
    cache = AnswerCache(16, 86400)
    cache.put(b"servfail", upstream_reply(question("a.test"), RCODE.SERVFAIL))
    cache.put(b"zero", answer("a.test", 0))
    assert len(cache) == 0


def test_bounded_least_recently_used_out_first_and_cleared() -> None:
    cache = AnswerCache(2, 86400)
    cache.put(b"a", answer("a.test", 60))
    cache.put(b"b", answer("b.test", 60))
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"c", answer("c.test", 60))
    assert cache.get(b"b") is None and cache.get(b"a") is not None and len(cache) == 2
    cache.clear()
    assert cache.get(b"a") is None and len(cache) == 0


def test_zero_entries_keeps_nothing() -> None:
    cache = AnswerCache(0, 86400)
    cache.put(b"a", answer("a.test", 60))
    assert cache.get(b"a") is None and not cache.enabled
