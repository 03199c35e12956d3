"""A network namespace made by the test: a build host's view of the network.

Everything inside talks over the namespace's own loopback. Its resolv.conf lives in
/etc/netns/<ns>/ (never the machine's own), and both are removed afterwards.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path


class Netns:
    def __init__(self, nameserver: str) -> None:
        self.name = f"regcache-test-{secrets.token_hex(3)}"
        self.etc = Path("/etc/netns") / self.name
        self.nameserver = nameserver
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
            self.etc.mkdir(parents=True)
            (self.etc / "resolv.conf").write_text(f"nameserver {self.nameserver}\n")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        shutil.rmtree(self.etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, *cmd: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*cmd), capture_output=True, text=True, timeout=timeout, check=check
        )

    def start(self, *cmd: str, log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(self.argv(*cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)


@contextlib.contextmanager
def netns(nameserver: str) -> Iterator[Netns]:
    with Netns(nameserver) as ns:
        yield ns


@contextlib.contextmanager
def attached(pid: int, nameserver: str, name: str) -> Iterator[str]:
    """`name`: a second name for the namespace `pid` runs in, with a resolv.conf of its
    own (build hosts of a second gateway in one namespace); removed afterwards."""
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "attach", name, str(pid)], check=True)
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {nameserver}\n")
        yield name
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)
