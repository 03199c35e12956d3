"""The OCI distribution-spec conformance suite (tests/conformance) run inside the lab's
network namespace: in full against regcache's local registry (token realm, htpasswd
user), and its push section through regcache to a real registry (pass-through). Each
target's address is what the namespace's DNS (regcache) answers for its name."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.conftest import ENV_TARGET
from tests.e2e.conftest import _missing
from tests.e2e.lab import Lab, lab
from tests.harness import REPO

LOCAL = "conformance.build.internal"
USER, PASSWORD = "conformer", "c-secret"
LOCAL_FEATURES = ["referrers", "delete", "tag_delete", "blob_delete", "mount", "range",
                  "single_post", "reference_check", "catalog"]  # fmt: skip


def _tweak(tmp: Path) -> Any:
    def tweak(config: dict[str, Any]) -> None:
        out = subprocess.run(["htpasswd", "-nbB", USER, PASSWORD], capture_output=True,
                             text=True, check=True)  # fmt: skip
        (tmp / "conformance-htpasswd").write_text(out.stdout)
        config["tls"]["permitted_domains"].append(LOCAL)
        config["local"] = {
            "hosts": [LOCAL],
            "auth": {"htpasswd": str(tmp / "conformance-htpasswd")},
            "access": [{"repositories": ["*"], "read": [USER], "write": [USER]}],
        }

    return tweak


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("conformance")
    with lab(tmp, _tweak(tmp)) as running:
        yield running


def _suite(clab: Lab, name: str, spec: dict[str, Any], *args: str) -> dict[str, int]:
    """Run the suite in the namespace against `spec`; its outcome counts."""
    answer = clab.ns.run("dig", "+short", "+tries=2", spec["host"], "A").stdout.split()
    assert answer, f"the namespace's DNS (regcache) does not answer {spec['host']}"
    address = answer[-1]
    spec = {**spec, "connect": f"{address}:443", "ca": str(clab.ca_dir / "ca.crt")}
    argv = clab.ns.argv(
        str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--basetemp", str(clab.tmp / f"suite-{name}"), "-o", "addopts=", "-rf", *args,
        str(REPO / "tests" / "conformance"),
    )  # fmt: skip
    env = {**os.environ, ENV_TARGET: json.dumps(spec), "PYTHONPATH": str(REPO)}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|xfailed|failed)",
                                                 out.stdout.splitlines()[-1])}  # fmt: skip
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    path = artifacts / "conformance.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = counts
    path.write_text(json.dumps(results, indent=2))
    return counts


def test_the_local_registry_passes_the_whole_suite(clab: Lab) -> None:
    counts = _suite(clab, "local", {"host": LOCAL, "auth": [USER, PASSWORD],
                                    "features": LOCAL_FEATURES})  # fmt: skip
    assert counts.get("passed", 0) >= 60 and "xfailed" not in counts, counts


def test_pushes_through_regcache_pass_the_push_section(clab: Lab) -> None:
    """Against the ghcr.io twin (distribution 2.8): its own deviations are expected as
    they are; regcache adds none."""
    counts = _suite(clab, "pass-through", {"host": "ghcr.io", "deviations": "distribution",
                                           "features": ["mount", "range"]},
                    "-m", "push")  # fmt: skip
    assert counts.get("passed", 0) >= 15, counts
