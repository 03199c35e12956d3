"""The fault-injection matrix: each fault lands while skopeo and podman pull through
regcache, several at once, cold and warm. After each, the invariants hold:

- every pull succeeds byte for byte or fails with an error regcache sent (a registry
  error status, or a body cut short when the fault came after the headers went out):
  never a hang past its timeout, never wrong bytes, never a DNS or TLS failure;
- once the fault is healed, the same pulls succeed (nothing is lost);
- the store passes `regcache cache verify`, no fill's temp file is left, regcache holds
  no file descriptor more than before (and no client connection);
- regcache's DNS answered every query asked throughout (ten a second).

`kill -9` during fills is test_crash.py's. Set REGCACHE_FAULT_REPORT=FILE to get the
outcome of every pull as JSON (the table in THREAT_MODEL.md comes from it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import Image, image, layer
from tests.e2e.lab import CDN_HOST, CDN_IP, REGCACHE_IP, Lab, lab, tmpfs
from tests.e2e.test_crash import regcache_cli, store_violations
from tests.e2e.test_pull import pulled_blobs
from tests.harness import REPO

MiB = 1 << 20
QUAY, HUB = "quay.io", "registry-1.docker.io"
RESOLVER_IP = "127.0.0.21"  # the upstream resolver regcache asks for quay.io's names
READ_TIMEOUT_S = 3
PULL_TIMEOUT_S = 120
TMPFS_BYTES = 160 * MiB
MAX_STALE_S = 1800
PYTHON = str(REPO / ".venv" / "bin" / "python")
# What skopeo and podman print when regcache answered with an error status, and when a
# body they were reading was cut (the fault struck after the 200 went out).
_STATUS = re.compile(
    r"(?:status code from registry|unexpected HTTP status:|StatusCode:|statuscode) ?(\d{3})", re.I
)
_CODE = re.compile(r"unauthorized|manifest unknown|blob unknown|denied", re.I)
_CUT = re.compile(r"unexpected EOF|connection reset by peer|http2: server sent GOAWAY", re.I)
# regcache unhealthy (a full disk fails its store check): DNS fails open and answers the
# registry's real address, which in the lab presents the upstream test CA's certificate,
# one the clients do not trust. On a real network the pull goes to the registry directly.
_FAILED_OPEN = re.compile(r"certificate signed by unknown authority", re.I)


@dataclass
class Pull:
    kind: str
    """skopeo-cold, skopeo-warm, podman-cold, podman-warm."""
    ref: str
    img: Image
    proc: subprocess.Popen[str]
    dest: Path
    result: str = ""

    def finish(self) -> str:
        try:
            _, err = self.proc.communicate(timeout=PULL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            self.result = "hung"
            return self.result
        if self.proc.returncode == 0:
            self.result = "ok" if self._identical() else "WRONG BYTES"
        elif match := _STATUS.search(err):
            self.result = f"error {match.group(1)}"
        elif _CUT.search(err):
            self.result = "cut"
        elif _FAILED_OPEN.search(err):
            self.result = "failed open"
        elif match := _CODE.search(err):  # a registry error named by its code's message
            self.result = f"error {match.group(0).lower()}"
        else:
            self.result = f"OTHER: {err.strip()[-300:]}"
        return self.result

    def _identical(self) -> bool:
        if self.kind.startswith("podman"):  # podman's image ID is the config's digest
            config = next(b for b in self.img.blobs if b.media_type.endswith("json"))
            return self.dest.read_text().strip() == config.digest.removeprefix("sha256:")
        want = {b.digest: b.data for b in (self.img.top, *self.img.blobs)}
        return pulled_blobs(self.dest) == want


@dataclass
class FaultLab:
    lab: Lab
    clock: Path
    resolver: subprocess.Popen[bytes]
    podman: Path
    warm: dict[str, list[tuple[str, Image]]] = field(default_factory=dict)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)
    serial: int = 0

    @property
    def pid(self) -> int:
        assert self.lab.regcache_proc is not None
        return self.lab.regcache_proc.pid

    def cold(self, host: str, count: int) -> list[tuple[str, Image]]:
        """`count` images never pulled before, pushed to `host` around regcache."""
        out = []
        for _ in range(count):
            self.serial += 1
            img = image([layer(3 * MiB, f"fault-{self.serial}"), layer(MiB, f"f2-{self.serial}")])
            repository = f"library/fault{self.serial}" if host == HUB else f"fault/app{self.serial}"
            self.lab.push_upstream(host, repository, "v1", img)
            out.append((f"{host}/{repository}:v1", img))
        return out

    def start(self, kind: str, ref: str, img: Image) -> Pull:
        self.serial += 1
        dest = self.lab.tmp / f"fault-pull-{self.serial}"
        if kind.startswith("podman"):
            storage = self.podman / str(self.serial)  # podman wants a short runroot
            argv = self.lab.ns.argv(
                "podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
                "--storage-driver", "vfs", "pull", "--quiet", "--cert-dir", str(self.lab.ca_dir),
                f"docker://{ref}",
            )  # fmt: skip
            with dest.open("w") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=True)
        else:
            argv = self.lab.pull_argv(ref, dest)
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        return Pull(kind, ref, img, proc, dest)


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[FaultLab, list[str]], None]
    """Called with the cold layers' digests, before the pulls start or (`during`) as they
    start, then it may wait for them to be under way."""
    heal: Callable[[FaultLab], None]
    host: str = QUAY
    during: bool = False
    cold: str = "any"
    """What cold pulls must do: "ok", "fail" (a registry error or a cut), or "any"."""
    warm: str = "ok"


# ---- the faults ------------------------------------------------------------------------


def _cdn(mode: str, **extra: object) -> Callable[[FaultLab, list[str]], None]:
    def inject(fl: FaultLab, digests: list[str]) -> None:
        assert fl.lab.cdn_faults is not None
        # Every layer of the cold images, at a byte somewhere in its first MiB.
        faults = {d: {"mode": mode, "at": 100_000 + (hash(d) % 900_000), **extra} for d in digests}
        fl.lab.cdn_faults.write_text(json.dumps(faults))

    return inject


def _cdn_heal(fl: FaultLab) -> None:
    assert fl.lab.cdn_faults is not None and fl.lab.cdn_corrupt is not None
    fl.lab.cdn_faults.unlink(missing_ok=True)
    fl.lab.cdn_corrupt.unlink(missing_ok=True)


def _corrupt(fl: FaultLab, digests: list[str]) -> None:
    assert fl.lab.cdn_corrupt is not None
    fl.lab.cdn_corrupt.write_text("\n".join(digests) + "\n")


def _signal(
    proc: Callable[[FaultLab], subprocess.Popen[bytes] | None], sig: int
) -> Callable[..., None]:
    def send(fl: FaultLab, *_: object) -> None:
        target = proc(fl)
        assert target is not None and target.poll() is None
        os.kill(target.pid, sig)

    return send


def _resolver(fl: FaultLab) -> subprocess.Popen[bytes]:
    return fl.resolver


def _token(fl: FaultLab) -> subprocess.Popen[bytes] | None:
    return fl.lab.token_proc


def _quay(fl: FaultLab) -> subprocess.Popen[bytes] | None:
    return fl.lab.registries[QUAY].proc


def _when_filling(fl: FaultLab, at_least: int = 1, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while len(list((fl.lab.state_dir / "tmp").glob("fill-*"))) < at_least:
        assert time.monotonic() < deadline, "no fill started"
        time.sleep(0.01)


def _disk_full(fl: FaultLab, _digests: list[str]) -> None:
    _when_filling(fl)
    stat = os.statvfs(fl.lab.state_dir)
    with (fl.lab.state_dir / "filler").open("wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize))


def _disk_heal(fl: FaultLab) -> None:
    (fl.lab.state_dir / "filler").unlink(missing_ok=True)


def _index_removed(fl: FaultLab, _digests: list[str]) -> None:
    _when_filling(fl)
    for suffix in ("", "-wal", "-shm"):
        (fl.lab.state_dir / f"index.sqlite{suffix}").unlink(missing_ok=True)


def _index_corrupted(fl: FaultLab, _digests: list[str]) -> None:
    _when_filling(fl)
    for name in ("index.sqlite", "index.sqlite-wal"):  # every byte of both: garbage
        with (fl.lab.state_dir / name).open("r+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            f.write(os.urandom(size))


def _restart(fl: FaultLab) -> None:
    fl.lab.restart_regcache()


def _crash_restart(fl: FaultLab) -> None:
    """kill -9, then start: a clean stop would checkpoint SQLite's pages from memory over
    the damage (which is what happened when this fault was healed by a restart)."""
    assert fl.lab.regcache_proc is not None
    fl.lab.regcache_proc.kill()
    fl.lab.regcache_proc.wait(timeout=10)
    fl.lab.start_regcache()


def _reloads(fl: FaultLab, _digests: list[str]) -> None:
    for _ in range(10):  # while the pulls run: ten reloads, 0.2 s apart
        os.kill(fl.pid, signal.SIGHUP)
        time.sleep(0.2)


def _jump(seconds: int) -> Callable[..., None]:
    def move(fl: FaultLab, *_: object) -> None:
        now = float(fl.clock.read_text() or 0)
        fl.clock.write_text(str(now + seconds))
        time.sleep(0.3)  # regcache re-reads the offset every 0.2 s

    return move


def _jump_upstream_down(fl: FaultLab, digests: list[str]) -> None:
    _signal(_quay, signal.SIGSTOP)(fl)
    _jump(MAX_STALE_S + 600)(fl)


def _continue_quay(fl: FaultLab) -> None:
    _signal(_quay, signal.SIGCONT)(fl)


def _resolver_down(fl: FaultLab, _digests: list[str]) -> None:
    _signal(_resolver, signal.SIGSTOP)(fl)
    time.sleep(5.5)  # every answer regcache holds is past its TTL (5 s)


FAULTS = [
    Fault("index file removed while serving", _index_removed, _restart, during=True),
    Fault(
        "index file corrupted while serving, then kill -9",
        _index_corrupted,
        _crash_restart,
        during=True,
    ),
    Fault("upstream resets the connection mid-blob", _cdn("reset"), _cdn_heal, cold="fail"),
    Fault("upstream truncates a body", _cdn("truncate"), _cdn_heal, cold="fail"),
    Fault("upstream sends wrong bytes", _corrupt, _cdn_heal, cold="fail"),
    Fault(
        "upstream stalls mid-body past the read timeout",
        _cdn("stall", seconds=4 * READ_TIMEOUT_S),
        _cdn_heal,
        cold="fail",
    ),
    Fault("upstream DNS stops answering", _resolver_down, _signal(_resolver, signal.SIGCONT)),
    Fault(
        "token realm stops answering",
        _signal(_token, signal.SIGSTOP),
        _signal(_token, signal.SIGCONT),
        host=HUB,
        cold="fail",
    ),
    Fault("disk full mid-fill", _disk_full, _disk_heal, during=True, cold="ok"),
    Fault("SIGHUP reload x10 under load", _reloads, lambda fl: None, during=True, cold="ok"),
    Fault(
        "clock jumps past tag_ttl and max_stale",
        _jump(MAX_STALE_S + 600),
        lambda fl: None,
        cold="ok",
    ),
    Fault(
        "clock jumps past max_stale, upstream hangs",
        _jump_upstream_down,
        _continue_quay,
        cold="fail",
        warm="fail",  # a tag validated longer ago than max_stale_s is not served
    ),
]


# ---- the lab and the invariants --------------------------------------------------------


def _tweak(config: dict[str, Any]) -> None:
    config["upstream"].update(connect_timeout_s=2, read_timeout_s=READ_TIMEOUT_S)
    for name in (QUAY, CDN_HOST):  # these two through a resolver the test can silence
        config["resolve"].pop(name)
    config["dns"]["upstreams"] = [f"{RESOLVER_IP}:53"]
    quay = next(r for r in config["registries"] if r["name"] == QUAY)
    quay.update(max_stale_s=MAX_STALE_S, allow_unsafe_targets=True)


@pytest.fixture(scope="module")
def fault_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    reason = _missing() or (None if shutil.which("podman") else "podman is not installed")
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("faults")
    clock = tmp / "clock-offset"
    clock.write_text("0")
    podman = Path(tempfile.mkdtemp(prefix="rcpod-"))
    command = (PYTHON, "-m", "tests.e2e.faultkit", "clock", str(clock))
    try:
        with tmpfs(tmp / "state", TMPFS_BYTES), lab(tmp, _tweak, command) as running:
            resolver = running.ns.start(
                PYTHON, "-m", "tests.e2e.faultkit", "dns", "--listen", f"{RESOLVER_IP}:53",
                "--record", f"{QUAY}={running.registries[QUAY].ip}",
                "--record", f"{CDN_HOST}={CDN_IP}", log=tmp / "resolver.log", cwd=REPO,
            )  # fmt: skip
            fl = FaultLab(running, clock, resolver, podman)
            for host in (QUAY, HUB):
                fl.warm[host] = fl.cold(host, 2)
            yield fl
            report = os.environ.get("REGCACHE_FAULT_REPORT")
            if report:
                Path(report).write_text(json.dumps(fl.report, indent=1))
    finally:  # the resolver, SIGSTOPped or not, went with the namespace
        shutil.rmtree(podman, ignore_errors=True)


@dataclass(frozen=True)
class Fds:
    files: int
    """Everything but sockets: blobs, temp files, the index, pipes."""
    clients: int
    """Connections accepted on 443 still open."""

    @staticmethod
    def of(pid: int) -> Fds:
        listening_443: set[str] = set()
        accepted: set[str] = set()
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            local_port = int(cols[1].split(":")[1], 16)
            if local_port == 443:
                (listening_443 if cols[3] == "0A" else accepted).add(cols[9])
        files, clients = 0, 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(fd)
                if not target.startswith("socket:"):
                    files += 1
                elif target[8:-1] in accepted:
                    clients += 1
        return Fds(files, clients)


@contextlib.contextmanager
def dns_watch(fl: FaultLab, name: str) -> Iterator[Path]:
    out = fl.lab.tmp / f"dns-watch-{fl.serial}.json"
    proc = fl.lab.ns.start(
        PYTHON, "-m", "tests.e2e.faultkit", "watch", "--server", REGCACHE_IP, "--name", name,
        "--out", str(out), log=fl.lab.tmp / "dns-watch.log", cwd=REPO,
    )  # fmt: skip
    try:
        yield out
    finally:
        fl.lab.ns.stop(proc)


def _settled(fl: FaultLab, baseline: Fds) -> Fds:
    """regcache's fds once the clients are gone (closing takes a moment)."""
    deadline = time.monotonic() + 20
    now = Fds.of(fl.pid)
    while (now.files > baseline.files or now.clients) and time.monotonic() < deadline:
        time.sleep(0.2)
        now = Fds.of(fl.pid)
    return now


