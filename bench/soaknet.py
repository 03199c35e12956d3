"""The soak's DNS load and its hostile mixes, run inside the bench's namespace by soak.py.

    soaknet.py dns --qps 200 --tcp-qps 5 --start-at T --seconds 600 --out FILE
        queries over UDP at a steady rate (intercepted names and a forwarded one, from
        allowed source addresses), and a few over TCP, each on its own connection; one
        JSON line per query as in soakload.py (a timeout after 2 s is a failure).
    soaknet.py hostile --hellos 300 --dns-holds 320 --start-at T --seconds 600
        (i) connections to :443 that send 9 bytes of a TLS ClientHello and sit, opened
        again when cut; (ii) DNS TCP connections from a source outside `allow_clients`,
        kept alive with a query every few seconds, opened again when cut. Prints what
        they achieved: connections opened, cut, refused; how many were open over time.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from dnslib import QTYPE, RCODE, DNSRecord

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.soakload import HUB, QUAY, Recorder, cpu_s  # noqa: E402

REGCACHE_IP, APPLIANCE_ANSWER = "127.0.0.2", "127.0.0.2"
FORWARDED, FORWARDED_ANSWER = "build.example.test", "192.0.2.99"
NAMES = ((HUB, APPLIANCE_ANSWER), (QUAY, APPLIANCE_ANSWER), (FORWARDED, FORWARDED_ANSWER))
DNS_TIMEOUT_S = 2.0
# Record header (handshake, TLS 1.0, length) and handshake header (ClientHello, length):
# 9 bytes of a hello that never comes.
PARTIAL_HELLO = bytes.fromhex("1603010200" + "010001fc")
SPREAD_S = 5.0
HOSTILE_TLS_SOURCE, HOSTILE_DNS_SOURCE = "127.0.9.1", "127.0.9.2"


def problem_with(reply: bytes, expected: str) -> tuple[int, str | None]:
    """(rcode, what is wrong with the reply or None)."""
    try:
        record = DNSRecord.parse(reply)
    except Exception as e:  # noqa: BLE001 - dnslib raises several kinds on garbage
        return -1, f"unparsable reply: {e!r}"
    rcode = int(record.header.rcode)
    if rcode != RCODE.NOERROR:
        return rcode, f"rcode {RCODE.get(rcode)}"
    answers = [str(rr.rdata) for rr in record.rr if rr.rtype == QTYPE.A]
    return rcode, None if answers == [expected] else f"answers {answers}"


class UdpClient(asyncio.DatagramProtocol):
    """One source address's socket; replies are matched to queries by ID."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.pending: dict[int, tuple[float, str, str]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def send(self, name: str, expected: str) -> None:
        self._next_id = (self._next_id + 1) & 0xFFFF
        while self._next_id in self.pending:  # only after 65,536 outstanding
            self._next_id = (self._next_id + 1) & 0xFFFF
        query = DNSRecord.question(name, "A")
        query.header.id = self._next_id
        self.pending[self._next_id] = (time.perf_counter(), name, expected)
        assert self.transport is not None
        self.transport.sendto(query.pack())

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) < 2:
            return
        entry = self.pending.pop(struct.unpack("!H", data[:2])[0], None)
        if entry is None:
            return  # after its timeout: already counted as one
        started, name, expected = entry
        rcode, problem = problem_with(data, expected)
        if problem is None:
            self.rec.add("dns udp", started, rcode, len(data), True)
        else:
            self.rec.add("dns udp", started, rcode, len(data), False, name=name, problem=problem)

    def expire(self) -> None:
        cutoff = time.perf_counter() - DNS_TIMEOUT_S
        for qid, (started, name, _) in list(self.pending.items()):
            if started < cutoff:
                del self.pending[qid]
                self.rec.add("dns udp", started, 0, 0, False, name=name, problem="timeout")


