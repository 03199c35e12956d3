"""Builds keep working when upstream is down: cached images pull, uncached ones fail
clearly, with clients that have never talked to regcache before the outage."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.images import image, layer
from tests.e2e.lab import REGCACHE_IP, Lab
from tests.harness import REPO

MiB = 1 << 20
IMAGES = {
    "registry-1.docker.io/library/steady": image([layer(MiB, "steady")]),
    "ghcr.io/org/steady": image([layer(MiB // 2, "ghcr-steady")]),
    "quay.io/org/steady": image([layer(MiB // 2, "quay-steady")]),
}


def curl(lab: Lab, *args: str) -> str:
    accept = "Accept: application/vnd.oci.image.manifest.v1+json"
    out = lab.ns.run("curl", "-sS", "-H", accept, "--cacert", str(lab.ca_dir / "ca.crt"), *args)
    return out.stdout


def _text(path: Path | None) -> str:
    return path.read_text() if path is not None and path.exists() else ""


def test_offline_mode_contacts_no_upstream_at_all(the_lab: Lab) -> None:
    img, later = image([layer(MiB, "offline")]), image([layer(1000, "after-offline")])
    the_lab.push("ghcr.io", "org/offline", "v1", img)
    the_lab.push("ghcr.io", "org/later", "v1", later)
    out, _ = the_lab.pull("ghcr.io/org/offline:v1", "offline-warm")
    assert out.returncode == 0, out.stderr
    regcache = [str(REPO / ".venv/bin/regcache"), "--config", str(the_lab.config_path)]
    subprocess.run([*regcache, "offline", "on"], check=True, capture_output=True)
    time.sleep(1.2)  # the server looks at the switch at most once a second
    seen = {host: len(reg.requests()) for host, reg in the_lab.registries.items()}
    tokens = _text(the_lab.token_log)
    try:
        out, _ = the_lab.pull("ghcr.io/org/offline:v1", "offline-again")
        assert out.returncode == 0, out.stderr
        out, _ = the_lab.pull("ghcr.io/org/later:v1", "offline-uncached")
        assert out.returncode != 0
        assert {host: len(reg.requests()) for host, reg in the_lab.registries.items()} == seen
        assert _text(the_lab.token_log) == tokens
    finally:
        subprocess.run([*regcache, "offline", "off"], check=True, capture_output=True)
    time.sleep(1.2)
    out, _ = the_lab.pull("ghcr.io/org/later:v1", "online-again")
    assert out.returncode == 0, out.stderr


def _resolve(lab: Lab, name: str) -> str:
    return lab.ns.run("dig", "+short", "+time=2", "+tries=1", name, "A").stdout.strip()


def _wait_resolves(lab: Lab, name: str, want: str, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _resolve(lab, name) == want:
            return True
        time.sleep(0.2)
    return False


def test_dns_fails_open_while_the_proxy_cannot_serve(the_lab: Lab) -> None:
    assert _resolve(the_lab, "ghcr.io") == "127.0.0.2"  # intercepted: the appliance
    tmp = the_lab.state_dir / "tmp"
    tmp.rename(the_lab.state_dir / "tmp.away")
    tmp.write_text("not a directory: the store cannot be written")  # a broken store
    try:
        # Within a health interval or two, DNS hands out the real registry address.
        assert _wait_resolves(the_lab, "ghcr.io", "127.0.0.4"), the_lab.regcache_log.read_text()[
            -2000:
        ]
    finally:
        tmp.unlink()
        (the_lab.state_dir / "tmp.away").rename(tmp)
    assert _wait_resolves(the_lab, "ghcr.io", "127.0.0.2")  # healthy again: intercepting
    log = the_lab.regcache_log.read_text()
    assert "health unhealthy problems=store" in log and "health healthy again" in log


def test_dns_fails_open_while_the_https_listener_is_unreachable(the_lab: Lab) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft (Debian nftables) is not installed")
    assert _resolve(the_lab, "ghcr.io") == "127.0.0.2"
    # Inside the lab's namespace only: connections to the listener are reset.
    the_lab.ns.run("nft", "add", "table", "inet", "regcache_test")
    the_lab.ns.run("nft", "add", "chain", "inet", "regcache_test", "input",
                   "{ type filter hook input priority 0; }")  # fmt: skip
    rule = f"ip daddr {REGCACHE_IP} tcp dport 443 reject with tcp reset"
    the_lab.ns.run("nft", "add", "rule", "inet", "regcache_test", "input", *rule.split())
    try:
        assert _wait_resolves(the_lab, "ghcr.io", "127.0.0.4")
    finally:
        the_lab.ns.run("nft", "delete table inet regcache_test")
    assert _wait_resolves(the_lab, "ghcr.io", "127.0.0.2")
    assert "health unhealthy problems=https listener" in the_lab.regcache_log.read_text()


# Last in this module: it takes the upstreams away for good.
def test_cached_images_pull_through_outages_and_uncached_ones_fail_clearly(the_lab: Lab) -> None:
    for ref, img in IMAGES.items():
        host, repository = ref.split("/", 1)
        the_lab.push(host, repository, "v1", img)
        out, _ = the_lab.pull(f"{ref}:v1", f"warm-{host}")
        assert out.returncode == 0, out.stderr
    never = image([layer(1000, "never-pulled")])
    the_lab.push("registry-1.docker.io", "library/never", "v1", never)

    ghcr = the_lab.registries["ghcr.io"]
    assert ghcr.proc is not None
    the_lab.ns.stop(ghcr.proc)
    for status in (503, 429):  # upstream there but failing: same as gone
        fault = the_lab.fault("ghcr.io", status)
        out, _ = the_lab.pull("ghcr.io/org/steady:v1", f"fault-{status}")
        assert out.returncode == 0, (status, out.stderr)
        head = curl(the_lab, "-I", "https://ghcr.io/v2/org/steady/manifests/v1")
        assert "HTTP/1.1 200" in head and "warning: 110" in head.lower(), head
        uncached = curl(the_lab, "-i", "https://ghcr.io/v2/org/nothere/manifests/v1")
        assert uncached.startswith(f"HTTP/1.1 {status}"), uncached  # passed on as it is
        assert "retry-after: 30" in uncached.lower()
        the_lab.ns.stop(fault)

    the_lab.stop_upstream()  # every registry and the token realm: connections refused
    for ref in IMAGES:
        out, _ = the_lab.pull(f"{ref}:v1", f"outage-{ref.split('/')[0]}")
        assert out.returncode == 0, (ref, out.stderr)
    out, _ = the_lab.pull("registry-1.docker.io/library/never:v1", "outage-never")
    assert out.returncode != 0
    body = curl(the_lab, "https://registry-1.docker.io/v2/library/never/manifests/v1")
    assert '"code": "UNAVAILABLE"' in body
    # Names unresolvable too, and regcache restarted meanwhile (a gateway reboot during the
    # outage): what it learnt about public repositories was kept, so builds still pull.
    assert the_lab.config_path is not None
    config = yaml.safe_load(the_lab.config_path.read_text())
    config.pop("resolve")  # its real resolvers are dead: no registry name resolves
    the_lab.config_path.write_text(yaml.safe_dump(config))
    the_lab.restart_regcache()
    for ref in IMAGES:
        out, _ = the_lab.pull(f"{ref}:v1", f"unresolvable-{ref.split('/')[0]}")
        assert out.returncode == 0, (ref, out.stderr)
    log = the_lab.regcache_log.read_text()
    assert "ClientConnectorDNSError Cannot connect to host registry-1.docker.io" in log
    assert "tag serving-stale host=registry-1.docker.io repository=library/steady" in log
    # The Docker Hub twin's ping (401, cached for a minute) sent fresh clients to its token
    # realm, which is down too: regcache answered that step so they could go on.
    assert "answering the token step host=auth.docker.io" in log