def _recovered(fl: FaultLab, wanted: list[tuple[str, str, Image]]) -> list[Pull]:
    """The pulls once the fault is healed. A registry that failed is taken for down for
    10 s from its failure (no request waits on it meanwhile): a pull may be retried until
    that has passed."""
    deadline = time.monotonic() + 12
    while True:
        pulls = [fl.start(kind, ref, img) for kind, ref, img in wanted]
        for pull in pulls:
            pull.finish()
        if all(p.result == "ok" for p in pulls) or time.monotonic() > deadline:
            return pulls
        time.sleep(2)


def _warnings(log: Path, since: int) -> dict[str, int]:
    """What regcache warned of meanwhile: event → count (`fill failed`: 3)."""
    counts: dict[str, int] = {}
    with log.open("rb") as f:
        f.seek(since)
        for line in f.read().decode(errors="replace").splitlines():
            match = re.match(r"\S+ \S+ (WARNING|ERROR) \S+ (\w+ [\w-]+)", line)
            if match:
                counts[match.group(2)] = counts.get(match.group(2), 0) + 1
    return counts


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault(fault_lab: FaultLab, fault: Fault) -> None:
    fl = fault_lab
    cold = fl.cold(fault.host, 3)
    warm = fl.warm[fault.host]
    warming = [fl.start("skopeo-warm", ref, img) for ref, img in warm]  # (again, if need be)
    assert [pull.finish() for pull in warming] == ["ok"] * len(warm)
    digests = [b.digest for _, img in cold for b in img.layers]
    baseline = Fds.of(fl.pid)
    started = time.monotonic()
    kinds = ["skopeo-cold", "skopeo-cold", "podman-cold", "skopeo-warm", "podman-warm"]
    refs = [*cold, warm[0], warm[1]]
    logged = fl.lab.regcache_log.stat().st_size
    pulls: list[Pull] = []
    try:
        with dns_watch(fl, fault.host) as watched:  # while the fault lasts
            try:
                if not fault.during:
                    fault.inject(fl, digests)
                pulls = [fl.start(k, ref, img) for k, (ref, img) in zip(kinds, refs, strict=True)]
                if fault.during:
                    fault.inject(fl, digests)
            finally:
                for pull in pulls:
                    pull.finish()
    finally:
        fault.heal(fl)
    after = _recovered(fl, [(k.split("-")[0] + "-again", ref, img)
                            for k, (ref, img) in zip(kinds, refs, strict=True)])  # fmt: skip
    recovered = [pull.result for pull in after]
    asked = json.loads(watched.read_text())
    verify = regcache_cli(fl.lab, "verify", "--json")
    fds = _settled(fl, baseline)
    row = {
        "pulls": {p.kind + f" {p.ref}": p.result for p in pulls},
        "after heal": {p.ref: p.result for p in after},
        "dns": asked,
        "seconds": round(time.monotonic() - started, 1),
        "verify": verify.returncode,
        "fds": [baseline.files, fds.files, fds.clients],
        "log": _warnings(fl.lab.regcache_log, logged),
    }
    fl.report[fault.name] = row
    print(json.dumps({fault.name: row}))

    failed = {"cut", "error 500", "error 502", "error 503", "error 504"}
    # Failing open is the designed answer to regcache being unhealthy, and only then.
    opened = {"failed open"} if row["log"].get("health unhealthy") else set()
    for pull in pulls:
        expected = fault.warm if pull.kind.endswith("warm") else fault.cold
        allowed = {"ok": {"ok"}, "fail": failed, "any": failed | {"ok"}}[expected] | opened
        assert pull.result in allowed, f"{pull.kind} {pull.ref}: {pull.result}; {row}"
    assert recovered == ["ok"] * len(after), row
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert store_violations(fl.lab.state_dir, reconciled=True) == []
    assert list((fl.lab.state_dir / "tmp").glob("fill-*")) == []
    assert fds.clients == 0, row
    if fault.heal not in (_restart, _crash_restart):  # a new process: not the baseline's
        assert fds.files <= baseline.files, row
    assert asked["late"] == [] and asked["answered"] == asked["asked"] > 0, asked