async def tcp_query(rec: Recorder, source: str, name: str, expected: str) -> None:
    started = time.perf_counter()
    query = DNSRecord.question(name, "A").pack()
    try:
        async with asyncio.timeout(DNS_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(REGCACHE_IP, 53, local_addr=(source, 0))
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await reader.readexactly(size)
            finally:
                writer.transport.abort()
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
        rec.add("dns tcp", started, 0, 0, False, name=name, problem=repr(e)[:200])
        return
    rcode, problem = problem_with(reply, expected)
    if problem is None:
        rec.add("dns tcp", started, rcode, len(reply), True)
    else:
        rec.add("dns tcp", started, rcode, len(reply), False, name=name, problem=problem)


async def run_dns(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    rec = Recorder(args.out, args.start_at)
    sources = [f"127.0.1.{1 + i}" for i in range(4)]
    clients = []
    for source in sources:
        _, client = await loop.create_datagram_endpoint(
            lambda: UdpClient(rec), local_addr=(source, 0), remote_addr=(REGCACHE_IP, 53)
        )
        clients.append(client)
    tcp: set[asyncio.Task[None]] = set()
    end, sent, tcp_every = args.start_at + args.seconds, 0, max(1, round(args.qps / args.tcp_qps))
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    try:
        while time.time() < end:
            await asyncio.sleep(max(0.0, args.start_at + sent / args.qps - time.time()))
            name, expected = NAMES[sent % len(NAMES)]
            clients[sent % len(clients)].send(name, expected)
            if args.tcp_qps > 0 and sent % tcp_every == 0:
                task = asyncio.create_task(tcp_query(rec, sources[0], name, expected))
                tcp.add(task)
                task.add_done_callback(tcp.discard)
            if sent % 50 == 0:
                for client in clients:
                    client.expire()
            sent += 1
        await asyncio.sleep(DNS_TIMEOUT_S + 0.1)
        await asyncio.gather(*tcp)
        for client in clients:
            client.expire()
    finally:
        rec.close()
    return {"udp_sent": sent, "cpu_s": cpu_s()}


@dataclass
class Holds:
    """What one kind of hostile connection achieved."""

    opened: int = 0
    refused: int = 0
    """Connects that failed, or connections closed within a second with no answer (a
    server at its limit, or one that checks the source first)."""
    cut: int = 0
    held_s: list[float] = field(default_factory=list)
    """How long each connection the server cut (later, or after answering) had stayed
    open."""
    held_at_end: int = 0
    """Connections still open when the run ended."""
    open_now: int = 0
    open_samples: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        samples = self.open_samples or [0]
        return {"opened": self.opened, "refused": self.refused, "cut": self.cut,
                "held_at_end": self.held_at_end,
                "held_s_median": statistics.median(self.held_s) if self.held_s else None,
                "open_mean": statistics.fmean(samples), "open_min": min(samples),
                "open_max": max(samples)}  # fmt: skip

    def ended(self, opened: float, answered: bool) -> None:
        held = time.monotonic() - opened
        if held < 1.0 and not answered:
            self.refused += 1
        else:
            self.cut += 1
            self.held_s.append(held)


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answered: bool = False
    """Whether regcache sent anything on it."""


KeepAlive = Callable[[Connection], Awaitable[None]]


async def sit_on_hello(conn: Connection) -> None:
    conn.writer.write(PARTIAL_HELLO)
    while await conn.reader.read(4096):  # an alert, then EOF when regcache gives up
        conn.answered = True


async def refused_queries(conn: Connection) -> None:
    """A query every 3 s (answered REFUSED, or not at all) keeps the connection from
    being idle; returns (raises) when regcache closes it."""
    query = DNSRecord.question(HUB, "A").pack()
    while True:
        conn.writer.write(struct.pack("!H", len(query)) + query)
        try:
            async with asyncio.timeout(3.0):
                (size,) = struct.unpack("!H", await conn.reader.readexactly(2))
                await conn.reader.readexactly(size)
                conn.answered = True
        except TimeoutError:
            continue
        await asyncio.sleep(3.0)


async def hold(holds: Holds, port: int, source: str, keep: KeepAlive, end: float) -> None:
    """One hostile slot: a connection kept as long as regcache lets it, then another
    (at most two a second, so a server that refuses fast is not flooded). The first is
    opened within SPREAD_S of the start, so that the slots do not all expire at once."""
    await asyncio.sleep(random.uniform(0, SPREAD_S))
    while (left := end - time.time()) > 0:
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(REGCACHE_IP, port, local_addr=(source, 0)), 10
            )
        except (OSError, TimeoutError):
            holds.refused += 1
            await asyncio.sleep(0.5)
            continue
        holds.opened += 1
        holds.open_now += 1
        conn = Connection(reader, writer)
        kept = asyncio.ensure_future(keep(conn))
        try:
            await asyncio.wait({kept}, timeout=left)
            if kept.done():
                # Returned or raised (OSError, IncompleteReadError): regcache closed it.
                if not kept.cancelled():
                    kept.exception()
                holds.ended(opened, conn.answered)
            else:
                holds.held_at_end += 1
        finally:
            kept.cancel()
            await asyncio.gather(kept, return_exceptions=True)
            holds.open_now -= 1
            writer.transport.abort()
        await asyncio.sleep(max(0.0, opened + 0.5 - time.monotonic()))


async def run_hostile(args: argparse.Namespace) -> dict[str, object]:
    end = args.start_at + args.seconds
    hellos, dns = Holds(), Holds()
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    tasks = [hold(hellos, 443, HOSTILE_TLS_SOURCE, sit_on_hello, end)
             for _ in range(args.hellos)]  # fmt: skip
    tasks += [hold(dns, 53, HOSTILE_DNS_SOURCE, refused_queries, end)
              for _ in range(args.dns_holds)]  # fmt: skip

    async def sample() -> None:
        while time.time() < end:
            await asyncio.sleep(1.0)
            hellos.open_samples.append(hellos.open_now)
            dns.open_samples.append(dns.open_now)

    await asyncio.gather(sample(), *tasks)
    return {"tls partial hellos": hellos.summary(), "dns tcp holds": dns.summary(),
            "cpu_s": cpu_s()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["dns", "hostile"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--qps", type=float, default=200.0)
    parser.add_argument("--tcp-qps", type=float, default=5.0)
    parser.add_argument("--hellos", type=int, default=300)
    parser.add_argument("--dns-holds", type=int, default=320)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(run_dns(args) if args.mode == "dns" else run_hostile(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
