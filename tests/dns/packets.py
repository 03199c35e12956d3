"""Hostile packets: the two known dnslib crashers and a mutation generator."""

from __future__ import annotations

import random
import struct

from dnslib import EDNS0, RR, DNSRecord

from appliance.dns.wire import Reply, reply_to


def pointer_chain(n: int = 5000) -> bytes:
    """An answer whose owner name is a chain of n compression pointers: dnslib recurses
    once per pointer and raises RecursionError."""
    question = b"\x01a\x00" + struct.pack("!HH", 1, 1)  # offsets 12..18
    rr1 = b"\xc0\x0c" + struct.pack("!HHIH", 65280, 1, 0, 2 * n)  # rdata starts at 29
    chain, prev = b"", 12
    for i in range(n):
        chain += struct.pack("!H", 0xC000 | prev)
        prev = 29 + 2 * i
    rr2 = struct.pack("!H", 0xC000 | prev) + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 2, 0, 0) + question + rr1 + chain + rr2


def caa_non_utf8() -> bytes:
    """A query carrying a CAA record whose value is not UTF-8: UnicodeDecodeError."""
    packet = bytearray(DNSRecord.question("a.example").pack())
    packet[7] = 1  # ANCOUNT
    rdata = b"\x00\x05issue\xff\xfe\xfd"
    return bytes(packet) + b"\xc0\x0c" + struct.pack("!HHIH", 257, 1, 60, len(rdata)) + rdata


def seeds() -> list[bytes]:
    edns = DNSRecord.question("registry-1.docker.io", "AAAA")
    edns.add_ar(EDNS0(udp_len=4096, flags="do"))
    return [
        DNSRecord.question("registry-1.docker.io").pack(),
        DNSRecord.question("x.fwd.test", "TXT").pack(),
        DNSRecord.question("us-docker.pkg.dev", "HTTPS").pack(),
        edns.pack(),
        pointer_chain(50),
        caa_non_utf8(),
    ]


def mutate(packet: bytes, rng: random.Random) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and len(data) > 12:
            pos = rng.randrange(12, len(data))
            data[pos : pos + 2] = struct.pack("!H", 0xC000 | rng.randrange(len(data) + 16))
        elif op == 4 and len(data) >= 12:
            data[4:12] = rng.randbytes(8)  # section counts
    if len(data) > 2:
        data[2] &= 0x7F  # keep QR=0 so the packet reaches the parser
    return bytes(data)


def upstream_reply(question: bytes, rcode: int = 0, *records: RR) -> Reply:
    """What an upstream resolver's reply to `question` (wire bytes) looks like to a
    Forwarder's caller: `rcode` and `records` as answers, laid out by `wire`."""
    query = DNSRecord.parse(struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + question)
    reply = query.reply()
    reply.header.rcode = rcode
    for record in records:
        reply.add_answer(record)
    laid = reply_to(reply.pack(), 0, question)
    assert laid is not None
    return laid
