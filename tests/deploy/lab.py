"""A lab of booted machines: Debian bookworm roots under `systemd-nspawn --boot`, with
systemd as their PID 1, each in a network namespace this module creates, on one bridge
with the controller (where Ansible and SSH run).

The root is built once with debootstrap and kept under `var/lab/` (keyed by its package
list); each machine boots a copy of its own. Nothing here touches the machine's own
network: the bridge, the veth pairs and the addresses all live in the lab's namespaces,
and every namespace, process and copy is removed on the way out, also after a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.s3engine import stop

REPO = Path(__file__).resolve().parent.parent.parent
CACHE = REPO / "var" / "lab"
MIRROR = os.environ.get("REGCACHE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# systemd and D-Bus to boot; SSH for Ansible; what the roles would otherwise install
# (the lab's machines have no route to a Debian mirror); dig and curl for the build host...
PACKAGES = (
    "systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,python3,python3-venv,"
    "ca-certificates,iproute2,dnsutils,curl"
)
# ...and skopeo, installed by apt afterwards (debootstrap cannot order its dependencies).
LATER = ("skopeo",)
# Packages only some machines have: kept as .deb files in the root (`DEBS`), installed
# into a machine's copy before it boots (`Lab.boot(..., install=...)`).
OPTIONAL = ("systemd-resolved",)
DEBS = "opt/lab-debs"
SUBNET = "10.231.0"
CONTROLLER = f"{SUBNET}.1"
BOOT_TIMEOUT_S = 120.0
POWEROFF_TIMEOUT_S = 60.0


def run(
    argv: list[str], timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(
            f"{argv} exited {out.returncode}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    return out


def debian_root() -> Path:
    """The cached bookworm root, built now if missing (about a minute)."""
    key = hashlib.sha256(f"bookworm {PACKAGES} {LATER} {OPTIONAL}".encode()).hexdigest()[:12]
    root = CACHE / f"bookworm-{key}"
    if root.is_dir():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f".building-{secrets.token_hex(3)}"
    try:
        run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
             str(building), MIRROR], timeout=900)  # fmt: skip
        # Trust what this machine trusts (a TLS-inspecting proxy's CA, say).
        local_cas = Path("/usr/local/share/ca-certificates")
        if local_cas.is_dir():
            shutil.copytree(local_cas, building / "usr/local/share/ca-certificates",
                            dirs_exist_ok=True)  # fmt: skip
            run(["chroot", str(building), "update-ca-certificates"])
        run(["chroot", str(building), "apt-get", "install", "-y", "-qq",
             "--no-install-recommends", *LATER], timeout=900)  # fmt: skip
        (building / DEBS).mkdir(parents=True)
        run(["chroot", str(building), "sh", "-c", f"cd /{DEBS} && apt-get download -qq "
             + " ".join(OPTIONAL)])  # fmt: skip
        run(["chroot", str(building), "apt-get", "clean"])
        building.rename(root)  # whole or not at all: a half-built root is never reused
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return root


class Lab:
    """The controller's namespace with a bridge; machines join it (`boot`)."""

    def __init__(self, workdir: Path) -> None:
        self.tag = secrets.token_hex(2)
        self.ns = f"rclab-{self.tag}"
        self.workdir = workdir
        self.key = workdir / "id_ed25519"
        self.machines: list[Machine] = []
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        try:
            self._namespace(self.ns)
            self.ip("link", "add", "br0", "type", "bridge")
            self.ip("addr", "add", f"{CONTROLLER}/24", "dev", "br0")
            self.ip("link", "set", "br0", "up")
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # Each step on its own: one that fails must not leave the rest behind.
        with contextlib.ExitStack() as steps:
            for ns in self._namespaces:
                steps.callback(run, ["ip", "netns", "del", ns], check=False)
            for proc in self._procs:
                steps.callback(stop, proc, timeout=10)
            for machine in self.machines:
                steps.callback(machine.poweroff)

    def _namespace(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def ip(self, *args: str, ns: str | None = None) -> None:
        run(["ip", "-n", ns or self.ns, *args])

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` run in the controller's namespace (it reaches the machines)."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def start(self, log: Path, *cmd: str, ns: str | None = None) -> subprocess.Popen[bytes]:
        """A server of the test's own, in the controller's namespace or `ns` (stopped on
        the way out)."""
        argv = ["ip", "netns", "exec", ns, *cmd] if ns else self.argv(*cmd)
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self._procs.append(proc)
        return proc

    def host(self, name: str, host: int) -> tuple[str, str]:
        """A namespace of its own at `SUBNET.host` on the bridge: (namespace, address).
        Its side of the link is `vi-<name>` (to shape what it sends, say)."""
        ns = f"rclab-{self.tag}-{name}"
        self._namespace(ns)
        outer, inner = f"ve-{name}"[:15], f"vi-{name}"[:15]
        self.ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        self.ip("link", "set", outer, "master", "br0", "up")
        address = f"{SUBNET}.{host}"
        self.ip("addr", "add", f"{address}/24", "dev", inner, ns=ns)
        self.ip("link", "set", inner, "up", ns=ns)
        return ns, address

    def boot(self, name: str, host: int, install: tuple[str, ...] = ()) -> Machine:
        """A machine at `SUBNET.host`, booted to multi-user.target, reachable by SSH, with
        the `OPTIONAL` packages named in `install`."""
        ns, address = self.host(name, host)
        machine = Machine(name, address, ns, self.workdir / name)
        self.machines.append(machine)
        machine.boot(debian_root(), self.key.with_suffix(".pub"), install)
        return machine

    def ssh(
        self, machine: Machine, command: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`command` run by root on `machine` over SSH, as an operator would."""
        return run(self.argv("ssh", *self.ssh_options(), f"root@{machine.address}", command),
                   timeout=timeout, check=False)  # fmt: skip

    def ssh_background(self, machine: Machine, command: str, log: Path) -> subprocess.Popen[bytes]:
        """`command` over SSH, not waited for (stopped on the way out if still running)."""
        return self.start(log, "ssh", *self.ssh_options(), f"root@{machine.address}", command)

    def ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]  # fmt: skip


class Machine:
    def __init__(self, name: str, address: str, ns: str, workdir: Path) -> None:
        self.name = name
        self.address = address
        self.ns = ns
        self.root = workdir / "root"
        self.log = workdir / "console.log"
        self.boot_s = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    def boot(self, image: Path, key: Path, install: tuple[str, ...] = ()) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--reflink=auto", str(image), str(self.root)])
        for name in install:
            (deb,) = (self.root / DEBS).glob(f"{name}_*.deb")
            run(["chroot", str(self.root), "dpkg", "--install", f"/{DEBS}/{deb.name}"])
        ssh = self.root / "root/.ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(key, ssh / "authorized_keys")
        (self.root / "etc/hostname").write_text(f"{self.name}\n")
        started = time.monotonic()
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
                 "-D", str(self.root), "-M", self.name,
                 f"--network-namespace-path=/run/netns/{self.ns}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = started + BOOT_TIMEOUT_S
        while True:  # bounded: the leader appears, then systemd reports its state
            leader = self._leader()
            if leader is not None:
                state = self.enter("systemctl", "is-system-running", "--wait", check=False,
                                   timeout=max(1.0, deadline - time.monotonic()))  # fmt: skip
                if state.stdout.strip() in ("running", "degraded"):
                    break
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not boot: {self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        self.boot_s = time.monotonic() - started

    def _leader(self) -> int | None:
        """The container's PID 1, seen from here: the child of nspawn that lives in a PID
        namespace of its own (not the short-lived helper nspawn forks first)."""
        if self._proc is None:
            return None
        ours = os.readlink("/proc/self/ns/pid")
        try:
            children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text()
            for child in children.split():
                if os.readlink(f"/proc/{child}/ns/pid") != ours:
                    return int(child)
        except OSError:  # gone meanwhile: asked again
            return None
        return None

    def enter(
        self, *cmd: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`cmd` inside the machine (all its namespaces), for the test's own checks."""
        leader = self._leader()
        if leader is None:
            raise AssertionError(f"{self.name} is not running")
        return run(["nsenter", "-t", str(leader), "-a", "--", *cmd], timeout=timeout, check=check)

    def poweroff(self) -> None:
        """A clean shutdown (nspawn turns SIGTERM into one), SIGKILL if it hangs; the copy
        of the root goes too."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop(proc, timeout=POWEROFF_TIMEOUT_S)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)


@contextlib.contextmanager
def lab(workdir: Path) -> Iterator[Lab]:
    with Lab(workdir) as it:
        yield it
