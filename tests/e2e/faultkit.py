"""Small programs the fault matrix (test_faults.py) runs inside the lab's namespace.

- `clock OFFSET_FILE ARGS...`: runs `regcache ARGS...` with its wall clock moved by the
  seconds in OFFSET_FILE (re-read at most every 0.2 s). Only `time.time` moves, which is
  the clock regcache's cache decisions read (tag freshness, stale limits, access TTLs);
  the monotonic clock does not, as in a real jump of the wall clock. Certificates use
  `datetime.now` and are not moved (leaves are backdated an hour). libfaketime would move
  the whole process, but version 0.9.10 breaks CPython 3.11's sleeps (EINVAL).
- `dns --listen IP:PORT --record NAME=IP...`: the upstream resolver regcache forwards to;
  answers A queries for its records, NXDOMAIN otherwise. SIGSTOP makes it a resolver that
  stops answering.
- `watch --server IP --name NAME --out FILE`: asks regcache's DNS for NAME ten times a
  second until SIGTERM, then writes {"asked", "answered", "late": [...]} to FILE.

Run as `python -m tests.e2e.faultkit clock|dns|watch ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import time
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord


def clock(offset_file: Path, argv: list[str]) -> int:
    real_time = time.time
    cached = [0.0, float("-inf")]  # offset, monotonic time it was read

    def offset() -> float:
        now = time.monotonic()
        if now - cached[1] > 0.2:
            with contextlib.suppress(OSError, ValueError):
                cached[0] = float(offset_file.read_text().strip() or 0)
            cached[1] = now
        return cached[0]

    time.time = lambda: real_time() + offset()  # before regcache binds it as its clock
    from appliance.cli import main

    return main(argv)


def dns(listen: str, records: dict[str, str]) -> None:
    host, port = listen.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = DNSRecord.parse(data)
        except DNSError:
            continue  # a test resolver ignores junk
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        if name in records and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(records[name]), ttl=5))
        elif name not in records:
            reply.header.rcode = RCODE.NXDOMAIN
        sock.sendto(reply.pack(), peer)


def watch(server: str, name: str, out: Path) -> None:
    """Counts answers to one query every 100 ms; `late` lists the unanswered."""
    asked, answered, late = 0, 0, []
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    while running[0]:
        asked += 1
        query = DNSRecord.question(name, "A")
        try:
            sock.sendto(query.pack(), (server, 53))
            while True:  # skip a late answer to an earlier query
                reply = DNSRecord.parse(sock.recv(4096))
                if reply.header.id == query.header.id:
                    break
            answered += reply.header.rcode == RCODE.NOERROR and bool(reply.rr)
        except (TimeoutError, OSError) as e:
            late.append(f"{time.strftime('%H:%M:%S')} {e}")
        time.sleep(0.1)
    out.write_text(json.dumps({"asked": asked, "answered": answered, "late": late}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    c = sub.add_parser("clock")
    c.add_argument("offset_file", type=Path)
    c.add_argument("args", nargs=argparse.REMAINDER)
    d = sub.add_parser("dns")
    d.add_argument("--listen", required=True)
    d.add_argument("--record", action="append", default=[])
    w = sub.add_parser("watch")
    w.add_argument("--server", required=True)
    w.add_argument("--name", required=True)
    w.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.role == "clock":
        sys.exit(clock(args.offset_file, args.args))
    elif args.role == "dns":
        dns(args.listen, dict(r.split("=", 1) for r in args.record))
    else:
        watch(args.server, args.name, args.out)


if __name__ == "__main__":
    main()
