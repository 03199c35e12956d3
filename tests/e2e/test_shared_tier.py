"""Two gateways sharing one bucket and naming each other as peers (issue #19), on a real
S3 endpoint (moto's server, or SeaweedFS with REGCACHE_S3_ENGINE=seaweedfs) and real
upstream registries: cold pulls spread over both fetch each blob from upstream once; a
pull through one gateway streams the blobs the other owns from it; a gateway whose disk
is empty serves from the bucket (or, with `redirect`, sends its clients there); an image
pushed to one gateway's local registry is pulled through the other; private content
probed through both at once reaches no stranger; two gateways moving one mirror tag at
once lose nothing; the owner killed mid-fill leaves no partial object and the other
completes the pull; with the bucket gone both keep serving and `/readyz` says degraded.

Gateway A is the lab's regcache (127.0.0.2); gateway B a second `regcache serve` at
127.0.0.22 with its own store and the same CA, as an operator would deploy a second
gateway. Both run in the lab's network namespace (its upstreams listen on loopback
addresses); B's build hosts are a second name for that namespace (`ip netns attach`)
whose resolv.conf points at B, so their pulls go through B's DNS interception."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.oci.digest import Digest
from appliance.upstream.peers import rendezvous
from tests.e2e.conftest import _missing
from tests.e2e.images import Blob, Image, image, layer, write_layout
from tests.e2e.lab import (
    ADMIN_PORT,
    ALICE_PASSWORD,
    DAVE_PASSWORD,
    REGCACHE_IP,
    Lab,
    _wait_port,
    lab,
)
from tests.e2e.netns import attached
from tests.harness import REPO
from tests.s3engine import KEY_ID, SECRET, Launch, launch

MiB = 1 << 20
S3_IP, S3_PORT = "127.0.0.30", 9000
B_IP = "127.0.0.22"
A, B = f"{REGCACHE_IP}:443", f"{B_IP}:443"  # the peers, as each names the other
MIRRORED = "ghcr.io/org/moving:1"
HUB = "registry-1.docker.io"
ALICE, DAVE = f"alice:{ALICE_PASSWORD}", f"dave:{DAVE_PASSWORD}"
LOCAL = "registry.build.internal"
BUCKET = "regcache-shared"
PYTHON = str(REPO / ".venv" / "bin" / "python")
REGCACHE = str(REPO / ".venv" / "bin" / "regcache")


@dataclass
class Pair:
    a: Lab
    b_ns: str
    """The name B's build hosts run under: the lab's namespace, B's resolver."""
    b_config: Path
    b_state: Path
    b_log: Path
    b_proc: subprocess.Popen[bytes] | None = None
    s3_launch: Launch | None = None
    s3_proc: subprocess.Popen[bytes] | None = None

    def start_b(self) -> None:
        self.b_proc = self.a.ns.start(REGCACHE, "serve", "--config", str(self.b_config),
                                      log=self.b_log, cwd=REPO)  # fmt: skip
        _wait_port(self.a.ns, B_IP, 443, self.b_proc, self.b_log)

    def peered(self) -> None:
        """Wait (bounded) until each gateway has found the other up (checked every second)."""
        deadline = time.monotonic() + 30
        while any(d.startswith("peer ") for ip in (REGCACHE_IP, B_IP)
                  for d in self.readyz(ip)[1]["degraded"]):  # fmt: skip
            assert time.monotonic() < deadline, "the gateways did not find each other up"
            time.sleep(0.2)

    def stop_b(self) -> None:
        assert self.b_proc is not None
        self.a.ns.stop(self.b_proc)

    def pull(self, gateway: str, ref: str, name: str) -> subprocess.CompletedProcess[str]:
        dest = self.a.tmp / f"pull-{gateway}-{name}"
        shutil.rmtree(dest, ignore_errors=True)
        argv = self.a.pull_argv(ref, dest)
        if gateway == "b":  # the same skopeo, under B's resolver
            argv[3] = self.b_ns
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        shutil.rmtree(dest, ignore_errors=True)
        return out

    def s3(self, code: str) -> Any:
        """Run boto3 `code` against the bucket inside the namespace; its printed JSON."""
        script = (
            "import boto3, json\n"
            f"c = boto3.client('s3', endpoint_url='http://{S3_IP}:{S3_PORT}', "
            f"region_name='us-east-1', aws_access_key_id='{KEY_ID}', "
            f"aws_secret_access_key='{SECRET}')\n{code}\n"
        )
        out = self.a.ns.run(PYTHON, "-c", script, timeout=60)
        return json.loads(out.stdout) if out.stdout.strip() else None

    def objects(self) -> dict[str, int]:
        return dict(self.s3(
            f"print(json.dumps([(o['Key'], o['Size']) for o in c.list_objects_v2("
            f"Bucket='{BUCKET}', Prefix='blobs/').get('Contents', [])]))"
        ))  # fmt: skip

    def uploads(self) -> list[str]:
        return list(self.s3(
            f"print(json.dumps([u['Key'] for u in c.list_multipart_uploads("
            f"Bucket='{BUCKET}').get('Uploads', [])]))"
        ))  # fmt: skip

    def metric(self, ip: str, name: str, peer: str | None = None) -> float:
        text = self.a.ns.run("curl", "-sf", f"http://{ip}:{ADMIN_PORT}/metrics").stdout
        labelled = name if peer is None else f'{name}{{peer="{peer}"}}'
        for line in text.splitlines():
            if line.startswith(labelled + " "):
                return float(line.split()[1])
        return 0.0

    def report(self, test: str) -> None:
        """The figures the note quotes: upstream blob GETs and each gateway's tier counts."""
        names = ("reads", "read_bytes", "uploads", "upload_bytes", "waits", "takeovers")
        line = {gw: {n: int(self.metric(ip, f"regcache_shared_{n}_total")) for n in names}
                for gw, ip in (("a", REGCACHE_IP), ("b", B_IP))}  # fmt: skip
        gets = sum(blob_gets(self.a, "ghcr.io").values()) + sum(
            blob_gets(self.a, "quay.io").values()
        )
        relays = {gw: int(self.metric(ip, "regcache_peer_relays_total", other))
                  for gw, ip, other in (("a", REGCACHE_IP, B), ("b", B_IP, A))}  # fmt: skip
        print(
            f"\n{test}: upstream blob GETs so far {gets}; tier {json.dumps(line)};"
            f" relays to the owner {json.dumps(relays)}"
        )

    def readyz(self, ip: str) -> tuple[int, dict[str, Any]]:
        out = self.a.ns.run(
            "curl", "-s", "-w", "\n%{http_code}", f"http://{ip}:{ADMIN_PORT}/readyz"
        )
        body, code = out.stdout.rsplit("\n", 1)
        return int(code), json.loads(body)


