"""The managed mirror end to end: Docker Hub's twin behind a front that sends its
rate-limit headers, build hosts pulling by their usual names through the DNS
interception, `regcache mirror …` run as an operator runs it. Upstream request counts
per case go to `artifacts/mirror-requests.json` (the issue note quotes them)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import Image, image, index, layer
from tests.e2e.lab import (
    ADMIN_PORT,
    ALICE_PASSWORD,
    DAVE_PASSWORD,
    REGCACHE_IP,
    UPSTREAMS,
    Lab,
    lab,
)
from tests.e2e.test_private import status_and_body
from tests.e2e.test_pull import pulled_blobs, stored
from tests.harness import REPO

HUB = "registry-1.docker.io"
ALICE = f"alice:{ALICE_PASSWORD}"
DAVE = f"dave:{DAVE_PASSWORD}"
KiB, MiB = 1 << 10, 1 << 20
MIN_BUDGET = 10
ENTRIES = {
    "pinned": "docker.io/library/mirrored:3.20",
    "moving": "docker.io/library/moving:1",
    "scheduled": "docker.io/library/scheduled:1",
    "budget": "docker.io/library/budget:1",
    "gone": "docker.io/library/gone:1",
    "private": "docker.io/private/mirrored:v1",
    "repository": "docker.io/library/repo",
    "signed": "docker.io/library/signed:1",
    "pushed": "docker.io/library/pushed:1",
}
REPORT: dict[str, Any] = {}
HELD: dict[str, Any] = {}
"""What one test leaves for the outage test: alice's private image."""
_ACCEPT = "Accept: application/vnd.oci.image.manifest.v1+json"


