"""Test harness: free loopback ports, a `regcache serve` subprocess, DNS wire helpers, a
notify socket standing in for systemd's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dnslib import DNSRecord

REPO = Path(__file__).resolve().parent.parent
REGCACHE = [sys.executable, "-m", "appliance.cli"]
EXAMPLE_CONFIG = REPO / "config.example.yaml"


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to unbound sockets (`ip_local_port_range`)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`, chosen outside the kernel's ephemeral
    range: a port from that range can be taken by any outgoing connection between this
    call and the server's bind (seen as "address already in use" in a full test run)."""
    low, high = _ephemeral_range()
    below, above = range(10_000, low), range(high + 1, 65_536)
    choices = below if len(below) >= len(above) else above
    for _ in range(200):
        port = choices[secrets.randbelow(len(choices))]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def example_registries() -> list[dict[str, object]]:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    registries: list[dict[str, object]] = data["registries"]
    return registries


@dataclass
class Regcache:
    """A running `regcache serve`, its config file and its log."""

    config_path: Path
    state_dir: Path
    dns_port: int
    https_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*REGCACHE, "--config", str(self.config_path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start(self) -> None:
        assert self.proc is None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*REGCACHE, "--config", str(self.config_path), "serve"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while "regcache ready" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"regcache did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_config(tmp: Path, **overrides: object) -> Regcache:
    """A config on free loopback ports with the example registries; keys can be overridden."""
    dns_port, https_port = free_port(), free_port()
    config: dict[str, object] = {
        "state_dir": str(tmp / "state"),
        "log_level": "INFO",
        "listen": {"dns": [f"127.0.0.1:{dns_port}"], "https": [f"127.0.0.1:{https_port}"]},
        "appliance": {"ipv4": "127.0.0.1"},
        # Never the machine's resolv.conf: tests send traffic to loopback only.
        "dns": {"upstreams": ["127.0.0.1:9"]},
        "registries": example_registries(),
        "tls": yaml.safe_load(EXAMPLE_CONFIG.read_text())["tls"],
        "admin": {"listen": [f"127.0.0.1:{free_port()}"]},
    }
    config.update(overrides)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Regcache(path, tmp / "state", dns_port, https_port, tmp / "regcache.log")


@contextlib.contextmanager
def running(regcache: Regcache) -> Iterator[Regcache]:
    regcache.start()
    try:
        yield regcache
    finally:
        regcache.stop()


def udp_query(
    port: int, packet: bytes, *, timeout: float = 3.0, source: str = "127.0.0.1"
) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        data, _ = sock.recvfrom(65535)
        return data


def tcp_exchange(port: int, packets: list[bytes], *, timeout: float = 5.0) -> list[bytes]:
    """Send all `packets` pipelined on one connection; return as many replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets))
        replies = []
        for _ in packets:
            size = struct.unpack("!H", _recv_exact(sock, 2))[0]
            replies.append(_recv_exact(sock, size))
        return replies


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def query(name: str, qtype: str = "A") -> DNSRecord:
    return DNSRecord.question(name, qtype)


def dig(*args: str) -> str:
    out = subprocess.run(["dig", *args], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket standing in for systemd's (NOTIFY_SOCKET names it); receives time out."""
    name = f"regcache-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


async def received(sock: socket.socket) -> str:
    """The next notification (TimeoutError after the socket's timeout)."""
    return (await asyncio.to_thread(sock.recv, 4096)).decode()