def blob_gets(the_lab: Lab, host: str) -> Counter[str]:
    """Blob GETs upstream answered with bytes, by digest (its own access log)."""
    return Counter(
        path.rsplit("/", 1)[1]
        for method, path, status, _ in the_lab.registries[host].requests()
        if method == "GET" and "/blobs/sha256:" in path and status == 200
    )


def _s3_section() -> dict[str, Any]:
    return {
        "endpoint": f"http://{S3_IP}:{S3_PORT}", "bucket": BUCKET, "force_path_style": True,
        "lease": "5s",
        "credentials": {"access_key_id": {"env": "REGCACHE_TEST_S3_KEY_ID"},
                        "secret_access_key": {"env": "REGCACHE_TEST_S3_SECRET"}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("shared")
    with contextlib.ExitStack() as stack:
        if not os.environ.get("REGCACHE_TEST_KEEP"):
            stack.callback(shutil.rmtree, tmp, True)  # stores and logs, also when a test fails
        with _pair(tmp) as made:
            yield made


@contextlib.contextmanager
def _pair(tmp: Path) -> Iterator[Pair]:
    os.environ["REGCACHE_TEST_S3_KEY_ID"], os.environ["REGCACHE_TEST_S3_SECRET"] = KEY_ID, SECRET

    def shared(config: dict[str, Any]) -> None:
        config["store"] = {"s3": _s3_section()}
        config["peers"] = {"members": [A, B], "probe_interval_s": 1}
        config["tls"]["permitted_domains"].append(LOCAL)  # the CA may sign for it
        config["local"] = {"hosts": [LOCAL], "access": [{"repositories": ["*"], "read": ["*"],
                                                         "write": ["*"]}]}  # fmt: skip
        config["mirror"] = {"defaults": {"interval": "1d", "keep_backups": 3},
                            "entries": [{"source": MIRRORED}]}  # fmt: skip

    s3 = launch(S3_IP, S3_PORT, tmp / "s3")
    with contextlib.ExitStack() as stack:
        stack.callback(s3.tidy)  # what it leaves in /tmp, once the lab has stopped it
        a = stack.enter_context(lab(tmp, shared))
        s3_log = tmp / f"{s3.engine}.log"
        s3_proc = a.ns.start(*s3.argv, log=s3_log)
        _wait_port(a.ns, S3_IP, S3_PORT, s3_proc, s3_log)
        made = Pair(a, "", tmp / "b.yaml", tmp / "state-b", tmp / "regcache-b.log",
                    s3_launch=s3, s3_proc=s3_proc)  # fmt: skip
        made.s3(f"c.create_bucket(Bucket='{BUCKET}')")
        a.restart_regcache()  # its tier now finds the bucket at once
        assert a.config_path is not None
        config = yaml.safe_load(a.config_path.read_text())
        config["state_dir"] = str(made.b_state)
        config["listen"] = {"dns": [f"{B_IP}:53"], "https": [f"{B_IP}:443"]}
        config["appliance"] = {"ipv4": B_IP}
        config["admin"] = {"listen": [f"{B_IP}:{ADMIN_PORT}"]}
        config["audit"] = {"path": str(tmp / "audit-b.jsonl")}
        made.b_config.write_text(yaml.safe_dump(config))
        made.b_state.mkdir(mode=0o700)
        shutil.copytree(a.state_dir / "ca", made.b_state / "ca")  # one CA for the network
        made.start_b()
        assert made.b_proc is not None
        with attached(made.b_proc.pid, B_IP, f"regcache-test-b{made.b_proc.pid}") as name:
            made.b_ns = name
            made.peered()
            try:
                yield made
            finally:
                os.environ.pop("REGCACHE_TEST_S3_KEY_ID", None)
                os.environ.pop("REGCACHE_TEST_S3_SECRET", None)


def published(pair: Pair, host: str, repository: str, sizes: list[int]) -> Image:
    img = image([layer(size, f"{repository}-{i}") for i, size in enumerate(sizes)])
    pair.a.push_upstream(host, repository, "v1", img)
    return img


def owned_by(owner: str, size: int, name: str) -> Blob:
    """A layer of `size` whose digest `owner` owns (the gateways' rendezvous hashing)."""
    for seed in range(64):
        made = layer(size, f"{name}-{seed}")
        if rendezvous([A, B], Digest.parse(made.digest)) == owner:
            return made
    raise AssertionError("no layer of 64 tried is owned by " + owner)


def test_cold_pulls_over_two_gateways_fetch_each_blob_once(pair: Pair) -> None:
    img = published(pair, "ghcr.io", "org/shared", [6 * MiB, 3 * MiB, 700 * 1024])
    ref = "ghcr.io/org/shared:v1"
    results: list[subprocess.CompletedProcess[str]] = []

    def one(gateway: str, i: int) -> None:
        results.append(pair.pull(gateway, ref, f"cold-{i}"))

    threads = [threading.Thread(target=one, args=("ab"[i % 2], i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    gets = blob_gets(pair.a, "ghcr.io")
    wanted = {b.digest for b in img.blobs}
    assert {d: gets[d] for d in wanted} == dict.fromkeys(wanted, 1)  # each blob once
    names = {f"blobs/sha256/{blob.digest.split(':')[1]}": len(blob.data) for blob in img.blobs}
    deadline = time.monotonic() + 30
    while not names.keys() <= (objects := pair.objects()).keys() or pair.uploads():
        assert time.monotonic() < deadline, "uploads not completed"  # just after each fill
        time.sleep(0.2)
    assert {name: objects[name] for name in names} == names

    def uploads_counted() -> float:
        return sum(pair.metric(ip, "regcache_shared_uploads_total") for ip in (REGCACHE_IP, B_IP))

    for _ in range(50):  # counted as the upload's last call returns: a moment after
        if uploads_counted() == len(wanted):
            break
        time.sleep(0.1)
    assert uploads_counted() == len(wanted)  # one upload per blob, over both gateways
    for gateway in "ab":  # warm on both: nothing more from upstream
        assert pair.pull(gateway, ref, f"warm-{gateway}").returncode == 0
    assert blob_gets(pair.a, "ghcr.io") == gets
    relays = pair.metric(REGCACHE_IP, "regcache_peer_relays_total", B) + pair.metric(
        B_IP, "regcache_peer_relays_total", A
    )
    assert relays >= 1  # the non-owners streamed blobs from their owners
    pair.report("cold-8")


def test_a_pull_through_one_gateway_streams_what_the_other_owns_from_it(pair: Pair) -> None:
    ours, theirs = owned_by(B, 4 * MiB, "b-owns"), owned_by(A, 4 * MiB, "a-owns")
    img = image([ours, theirs])
    pair.a.push_upstream("ghcr.io", "org/owned", "v1", img)
    relayed_before = pair.metric(B_IP, "regcache_peer_relays_total", A)
    audit = pair.a.state_dir / "audit.jsonl"
    seen_before = len(audit.read_text().splitlines())
    out = pair.pull("b", "ghcr.io/org/owned:v1", "owned")
    assert out.returncode == 0, out.stderr
    gets = blob_gets(pair.a, "ghcr.io")
    assert {gets[blob.digest] for blob in img.blobs} == {1}
    # A's blobs (the image config may be one too) were asked of A: A's audit log has B's
    # requests for them, and nothing else from B.
    a_owns = {b.digest for b in img.blobs if rendezvous([A, B], Digest.parse(b.digest)) == A}
    assert theirs.digest in a_owns and ours.digest not in a_owns
    assert pair.metric(B_IP, "regcache_peer_relays_total", A) - relayed_before == len(a_owns)
    entries = [json.loads(line) for line in audit.read_text().splitlines()[seen_before:]]
    from_b = [e for e in entries if e.get("client") == B_IP]
    assert sorted(e["reference"] for e in from_b) == sorted(a_owns), from_b
    pair.report("owned")


def restart_b_empty(pair: Pair) -> None:
    """B restarted with nothing on its disk (store and index gone)."""
    pair.stop_b()
    for part in ("blobs", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        target = pair.b_state / part
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    pair.start_b()


def test_a_gateway_with_an_empty_disk_serves_from_the_bucket(pair: Pair) -> None:
    img = published(pair, "ghcr.io", "org/refill", [5 * MiB, 2 * MiB])
    ref = "ghcr.io/org/refill:v1"
    assert pair.pull("a", ref, "refill-a").returncode == 0
    before = blob_gets(pair.a, "ghcr.io")
    restart_b_empty(pair)
    read_before = pair.metric(B_IP, "regcache_shared_read_bytes_total")
    out = pair.pull("b", ref, "refill-b")
    assert out.returncode == 0, out.stderr
    assert blob_gets(pair.a, "ghcr.io") == before  # not one blob GET more upstream
    layers = sum(len(b.data) for b in img.blobs)
    assert pair.metric(B_IP, "regcache_shared_read_bytes_total") - read_before >= layers
    pair.report("empty-disk")


def test_with_redirect_clients_fetch_what_the_bucket_holds_from_it(pair: Pair) -> None:
    img = published(pair, "ghcr.io", "org/redirected", [3 * MiB, 1 * MiB])
    ref = "ghcr.io/org/redirected:v1"
    assert pair.pull("a", ref, "redirect-a").returncode == 0
    names = {f"blobs/sha256/{blob.digest.split(':')[1]}" for blob in img.blobs}
    deadline = time.monotonic() + 30
    while not names <= pair.objects().keys():
        assert time.monotonic() < deadline, "uploads not completed"
        time.sleep(0.2)
    before = blob_gets(pair.a, "ghcr.io")
    plain = pair.b_config.read_text()
    config = yaml.safe_load(plain)
    config["store"]["s3"]["redirect"] = "5m"
    pair.b_config.write_text(yaml.safe_dump(config))
    try:
        restart_b_empty(pair)
        out = pair.pull("b", ref, "redirect-b")  # skopeo follows each 307 to the bucket
        assert out.returncode == 0, out.stderr
        assert pair.metric(B_IP, "regcache_shared_redirects_total") == len(img.blobs)
        assert pair.metric(B_IP, "regcache_shared_read_bytes_total") == 0  # none through B
        assert blob_gets(pair.a, "ghcr.io") == before
        for blob in img.blobs:  # nor kept on B's disk
            assert not (pair.b_state / "blobs" / "sha256" / blob.digest[7:9]
                        / blob.digest[7:]).exists()  # fmt: skip
    finally:
        pair.b_config.write_text(plain)
        pair.stop_b()
        pair.start_b()
    pair.report("redirect")


def test_an_image_pushed_to_one_gateways_local_registry_is_pulled_from_the_other(
    pair: Pair,
) -> None:
    img = image([layer(6 * MiB, "local-shared"), layer(300 * 1024, "local-small")])
    layout = write_layout(pair.a.tmp / "local-src", "v1", img)
    out = pair.a.skopeo("copy", "--all", "--preserve-digests", "--dest-cert-dir",
                        str(pair.a.ca_dir), f"oci:{layout}:v1",
                        f"docker://{LOCAL}/team/app:v1")  # fmt: skip
    assert out.returncode == 0, out.stderr
    pushed = time.monotonic()
    dest = pair.a.tmp / "local-from-b"
    argv = pair.a.pull_argv(f"{LOCAL}/team/app:v1", dest)
    argv[3] = pair.b_ns  # through B
    deadline = time.monotonic() + 30
    while (got := subprocess.run(argv, capture_output=True, text=True, check=False)).returncode:
        assert time.monotonic() < deadline, got.stderr  # B converges every 5 s
        time.sleep(0.5)
    print(f"\nB served the image pushed to A {time.monotonic() - pushed:.1f} s after the push")
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == img.top.digest
    for blob in img.blobs:  # B holds its own verified copy of each blob
        path = dest / "blobs" / "sha256" / blob.digest[7:]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == blob.digest[7:]
    shutil.rmtree(dest, ignore_errors=True)


def test_private_content_through_peers_reaches_no_stranger(pair: Pair) -> None:
    """The leak probe of tests/e2e/test_private.py through both gateways at once: alice's
    cold private blobs are filled by their owners and relayed to the other gateway with
    each client's own credentials; strangers ask for them there and under other names."""
    repositories = {}
    for i in range(3):
        img = image([layer(2 * MiB, f"peer-r{i}a"), layer(300_000, f"peer-r{i}b")])
        pair.a.push(HUB, f"private/peers{i}", "v1", img, creds=ALICE)
        repositories[f"private/peers{i}"] = [
            [b.digest, b.digest[7:],
             "manifests" if b.media_type.endswith("manifest.v1+json") else "blobs"]
            for b in (img.top, *img.blobs)
        ]  # fmt: skip
    pair.a.push(HUB, "library/peerpub", "v1", image([layer(1000, "peerpub")]))
    pair.a.push(HUB, "dave/peers", "v1", image([layer(1000, "davepeers")]), creds=DAVE)
    relays = sum(pair.metric(ip, "regcache_peer_relays_total", other)
                 for ip, other in ((REGCACHE_IP, B), (B_IP, A)))  # fmt: skip
    runs = []
    for gateway, seed in (("a", 1), ("b", 2)):
        spec = pair.a.tmp / f"leakcheck-peers-{gateway}.json"
        spec.write_text(json.dumps({
            "ca": str(pair.a.ca_dir / "ca.crt"), "host": HUB, "repositories": repositories,
            "elsewhere": [[HUB, "library/peerpub"], [HUB, "dave/peers"]], "alice": ALICE,
            "dave": DAVE, "requests": 300, "seed": seed,
        }))  # fmt: skip
        argv = pair.a.ns.argv(PYTHON, "-m", "tests.e2e.leakcheck", str(spec))
        if gateway == "b":
            argv[3] = pair.b_ns
        runs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO))  # fmt: skip
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        summary = json.loads(out)
        assert summary["leaks"] == [] and summary["errors"] == [] and summary["wrong_bytes"] == []
        assert summary["ok"] > 20 and summary["refused"] > 100, summary  # both kinds happened
    after = sum(pair.metric(ip, "regcache_peer_relays_total", other)
                for ip, other in ((REGCACHE_IP, B), (B_IP, A)))  # fmt: skip
    assert after > relays  # some of it crossed between the gateways


def mirror(pair: Pair, gateway: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`regcache mirror …` on gateway A or B (its config, its index, the shared bucket,
    which is reached inside the namespace)."""
    config = pair.a.config_path if gateway == "a" else pair.b_config
    return subprocess.run(pair.a.ns.argv(REGCACHE, "mirror", *args, "--config", str(config)),
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def history(pair: Pair, gateway: str) -> list[tuple[str, str]]:
    out = mirror(pair, gateway, "history", MIRRORED, "--json")
    assert out.returncode == 0, out.stderr
    return [(m["reason"], m["new"]) for m in json.loads(out.stdout)["moves"]]


def serving(pair: Pair, gateway: str) -> str | None:
    out = mirror(pair, gateway, "status", "--json")
    entry = next(e for e in json.loads(out.stdout)["entries"] if e["source"] == MIRRORED)
    return next((t["serving"] for t in entry["tags"] if t["tag"] == "1"), None)


def test_two_gateways_moving_one_mirror_tag_at_once_lose_nothing(pair: Pair) -> None:
    images = [image([layer(150 * 1024, f"moving-{i}")]) for i in range(3)]
    for img in images:  # A's syncs move the tag three times: X, Y, Z
        pair.a.push_upstream("ghcr.io", "org/moving", "1", img)
        out = mirror(pair, "a", "sync", MIRRORED, "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["entries"][0]["tags"][0]["moved"]
    x, y, z = (img.top.digest for img in images)
    deadline = time.monotonic() + 30
    while serving(pair, "b") != z:  # B applies A's moves (every 5 s)
        assert time.monotonic() < deadline, "B did not take A's moves"
        time.sleep(0.5)
    # At once, A rolls back to X and B to Y: both expect Z.
    argv = [pair.a.ns.argv(REGCACHE, "mirror", "rollback", MIRRORED, "--to", digest,
                           "--config", str(config))
            for digest, config in ((x, pair.a.config_path), (y, pair.b_config))]  # fmt: skip
    runs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for a in argv]  # fmt: skip
    results = [(run.wait(120), run.communicate()) for run in runs]
    codes = [code for code, _ in results]
    assert sorted(codes) == [0, 2], results  # one wins; the other is told, nothing is lost
    loser = codes.index(2)
    assert "moved meanwhile" in results[loser][1][1]
    winner_digest, loser_digest = (x, y) if loser == 1 else (y, x)
    retried = mirror(pair, "ab"[loser], "rollback", MIRRORED, "--to", loser_digest)
    assert retried.returncode == 0, retried.stderr  # asked again, on what is served now
    expected = [("sync", x), ("sync", y), ("sync", z), ("rollback", winner_digest),
                ("rollback", loser_digest)]  # fmt: skip
    assert history(pair, "a") == history(pair, "b") == expected
    deadline = time.monotonic() + 30
    while {serving(pair, "a"), serving(pair, "b")} != {loser_digest}:
        assert time.monotonic() < deadline, "the gateways disagree on what the tag serves"
        time.sleep(0.5)
    for gateway in "ab":  # and they serve it, whichever gateway's store had it
        out = pair.pull(gateway, f"{MIRRORED}", f"moving-{gateway}")
        assert out.returncode == 0, out.stderr


def test_the_filler_killed_mid_fill_leaves_nothing_and_the_other_completes(pair: Pair) -> None:
    # quay.io's blobs come from its CDN twin at 16 MiB/s: a 48 MiB layer takes 3 s. A
    # owns it (were it B's, A would relay the pull to B, and killing A would stop no fill).
    big = owned_by(A, 48 * MiB, "big")
    img = image([big])
    pair.a.push_upstream("quay.io", "org/big", "v1", img)
    name = f"blobs/sha256/{big.digest.split(':')[1]}"
    puller = subprocess.Popen(pair.a.pull_argv("quay.io/org/big:v1", pair.a.tmp / "pull-killed"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not pair.uploads():  # a part is in the bucket: mid-fill
            assert time.monotonic() < deadline, "no upload started"
            time.sleep(0.1)
        assert pair.a.regcache_proc is not None
        pair.a.regcache_proc.kill()
        pair.a.regcache_proc.wait(10)
    finally:
        puller.wait(120)
    try:
        _b_completes_what_a_left(pair, big, name)
    finally:  # the next test needs both gateways
        pair.a.start_regcache()
    pair.report("kill-9 (A's counts anew since its restart)")


def _b_completes_what_a_left(pair: Pair, big: Blob, name: str) -> None:
    assert name not in pair.objects()  # no partial object is visible
    deadline = time.monotonic() + 30
    while not any(d.startswith(f"peer {A}: down") for d in pair.readyz(B_IP)[1]["degraded"]):
        assert time.monotonic() < deadline, "B did not find A down"  # checked every second
        time.sleep(0.2)
    started = time.monotonic()
    out = pair.pull("b", "quay.io/org/big:v1", "after-kill")
    assert out.returncode == 0, out.stderr
    waited = time.monotonic() - started
    deadline = time.monotonic() + 30
    while name not in pair.objects():  # completed once B's fill verified the last byte
        assert time.monotonic() < deadline, "B's upload was not completed"
        time.sleep(0.2)
    assert pair.objects()[name] == len(big.data)
    digest = pair.s3(
        f"import hashlib\nb = c.get_object(Bucket='{BUCKET}', Key='{name}')['Body'].read()\n"
        "print(json.dumps('sha256:' + hashlib.sha256(b).hexdigest()))"
    )
    assert digest == big.digest == "sha256:" + hashlib.sha256(big.data).hexdigest()
    assert pair.metric(B_IP, "regcache_shared_takeovers_total") >= 1
    print(f"B completed the pull {waited:.1f} s after A was killed (lease 5 s)")


def test_without_the_bucket_both_keep_serving_and_say_degraded(pair: Pair) -> None:
    warm = "ghcr.io/org/shared:v1"  # pulled through both by the first test
    img = published(pair, "ghcr.io", "org/after", [2 * MiB])
    assert pair.s3_launch is not None and pair.s3_proc is not None
    pair.a.ns.stop(pair.s3_proc, timeout=pair.s3_launch.stop_s)
    for gateway, ip in (("a", REGCACHE_IP), ("b", B_IP)):
        assert pair.pull(gateway, warm, f"down-warm-{gateway}").returncode == 0
        out = pair.pull(gateway, "ghcr.io/org/after:v1", f"down-cold-{gateway}")
        assert out.returncode == 0, out.stderr
        status, body = pair.readyz(ip)
        assert status == 200 and body["ready"] is True
        assert any("shared tier" in d for d in body["degraded"]), body
    gets = blob_gets(pair.a, "ghcr.io")
    assert gets[img.blobs[0].digest] >= 1
