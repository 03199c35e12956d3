"""The admin listener after real pulls: /metrics equals what happened (the upstream's own
access log is the reference), /readyz follows the store, the allow-list holds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter

import pytest

from tests.e2e.images import image, layer
from tests.e2e.lab import ADMIN_PORT, REGCACHE_IP, REPO, Lab

ADMIN = f"http://{REGCACHE_IP}:{ADMIN_PORT}"
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(lab: Lab) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = lab.ns.run("curl", "-sf", f"{ADMIN}/metrics")
    samples = {}
    for line in out.stdout.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group("labels") or ""))
        samples[(match.group("name"), labels)] = float(match.group("value"))
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_what_happened(the_lab: Lab) -> None:
    img = image([layer(3 << 20, "m1"), layer(1 << 20, "m2")])
    the_lab.push_upstream("ghcr.io", "metrics/app", "v1", img)  # cold: not written through
    pushed = len(the_lab.registries["ghcr.io"].requests())
    for name in ("cold", "warm"):
        out, _ = the_lab.pull("ghcr.io/metrics/app:v1", f"metrics-{name}")
        assert out.returncode == 0, out.stderr
    samples = scrape(the_lab)
    blobs = len(img.blobs)  # config and two layers
    labels = {"registry": "ghcr.io", "kind": "blob"}
    assert value(samples, "regcache_cache_answers_total", **labels, outcome="miss") == blobs
    assert value(samples, "regcache_cache_answers_total", **labels, outcome="hit") == blobs
    size = sum(len(b.data) for b in img.blobs)
    fetched = size + len(img.top.data)  # the cold pull's blobs and manifest
    assert (
        value(samples, "regcache_served_bytes_total", registry="ghcr.io", source="upstream")
        == fetched
    )
    assert value(samples, "regcache_served_bytes_total", registry="ghcr.io", source="store") >= size
    assert value(samples, "regcache_requests_total", registry="ghcr.io", route="blob",
                 method="GET", status="200") == 2 * blobs  # fmt: skip
    # Every request ghcr.io's registry logged since the push came from regcache (pings,
    # HEADs, GETs): the counters by method agree with the registry's own log, exactly.
    logged = Counter(m for m, _, _, _ in the_lab.registries["ghcr.io"].requests()[pushed:])
    for method, count in logged.items():
        counted = sum(v for (name, lbl), v in samples.items()
                      if name == "regcache_upstream_requests_total"
                      and ("host", "ghcr.io") in lbl and ("method", method) in lbl)  # fmt: skip
        assert counted == count, (method, counted, count)
    fills = value(samples, "regcache_fill_duration_seconds_count", state="done")
    assert fills == blobs  # one transfer per blob; manifests are not fills
    hits = sum(value(samples, "regcache_cache_answers_total", registry="ghcr.io", kind=k,
                     outcome="hit") for k in ("blob", "manifest"))  # fmt: skip
    assert value(samples, "regcache_time_to_first_byte_seconds_count", outcome="hit") == hits
    assert value(samples, "regcache_store_bytes") >= size
    assert value(samples, "regcache_store_free_bytes") > 0


def test_readyz_follows_the_store_and_healthz_stays_up(the_lab: Lab) -> None:
    ready = the_lab.ns.run("curl", "-s", "-w", "%{http_code}", f"{ADMIN}/readyz")
    assert ready.stdout.endswith("200") and '"ready": true' in ready.stdout
    tmp = the_lab.state_dir / "tmp"
    # A read-only filesystem over the fill directory, mounted in regcache's own mount
    # namespace (`ip netns exec` gives it one; the machine's mounts stay untouched).
    assert the_lab.regcache_proc is not None
    enter = ["nsenter", "-t", str(the_lab.regcache_proc.pid), "-m"]
    subprocess.run([*enter, "mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(tmp)],
                   check=True)  # fmt: skip
    try:
        down = the_lab.ns.run("curl", "-s", "-w", "%{http_code}", f"{ADMIN}/readyz")
        assert down.stdout.endswith("503") and "store: cannot write" in down.stdout
        alive = the_lab.ns.run("curl", "-s", "-w", "%{http_code}", f"{ADMIN}/healthz")
        assert alive.stdout.endswith("200")
    finally:
        subprocess.run([*enter, "umount", str(tmp)], check=True)
    ready = the_lab.ns.run("curl", "-s", "-w", "%{http_code}", f"{ADMIN}/readyz")
    assert ready.stdout.endswith("200")


def test_metric_labels_are_bounded_whatever_hosts_and_tokens_clients_send(the_lab: Lab) -> None:
    """Item 5 of #13: a label per Host header or per client token grows without end."""
    before = {key for key in scrape(the_lab)}
    ca = str(the_lab.ca_dir / "ca.crt")
    for i in range(20):
        # SNI ghcr.io, Host anything: answered 421, counted under one label.
        the_lab.ns.run("curl", "-s", "-o", "/dev/null", "--cacert", ca, "-H",
                       f"Host: random-{i}.example", "https://ghcr.io/v2/")  # fmt: skip
        # Names under a wildcard registry: one label, the pattern.
        the_lab.ns.run("curl", "-s", "-o", "/dev/null", "--cacert", ca, "--connect-to",
                       f"region-{i}.gcr.io:443:ghcr.io:443", "-H", f"Authorization: Bearer t{i}",
                       f"https://region-{i}.gcr.io/v2/x/manifests/v{i}")  # fmt: skip
        # Methods the HTTP parser knows but registries do not use: one label value.
        the_lab.ns.run("curl", "-s", "-o", "/dev/null", "--cacert", ca, "-X",
                       ("PROPFIND", "MKCOL", "LOCK")[i % 3], "https://ghcr.io/v2/")  # fmt: skip
    new = {key for key in scrape(the_lab)} - before
    hosts = {v for _, labels in new for k, v in labels if k in ("registry", "host")}
    assert not any("random-" in h or "region-" in h for h in hosts), hosts
    assert "unknown" in hosts and "*.gcr.io" in hosts
    methods = {v for name, labels in scrape(the_lab) for k, v in labels if k == "method"}
    assert "OTHER" in methods and not methods & {"PROPFIND", "MKCOL", "LOCK"}, methods
    # (credential= of the rate-limit gauge: the lab's registries send no ratelimit
    # headers; tests/test_admin.py covers it.)