def _tweak(config: dict[str, Any]) -> None:
    hub = next(r for r in config["registries"] if r["name"] == "docker.io")
    # The sync reads alice's private repository; her password is lent to no client.
    hub["credentials"] = {"method": "token", "username": "alice", "lend": False,
                          "password": {"env": "REGCACHE_TEST_ALICE_PASSWORD"}}  # fmt: skip
    config["store"] = {"max_size": "24MiB", "check_interval_s": 1}
    config["mirror"] = {
        "defaults": {"interval": "1d", "ratelimit": {"min": MIN_BUDGET, "retry": "5m"},
                     "keep_backups": 2},
        "entries": [
            {"source": ENTRIES["pinned"]},
            {"source": ENTRIES["moving"], "backup": "{tag}-{date:%Y%m%d%H%M%S}"},
            {"source": ENTRIES["scheduled"], "interval": "3s"},
            {"source": ENTRIES["budget"]},
            {"source": ENTRIES["gone"]},
            {"source": ENTRIES["private"]},
            {"source": ENTRIES["repository"], "tags": {"semver": ">=2,<3"}},
            {"source": ENTRIES["signed"], "referrers": True},
            {"source": ENTRIES["pushed"]},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def mlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with lab(tmp_path_factory.mktemp("mirror"), _tweak, front_hub=True) as running:
        yield running
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "mirror-requests.json").write_text(json.dumps(REPORT, indent=1))


def mirror(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert lab.config_path is not None
    out = subprocess.run(
        [str(REPO / ".venv/bin/regcache"), "mirror", *args, "--config", str(lab.config_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def sync(lab: Lab, entry: str) -> dict[str, Any]:
    out = mirror(lab, "sync", entry, "--json", check=False)
    assert out.returncode in (0, 1), out.stderr
    report: dict[str, Any] = json.loads(out.stdout)["entries"][0]
    return report


def status(lab: Lab) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(mirror(lab, "status", "--json").stdout)
    return data


def tag_status(lab: Lab, entry: str, tag: str) -> dict[str, Any]:
    found = next(e for e in status(lab)["entries"] if e["source"] == entry)
    row: dict[str, Any] = next(t for t in found["tags"] if t["tag"] == tag)
    return row


def upstream_requests(lab: Lab, repository: str) -> list[tuple[str, str]]:
    """(method, path) the Hub twin's front got for `repository` (the ping excluded)."""
    assert lab.front_log is not None
    lines = lab.front_log.read_text().splitlines() if lab.front_log.exists() else []
    return [
        (method, path) for method, path in (line.split(" ", 1) for line in lines)
        if path.startswith(f"/v2/{repository}/")
    ]  # fmt: skip


def pulled_digest(layout: Path) -> str:
    digest: str = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return digest


def pull(lab: Lab, ref: str, name: str, creds: str | None = None) -> str:
    out, dest = lab.pull(ref, name, creds)
    assert out.returncode == 0, out.stderr
    return pulled_digest(dest)


def podman_pull(lab: Lab, ref: str, root: Path) -> subprocess.CompletedProcess[str]:
    argv = lab.ns.argv(
        "podman", "--root", str(root / "root"), "--runroot", str(root / "run"),
        "--storage-driver", "vfs", "pull", "--quiet", "--cert-dir", str(lab.ca_dir), ref,
    )  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def push(lab: Lab, repository: str, tag: str, img: Image, creds: str | None = None) -> None:
    lab.push_upstream(HUB, repository, tag, img, creds=creds)


def test_mirrored_tag_is_pulled_by_skopeo_and_podman_with_no_upstream_request(mlab: Lab) -> None:
    img = index({"amd64": image([layer(MiB, "m-amd64")]),
                 "arm64": image([layer(MiB, "m-arm64")], arch="arm64")})  # fmt: skip
    push(mlab, "library/mirrored", "3.20", img)
    report = sync(mlab, ENTRIES["pinned"])
    assert report["tags"][0]["moved"] and report["tags"][0]["serving"] == img.top.digest
    before = upstream_requests(mlab, "library/mirrored")
    # By its usual names: docker.io's library/ form and the bare one, through DNS.
    assert pull(mlab, f"{HUB}/library/mirrored:3.20", "m-skopeo") == img.top.digest
    assert pull(mlab, f"{HUB}/mirrored:3.20", "m-bare") == img.top.digest
    root = Path(tempfile.mkdtemp(prefix="rcmir-"))
    try:
        if shutil.which("podman"):
            out = podman_pull(mlab, "docker.io/library/mirrored:3.20", root)
            assert out.returncode == 0, out.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
    after = upstream_requests(mlab, "library/mirrored")
    REPORT["mirrored pull (skopeo x2, podman)"] = {"upstream requests": len(after) - len(before)}
    assert after == before  # zero upstream requests for the repository on the pull path
    for blob in img.blobs:
        assert stored(mlab, blob.digest).read_bytes() == blob.data


def test_tag_moves_only_when_a_sync_moves_it_with_drift_backup_and_history(mlab: Lab) -> None:
    v1, v2 = image([layer(300 * KiB, "mv-1")]), image([layer(300 * KiB, "mv-2")])
    entry, ref = ENTRIES["moving"], f"{HUB}/library/moving:1"
    push(mlab, "library/moving", "1", v1)
    assert sync(mlab, entry)["tags"][0]["moved"]
    assert pull(mlab, ref, "mv-a") == v1.top.digest
    push(mlab, "library/moving", "1", v2)  # upstream moves the tag
    before = upstream_requests(mlab, "library/moving")
    assert pull(mlab, ref, "mv-b") == v1.top.digest  # still what the mirror decided
    assert upstream_requests(mlab, "library/moving") == before
    diff = json.loads(mirror(mlab, "diff", entry, "--json").stdout)["entries"][0]["tags"][0]
    assert diff["change"] == "move" and diff["upstream"] == v2.top.digest and not diff["moved"]
    drift = tag_status(mlab, entry, "1")
    assert drift["drift"] == "yes" and drift["upstream"] == v2.top.digest
    seen = len(upstream_requests(mlab, "library/moving"))
    assert sync(mlab, entry)["tags"][0]["moved"]
    by_sync = upstream_requests(mlab, "library/moving")[seen:]
    REPORT["sync moving a tag"] = {
        "HEAD manifests": sum(m == "HEAD" and "/manifests/" in p for m, p in by_sync),
        "GET manifests": sum(m == "GET" and "/manifests/" in p for m, p in by_sync),
        "GET blobs": sum(m == "GET" and "/blobs/" in p for m, p in by_sync),
    }
    assert pull(mlab, ref, "mv-c") == v2.top.digest
    moves = json.loads(mirror(mlab, "history", entry, "--json").stdout)["moves"]
    assert [m["new"] for m in moves] == [v1.top.digest, v2.top.digest]
    backup = moves[-1]["backup"]
    assert backup and backup.startswith("1-")
    assert pull(mlab, f"{HUB}/library/moving:{backup}", "mv-backup") == v1.top.digest
    page = mlab.ns.run("curl", "-s", f"http://{REGCACHE_IP}:{ADMIN_PORT}/", timeout=30).stdout
    assert "library/moving" in page and "Mirror" in page
    metrics = mlab.ns.run("curl", "-s", f"http://{REGCACHE_IP}:{ADMIN_PORT}/metrics").stdout
    assert "regcache_mirror_drift" in metrics and "regcache_mirror_last_success" in metrics
    audit = (mlab.state_dir / "audit.jsonl").read_text().splitlines()
    moved = [json.loads(a) for a in audit if '"mirror-' in a and "library/moving" in a]
    assert [a["digest"] for a in moved][-2:] == [v1.top.digest, v2.top.digest]


def test_a_push_through_regcache_to_a_mirrored_tag_is_served_at_once_as_a_push(
    mlab: Lab,
) -> None:
    """A person's decision, like a pin: the next pull gets what was pushed, no sync needed,
    and the history says `push` (the old digest kept as a backup ref)."""
    v1, v2 = image([layer(100 * KiB, "pu-1")]), image([layer(100 * KiB, "pu-2")])
    entry, ref = ENTRIES["pushed"], f"{HUB}/library/pushed:1"
    push(mlab, "library/pushed", "1", v1)
    assert sync(mlab, entry)["tags"][0]["moved"]
    assert pull(mlab, ref, "pu-a") == v1.top.digest
    mlab.push(HUB, "library/pushed", "1", v2)  # through regcache, by DNS
    assert pull(mlab, ref, "pu-b") == v2.top.digest
    last = json.loads(mirror(mlab, "history", entry, "--json").stdout)["moves"][-1]
    assert (last["new"], last["reason"]) == (v2.top.digest, "push"), last
    assert pull(mlab, f"{HUB}/library/pushed:{last['backup']}", "pu-old") == v1.top.digest


def test_keep_backups_prunes_older_generations(mlab: Lab) -> None:
    entry = ENTRIES["moving"]
    for n in (3, 4):
        push(mlab, "library/moving", "1", image([layer(200 * KiB, f"mv-{n}")]))
        time.sleep(1.1)  # backup names carry the second
        assert sync(mlab, entry)["tags"][0]["moved"]
    row = tag_status(mlab, entry, "1")
    assert row["backups"] == 2  # keep_backups: the two newest of three


def test_scheduled_sync_moves_the_tag_without_anyone_asking(mlab: Lab) -> None:
    v1, v2 = image([layer(100 * KiB, "sc-1")]), image([layer(100 * KiB, "sc-2")])
    ref = f"{HUB}/library/scheduled:1"
    push(mlab, "library/scheduled", "1", v1)
    _wait_for(lambda: _serving(mlab, ENTRIES["scheduled"], "1") == v1.top.digest)
    assert pull(mlab, ref, "sc-a") == v1.top.digest
    push(mlab, "library/scheduled", "1", v2)
    _wait_for(lambda: _serving(mlab, ENTRIES["scheduled"], "1") == v2.top.digest)
    assert pull(mlab, ref, "sc-b") == v2.top.digest


def test_below_the_budget_minimum_the_sync_makes_no_get_and_waits(mlab: Lab) -> None:
    assert mlab.ratelimit_remaining is not None
    img = image([layer(200 * KiB, "budget")])
    push(mlab, "library/budget", "1", img)
    mlab.ratelimit_remaining.write_text(str(MIN_BUDGET - 5))
    pushed = len(upstream_requests(mlab, "library/budget"))
    try:
        report = sync(mlab, ENTRIES["budget"])
        assert report["waiting"] and report["tags"][0]["change"] == "waiting"
        requests = upstream_requests(mlab, "library/budget")[pushed:]
        assert [m for m, _ in requests if m == "GET"] == []  # HEADs only
        assert any(m == "HEAD" for m, _ in requests)
        state = status(mlab)
        run = next(e for e in state["entries"] if e["source"] == ENTRIES["budget"])["run"]
        assert run["state"] == "waiting"
        assert any(b["remaining"] == MIN_BUDGET - 5 for b in state["budgets"])
        REPORT["budget below min"] = {"GETs": 0, "HEADs": len(requests)}
    finally:
        mlab.ratelimit_remaining.write_text("90")
    waited = len(upstream_requests(mlab, "library/budget"))
    report = sync(mlab, ENTRIES["budget"])
    assert report["tags"][0]["moved"]
    requests = upstream_requests(mlab, "library/budget")[waited:]
    assert any(m == "GET" and "/manifests/" in p for m, p in requests)
    REPORT["budget above min"] = {
        "HEADs": sum(m == "HEAD" for m, _ in requests),
        "GET manifests": sum(m == "GET" and "/manifests/" in p for m, p in requests),
        "GET blobs": sum(m == "GET" and "/blobs/" in p for m, p in requests),
    }


def test_a_tag_upstream_deletes_stays_served_and_status_says_so(mlab: Lab) -> None:
    img = image([layer(150 * KiB, "gone")])
    push(mlab, "library/gone", "1", img)
    assert sync(mlab, ENTRIES["gone"])["tags"][0]["moved"]
    _delete_upstream(mlab, "library/gone", img.top.digest)
    assert sync(mlab, ENTRIES["gone"])["tags"][0]["change"] == "gone"
    assert tag_status(mlab, ENTRIES["gone"], "1")["drift"] == "gone"
    assert pull(mlab, f"{HUB}/library/gone:1", "gone") == img.top.digest


def test_a_repository_entry_mirrors_the_tags_its_range_chooses(mlab: Lab) -> None:
    for tag in ("1.9", "2.0", "2.1", "3.0"):
        push(mlab, "library/repo", tag, image([layer(50 * KiB, f"repo-{tag}")]))
    report = sync(mlab, ENTRIES["repository"])
    assert sorted(t["tag"] for t in report["tags"] if t["moved"]) == ["2.0", "2.1"]


def test_signatures_in_cosigns_tag_schema_are_mirrored_with_the_image(mlab: Lab) -> None:
    """distribution 2.8 has no referrers API: cosign's `sha256-<hex>.sig` tag is found,
    copied and served by the mirror like the image (`referrers: true`)."""
    img = image([layer(100 * KiB, "signed")])
    push(mlab, "library/signed", "1", img)
    sig_tag = f"sha256-{img.top.digest.removeprefix('sha256:')}.sig"
    signature = image([layer(1 * KiB, "cosign signature")])
    push(mlab, "library/signed", sig_tag, signature)
    assert sync(mlab, ENTRIES["signed"])["tags"][0]["moved"]
    assert tag_status(mlab, ENTRIES["signed"], sig_tag)["serving"] == signature.top.digest
    before = upstream_requests(mlab, "library/signed")
    assert pull(mlab, f"{HUB}/library/signed:{sig_tag}", "sig") == signature.top.digest
    assert upstream_requests(mlab, "library/signed") == before


def test_eviction_pressure_never_removes_mirrored_content(mlab: Lab) -> None:
    kept = _mirrored_digests(mlab)
    assert len(kept) > 10
    for n in range(5):  # 30 MiB of ordinary pulls through a 24 MiB store
        img = image([layer(6 * MiB, f"pressure-{n}")])
        push(mlab, f"library/pressure{n}", "1", img)
        pull(mlab, f"{HUB}/library/pressure{n}:1", f"pressure-{n}")
    _wait_for(lambda: "regcache_evicted_bytes_total 0.0" not in _metrics(mlab))
    for digest in kept:  # tags, backups, and all they reference
        assert stored(mlab, digest).exists(), digest


def test_private_source_reaches_only_its_owner_under_any_name(mlab: Lab) -> None:
    img = image([layer(400 * KiB, "mirror-private")])
    push(mlab, "private/mirrored", "v1", img, creds=ALICE)
    report = sync(mlab, ENTRIES["private"])
    assert report["tags"][0]["moved"], report
    assert tag_status(mlab, ENTRIES["private"], "v1")["access"] == "upstream"
    _refused_everywhere(mlab, img)
    assert pull(mlab, f"{HUB}/private/mirrored:v1", "p-alice", ALICE) == img.top.digest
    HELD["image"] = img


def test_a_restart_and_an_index_rebuilt_from_the_files_keep_the_mirror(mlab: Lab) -> None:
    ref = f"{HUB}/library/mirrored:3.20"
    serving = _serving(mlab, ENTRIES["pinned"], "3.20")
    before = upstream_requests(mlab, "library/mirrored")
    mlab.restart_regcache()
    assert pull(mlab, ref, "restarted") == serving
    assert mlab.regcache_proc is not None
    mlab.ns.stop(mlab.regcache_proc)
    index = mlab.state_dir / "index.sqlite"
    with index.open("r+b") as db:  # the header: SQLite refuses the file, regcache rebuilds
        db.write(b"\0" * 100)
    for suffix in ("-wal", "-shm"):
        index.with_name(index.name + suffix).unlink(missing_ok=True)
    mlab.start_regcache()
    _wait_for(lambda: _pull_digest_or_none(mlab, ref) == serving)
    # Upstream heard only the mirror's own check after the rebuild (its runs were in the
    # lost index): HEADs of the tag, nothing fetched, nothing asked by the pulls.
    after = upstream_requests(mlab, "library/mirrored")[len(before) :]
    assert {r for r in after} <= {("HEAD", "/v2/library/mirrored/manifests/3.20")}, after
    REPORT["restart, then an index rebuilt from the files"] = {"upstream requests": after}
    moves = json.loads(mirror(mlab, "history", ENTRIES["moving"], "--json").stdout)["moves"]
    assert len(moves) >= 4  # the history came back too
    assert "restored-from-journal" in mlab.regcache_log.read_text()


def test_with_upstream_stopped_rollback_is_instant_and_private_content_stays_private(
    mlab: Lab,
) -> None:
    entry, ref = ENTRIES["moving"], f"{HUB}/library/moving:1"
    history = json.loads(mirror(mlab, "history", entry, "--json").stdout)["moves"]
    old, current = history[-2]["new"], history[-1]["new"]
    # A client of alice's that holds its token across the outage, checked before it.
    img, token = HELD["image"], _token(mlab, "private/mirrored", ALICE)
    base, auth = f"https://{HUB}/v2/private/mirrored", f"Authorization: Bearer {token}"
    assert status_and_body(mlab, f"{base}/manifests/v1", auth, _ACCEPT) == (200, img.top.data)
    mlab.stop_upstream()
    mirror(mlab, "rollback", entry, "--steps", "1")
    _wait_for(lambda: _pull_digest_or_none(mlab, ref) == old)
    layout = mlab.tmp / "pull-rolled"
    shutil.rmtree(layout, ignore_errors=True)
    out2, dest = mlab.pull(ref, "rolled")
    assert out2.returncode == 0, out2.stderr
    for digest, data in pulled_blobs(dest).items():
        assert stored(mlab, digest).read_bytes() == data  # byte-identical to what was kept
    assert pulled_digest(dest) == old != current
    assert tag_status(mlab, entry, "1")["pinned"] == old
    # During the outage the private mirror reaches no stranger; alice's client holding a
    # token from before it still gets every byte (a new login cannot be checked now).
    for who, creds in (("o-anon", None), ("o-carol", "carol:wrong"), ("o-dave", DAVE)):
        out3, _ = mlab.pull(f"{HUB}/private/mirrored:v1", who, creds)
        assert out3.returncode != 0, who
    _refused_everywhere(mlab, img, pulls=False)
    assert status_and_body(mlab, f"{base}/manifests/v1", auth, _ACCEPT) == (200, img.top.data)
    for blob in img.blobs:
        assert status_and_body(mlab, f"{base}/blobs/{blob.digest}", auth) == (200, blob.data)


def _token(mlab: Lab, repository: str, creds: str) -> str:
    """A pull token from the realm, through regcache's interception (as clients get it)."""
    realm = (f"https://auth.docker.io/token?service=registry.docker.io"
             f"&scope=repository:{repository}:pull")  # fmt: skip
    out = mlab.ns.run("curl", "-sSf", "--cacert", str(mlab.ca_dir / "ca.crt"), "-u", creds,
                      realm, timeout=60)  # fmt: skip
    token: str = json.loads(out.stdout)["token"]
    return token


def _refused_everywhere(mlab: Lab, img: Image, *, pulls: bool = True) -> None:
    for who, creds in (("p-anon", None), ("p-carol", "carol:wrong"), ("p-dave", DAVE)):
        if not pulls:
            break
        out, dest = mlab.pull(f"{HUB}/private/mirrored:v1", who, creds)
        assert out.returncode != 0, who
        assert not (dest / "blobs").exists() or not any((dest / "blobs").rglob("*"))
    # By digest, under its own name and under a public mirrored repository's name.
    for repository in ("private/mirrored", "library/mirrored", "mirrored"):
        for blob in (img.top, *img.blobs):
            kind = "manifests" if blob is img.top else "blobs"
            url = f"https://{HUB}/v2/{repository}/{kind}/{blob.digest}"
            dave = f"Authorization: Bearer {_token(mlab, 'dave/x', DAVE)}" if pulls else ""
            for headers in ((), ("Authorization: Bearer forged",), (dave,)):
                code, body = status_and_body(mlab, url, *[h for h in headers if h])
                assert code in (401, 403, 404, 502, 503), (url, code)
                assert blob.data not in body


def _delete_upstream(mlab: Lab, repository: str, digest: str) -> None:
    """The manifest deleted straight at the upstream, as its publisher would: a token
    from the realm, then `DELETE /v2/<name>/manifests/<digest>` (skopeo 1.9's delete
    cannot fetch an OCI manifest first)."""
    assert mlab.upstream_ca is not None
    ca = mlab.tmp / "upstream-ca.crt"
    ca.write_bytes(mlab.upstream_ca.pem.read_bytes())
    hosts = mlab.tmp / "hosts-upstream-delete"
    hosts.write_text("".join(f"{ip} {name}\n" for name, ip in
                             {**UPSTREAMS, "auth.docker.io": "127.0.0.5"}.items()))  # fmt: skip
    realm = ("https://auth.docker.io/token?service=registry.docker.io"
             f"&scope=repository:{repository}:pull,delete")  # fmt: skip
    script = (
        f"mount --bind {hosts} /etc/hosts && token=$(curl -sSf --cacert {ca} '{realm}'"
        " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])') &&"
        f" curl -sSf -o /dev/null -w '%{{http_code}}' --cacert {ca} -X DELETE"
        f' -H "Authorization: Bearer $token" https://{HUB}/v2/{repository}/manifests/{digest}'
    )
    out = mlab.ns.run("unshare", "--mount", "sh", "-c", script, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout == "202", out.stdout + out.stderr


def _serving(mlab: Lab, entry: str, tag: str) -> str | None:
    try:
        row = tag_status(mlab, entry, tag)
    except StopIteration:
        return None
    serving: str | None = row["serving"]
    return serving


def _pull_digest_or_none(mlab: Lab, ref: str) -> str | None:
    out, dest = mlab.pull(ref, f"probe-{time.monotonic_ns()}")
    return pulled_digest(dest) if out.returncode == 0 else None


def _mirrored_digests(mlab: Lab) -> set[str]:
    """What the mirror's tags and backup refs serve, with all it references (the index
    read as it is)."""
    db = sqlite3.connect(f"file:{mlab.state_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "WITH RECURSIVE reach(d) AS (SELECT digest FROM mirror_tags UNION"
            " SELECT child FROM refs JOIN reach ON parent = reach.d) SELECT d FROM reach"
        ).fetchall()
    finally:
        db.close()
    return {str(r[0]) for r in rows}


def _metrics(mlab: Lab) -> str:
    return mlab.ns.run("curl", "-s", f"http://{REGCACHE_IP}:{ADMIN_PORT}/metrics").stdout


def _wait_for(condition: Any, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s")
