"""Hostile packets: none may crash the responder, which must keep answering correctly."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time

from dnslib import RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.config.hostnames import HostSet
from appliance.dns.responder import Interception, Responder
from appliance.dns.wire import Reply
from tests.dns.packets import caa_non_utf8, mutate, pointer_chain, seeds, upstream_reply
from tests.harness import Regcache, query, udp_query

PACKETS_OVER_THE_WIRE = 100_000
PACKETS_IN_PROCESS = 100_000


class EchoForwarder:
    """Our own port faked: answers every forwarded question with NXDOMAIN."""

    async def exchange(
        self, question: bytes, *, dnssec_ok: bool = False, checking_disabled: bool = False
    ) -> Reply:
        return upstream_reply(question, RCODE.NXDOMAIN)


def responder() -> Responder:
    return Responder(
        Interception(
            HostSet.of(["registry-1.docker.io", "*.pkg.dev"]),
            ipaddress.IPv4Address("192.0.2.1"),
            None,
            60,
        ),
        EchoForwarder(),
        (ipaddress.ip_network("127.0.0.0/8"),),
        64,
    )


async def test_known_crashers_get_formerr() -> None:
    r = responder()
    for packet in (pointer_chain(), caa_non_utf8()):
        reply = await r.answer(packet, "127.0.0.1", tcp=False)
        assert reply is not None
        assert DNSRecord.parse(reply).header.rcode == RCODE.FORMERR


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    reply = asyncio.run(responder().answer(data, "127.0.0.1", tcp=True))
    if reply is not None:
        DNSRecord.parse(reply)  # whatever we send back is itself well-formed


async def test_mutation_loop_in_process() -> None:
    r, rng, answered = responder(), random.Random(1), 0
    corpus = seeds()
    for i in range(PACKETS_IN_PROCESS):
        packet = mutate(corpus[i % len(corpus)], rng)
        reply = await r.answer(packet, "127.0.0.1", tcp=bool(i & 1))
        if reply is not None:
            DNSRecord.parse(reply)
            answered += 1
    assert answered > PACKETS_IN_PROCESS // 2


def test_server_survives_a_wire_fuzz_run_and_still_answers(regcache: Regcache) -> None:
    rng = random.Random(7)
    corpus = [*seeds(), pointer_chain(), caa_non_utf8()]
    deadline, replies, batch = time.monotonic() + 120, 0, 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for first in range(0, PACKETS_OVER_THE_WIRE, batch):
            for i in range(first, first + batch):
                packet = mutate(corpus[i % len(corpus)], rng) if i % 1000 else pointer_chain()
                sock.sendto(packet, ("127.0.0.1", regcache.dns_port))
            # Self-pacing: wait (briefly) for most of the batch to be answered, so the
            # server really parses the packets instead of the kernel dropping them.
            got, wait_until = 0, time.monotonic() + 0.2
            while got < batch // 2 and time.monotonic() < wait_until:
                got += _drain(sock)
                time.sleep(0.001)
            replies += got
            assert time.monotonic() < deadline
        sock.sendto(caa_non_utf8(), ("127.0.0.1", regcache.dns_port))
        time.sleep(0.5)
        replies += _drain(sock)
    # Most mutants still parse as queries and get an answer: the server really saw them.
    assert replies > PACKETS_OVER_THE_WIRE // 2, replies
    for name, want in (("registry-1.docker.io", "192.0.2.53"), ("ok.fwd.test", "192.0.2.7")):
        reply = DNSRecord.parse(udp_query(regcache.dns_port, query(name).pack()))
        assert [str(rr.rdata) for rr in reply.rr] == [want]
    assert regcache.proc is not None and regcache.proc.poll() is None
    assert "Traceback" not in regcache.log()


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65535)
        except BlockingIOError:
            return count
        count += 1