def test_the_admin_listener_refuses_clients_outside_its_allow_list(the_lab: Lab) -> None:
    the_lab.ns.run("ip", "addr", "add", "10.99.0.1/32", "dev", "lo")
    outside = the_lab.ns.run("curl", "-s", "-w", "%{http_code}", "--interface", "10.99.0.1",
                             f"{ADMIN}/metrics")  # fmt: skip
    assert outside.stdout.endswith("403") and "not allowed" in outside.stdout
    assert "regcache_requests_total" not in outside.stdout


def test_dns_queries_are_counted_by_type_and_outcome(the_lab: Lab) -> None:
    before = scrape(the_lab)
    for _ in range(3):
        the_lab.ns.run("dig", f"@{REGCACHE_IP}", "+short", "+tries=1", "ghcr.io", "A")
    the_lab.ns.run("dig", f"@{REGCACHE_IP}", "+short", "+tries=1", "ghcr.io", "HTTPS")
    # Not a registry: forwarded to the lab's resolver, which does not exist → SERVFAIL.
    the_lab.ns.run("dig", f"@{REGCACHE_IP}", "+tries=1", "example.org", "A", check=False)
    after = scrape(the_lab)

    def delta(qtype: str, outcome: str) -> float:
        return value(after, "regcache_dns_queries_total", qtype=qtype, outcome=outcome) - value(
            before, "regcache_dns_queries_total", qtype=qtype, outcome=outcome
        )

    assert delta("A", "intercepted") == 3 and delta("HTTPS", "intercepted") == 1
    assert delta("A", "forwarded") == 1 and delta("A", "servfail") == 1


