"""A scripted upstream resolver on loopback UDP+TCP, run in its own thread.

Names (under `.test.`) select behaviours; every query is recorded with its transport.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord


@dataclass
class Seen:
    transport: str
    name: str
    qtype: str
    source: tuple[str, int]
    ident: int


@dataclass
class FakeUpstream:
    port: int
    seen: list[Seen] = field(default_factory=list)
    nxdomain: set[str] = field(default_factory=set)
    """Names answered NXDOMAIN whatever they would get otherwise."""
    silent: set[str] = field(default_factory=set)
    """Names never answered (a resolver that stopped answering, as far as they go)."""

    def names(self) -> list[str]:
        return [s.name for s in self.seen]

    def answer(self, query: DNSRecord, transport: str) -> list[bytes]:
        """The datagrams to send back, in order (none = stay silent)."""
        name = str(query.q.qname).lower()
        reply = query.reply()
        if name in self.silent:
            return []
        if name in self.nxdomain:
            reply.header.rcode = RCODE.NXDOMAIN
            return [reply.pack()]
        if name == "noedns.test.":
            if any(rr.rtype == QTYPE.OPT for rr in query.ar):
                reply.header.rcode = RCODE.FORMERR
                return [reply.pack()]
            reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.8"), ttl=30))
            return [reply.pack()]
        if name == "slow.test.":
            return []
        if name == "malformed.test.":
            return [struct.pack("!H", query.header.id) + b"\x81\x80\x00\x01garbage"]
        if name == "tc.test." and transport == "udp":
            reply.header.tc = 1
            return [reply.pack()]
        if name == "big.test.":
            for i in range(40):
                reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(f"{i:03d}" + "x" * 96), ttl=30))
            return [reply.pack()]
        if name == "forged.test.":
            forged_id = DNSRecord.parse(query.pack())
            forged_id.header.id ^= 0x5A5A
            bad = forged_id.reply()
            bad.add_answer(RR(name, QTYPE.A, rdata=A("203.0.113.66"), ttl=30))
            wrong_name = DNSRecord.question("evil.test", "A").reply()
            wrong_name.header.id = query.header.id
            wrong_name.add_answer(RR("evil.test", QTYPE.A, rdata=A("203.0.113.67"), ttl=30))
            reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.9"), ttl=30))
            return [bad.pack(), wrong_name.pack(), reply.pack()]
        if name == "neg.test.":  # no such name, with an SOA: cacheable for its MINIMUM
            reply.header.rcode = RCODE.NXDOMAIN
            soa = SOA("ns.test", "hostmaster.test", (1, 3600, 600, 86400, 60))
            reply.add_auth(RR("test", QTYPE.SOA, rdata=soa, ttl=300))
            return [reply.pack()]
        if name == "glue.test.":  # an answer carrying an unrelated record for another name
            reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.10"), ttl=300))
            reply.add_ar(RR("victim.fwd.test", QTYPE.A, rdata=A("203.0.113.68"), ttl=300))
            return [reply.pack()]
        if name.endswith(".fwd.test.") or name == "tc.test.":
            if query.q.qtype == QTYPE.A:
                reply.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.7"), ttl=30))
            return [reply.pack()]
        reply.header.rcode = RCODE.NXDOMAIN
        return [reply.pack()]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = DNSRecord.parse(data)
        self.fake.seen.append(
            Seen("udp", str(query.q.qname), QTYPE[query.q.qtype], addr, query.header.id)
        )
        for packet in self.fake.answer(query, "udp"):
            self.transport.sendto(packet, addr)  # type: ignore[attr-defined]


async def _tcp(fake: FakeUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            query = DNSRecord.parse(await reader.readexactly(size))
            peer = writer.get_extra_info("peername")
            fake.seen.append(
                Seen("tcp", str(query.q.qname), QTYPE[query.q.qtype], peer, query.header.id)
            )
            for packet in fake.answer(query, "tcp"):
                writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class FakeUpstreamThread:
    def __init__(self, port: int) -> None:
        self.fake = FakeUpstream(port)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.fake), local_addr=("127.0.0.1", self.fake.port)
        )
        self._server = await asyncio.start_server(
            lambda r, w: _tcp(self.fake, r, w), "127.0.0.1", self.fake.port
        )

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._udp.close()
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