def test_the_audit_log_lists_every_blob_and_manifest_pulled(the_lab: Lab) -> None:
    img = image([layer(1 << 20, "audited")])
    the_lab.push_upstream("ghcr.io", "audit/app", "v1", img)
    for name in ("cold", "warm"):
        out, _ = the_lab.pull("ghcr.io/audit/app:v1", f"audit-{name}")
        assert out.returncode == 0, out.stderr
    assert the_lab.config_path is not None
    argv = [str(REPO / ".venv/bin/regcache"), "audit", "--config", str(the_lab.config_path),
            "--image", "ghcr.io/audit/app", "--since", "1h", "--json"]  # fmt: skip
    entries: list[dict[str, object]] = []
    for _ in range(50):  # written by a background thread: allow it a moment
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        entries = [json.loads(line) for line in out.stdout.splitlines()]
        if sum(e["kind"] == "blob" for e in entries) >= 2 * len(img.blobs):
            break
        time.sleep(0.1)
    gets = [e for e in entries if e["kind"] == "blob" and e["method"] == "GET"]
    assert sorted(e["outcome"] for e in gets) == ["hit"] * len(img.blobs) + ["miss"] * len(
        img.blobs
    )
    sizes = {b.digest: len(b.data) for b in img.blobs}
    assert all(e["bytes"] == sizes[e["digest"]] and e["status"] == 200 for e in gets)
    manifests = [e for e in entries if e["kind"] == "manifest" and e["reference"] == "v1"]
    assert manifests and all(e["digest"] == img.top.digest for e in manifests)
    assert all(str(e["client"]).startswith("127.") for e in entries)
    table = subprocess.run(argv[:-1], capture_output=True, text=True, check=True).stdout
    assert "ghcr.io/audit/app" in table and "TIME (UTC)" in table
    none = subprocess.run([*argv[:-3], "--until", "2000-01-01T00:00:00"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "audit/app" not in none.stdout


def test_regcache_status_summarises_the_admin_figures(the_lab: Lab) -> None:
    assert the_lab.config_path is not None
    argv = (str(REPO / ".venv/bin/regcache"), "status", "--config", str(the_lab.config_path))
    table = the_lab.ns.run(*argv, check=False)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("ready: yes") and "HIT RATIO" in table.stdout
    figures = json.loads(the_lab.ns.run(*argv, "--json").stdout)
    ghcr = figures["registries"]["ghcr.io"]
    samples = scrape(the_lab)
    hits = sum(
        value(samples, "regcache_cache_answers_total", registry="ghcr.io", kind=kind, outcome="hit")
        for kind in ("blob", "manifest")
    )
    assert ghcr["hits"] == hits
    assert ghcr["hits"] > 0 and ghcr["from_store"] > 0 and figures["store_bytes"] > 0


def test_the_status_page_renders_the_figures_in_a_browser(the_lab: Lab) -> None:
    """Headless Chromium (Debian's) inside the lab's namespace; the screenshot is kept in
    artifacts/ for a human to look at."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (make test installs it when run as root)")
    profile = the_lab.tmp / "chromium-profile"
    browser = ("chromium", "--headless", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={profile}")  # fmt: skip
    dom = the_lab.ns.run(*browser, "--dump-dom", f"{ADMIN}/", timeout=120).stdout
    figures = json.loads(the_lab.ns.run(str(REPO / ".venv/bin/regcache"), "status", "--json",
                                        "--config", str(the_lab.config_path)).stdout)  # fmt: skip
    ghcr = figures["registries"]["ghcr.io"]
    assert ghcr["hits"] > 0
    assert re.search(r'id="hit-ratio">\d+%<', dom), dom[:2000]
    assert re.search(r'id="saved-bytes">[1-9][\d.]* (KiB|MiB)<', dom)
    points = re.search(r'id="saved-line"[^>]*points="([^"]+)"', dom)
    assert points is not None and len(points.group(1).split()) >= 2
    top = dom[dom.index('id="top-repositories"') :]
    assert "ghcr.io/metrics/app" in top and "ghcr.io/audit/app" in top
    assert "<td>ghcr.io</td>" in dom[dom.index('id="registries"') :]
    shown = the_lab.ns.run(str(REPO / ".venv/bin/regcache"), "ca", "show", "--config",
                           str(the_lab.config_path)).stdout  # fmt: skip
    fingerprint = re.search(r"fingerprint:\s+SHA256 (\S+)", shown)
    assert fingerprint is not None and f'id="ca-fingerprint">{fingerprint.group(1)}<' in dom
    ca = the_lab.ns.run("curl", "-sf", f"{ADMIN}/ca.crt").stdout
    assert ca.startswith("-----BEGIN CERTIFICATE-----")
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "status-page.png"
    shot.unlink(missing_ok=True)
    the_lab.ns.run(*browser, f"--screenshot={shot}", "--window-size=1280,1100", f"{ADMIN}/",
                   timeout=120)  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_concurrent_pulls_are_counted_as_coalesced(the_lab: Lab) -> None:
    img = image([layer(8 << 20, "crowd")])  # via quay.io's CDN at 16 MiB/s: 0.5 s a pull
    the_lab.push_upstream("quay.io", "metrics/crowd", "v1", img)
    before = value(scrape(the_lab), "regcache_coalesced_requests_total")
    pulls = [subprocess.Popen(the_lab.pull_argv("quay.io/metrics/crowd:v1",
                                                the_lab.tmp / f"crowd-{n}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for n in range(4)]  # fmt: skip
    for proc in pulls:
        assert proc.wait(timeout=300) == 0
    joined = value(scrape(the_lab), "regcache_coalesced_requests_total") - before
    gets = [p for m, p, st, _ in the_lab.registries["quay.io"].requests()
            if m == "GET" and img.layers[0].digest in p]  # fmt: skip
    assert len(gets) == 1  # one upstream transfer for the four pulls…
    assert 1 <= joined <= 3 * len(img.blobs)  # …the others joined it (or found it stored)
