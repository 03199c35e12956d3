"""Targets of the conformance suite: each a running registry as an `Endpoint`, the tests run
once per target (`-k distribution` picks one), and the known deviations as strict xfails."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.conformance.client import Endpoint, Registry
from tests.conformance.content import warning_problems
from tests.harness import free_port

DOCKER_REGISTRY = "/usr/bin/docker-registry"
MARKERS = {
    "pull": "OCI distribution-spec conformance: the Pull category",
    "push": "OCI distribution-spec conformance: the Push category",
    "discovery": "OCI distribution-spec conformance: the Content Discovery category",
    "management": "OCI distribution-spec conformance: the Content Management category",
}

# Where Debian's distribution 2.8.2 breaks the spec (v1.1.1), each seen on the wire; the
# test still runs and must fail (strict xfail), so a fixed one shows up.
DISTRIBUTION_DEVIATIONS = {
    "test_tags_list_is_in_lexical_order": (
        "distribution 2.8 lists tags in storage directory order, unsorted"
    ),
    "test_tags_list_with_n_answers_n_tags_or_a_link": "distribution 2.8 ignores `n`",
    "test_tags_list_with_n_zero_is_empty_without_a_link": "distribution 2.8 ignores `n`",
    "test_tags_list_with_last_starts_after_that_tag": "distribution 2.8 ignores `last`",
    "test_tags_list_pages_cover_every_tag_once": "distribution 2.8 ignores `n` and `last`",
    "test_tags_list_after_the_last_tag_is_deleted_is_empty_or_404": (
        'distribution 2.8 answers {"tags": null}, not a list'
    ),
    "test_manifest_reference_in_no_valid_format_is_refused_with_a_spec_error": (
        "distribution 2.8 takes `sha256:totallywrong` for a tag and answers 500 (the storage"
        " driver refuses the path)"
    ),
    "test_blob_range_beyond_its_end_is_416": (
        "distribution 2.8 answers 416 with the whole blob's Content-Length and a 33-byte body"
    ),
    "test_chunk_out_of_order_is_416": (
        "distribution 2.8 ignores Content-Range on PATCH and appends the chunk (202)"
    ),
    "test_upload_status_answers_at_the_post_location_after_a_patch": (
        "distribution 2.8 signs the offset into Location's _state: an earlier Location"
        " answers 404 BLOB_UPLOAD_INVALID"
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry is not listening on {port}:\n{log.read_text()}")


@contextlib.contextmanager
def distribution(tmp: Path) -> Iterator[Endpoint]:
    """Debian's distribution 2.8 on loopback: filesystem storage, deletes enabled, plain
    http. Clients name it `distribution.conformance.test` (port 80): its absolute `Location`s
    carry that name, so the client's host mapping is exercised on every upload."""
    if not Path(DOCKER_REGISTRY).exists():
        pytest.skip("docker-registry (Debian's distribution) is not installed")
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }  # fmt: skip
    (tmp / "config.yml").write_text(yaml.safe_dump(config))
    log = tmp / "registry.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [DOCKER_REGISTRY, "serve", str(tmp / "config.yml")], stdout=out, stderr=out
        )
    try:
        _wait_listening(port, proc, log)
        yield Endpoint(
            host="distribution.conformance.test",
            connect=f"127.0.0.1:{port}",
            # Tag DELETE answers 400 (the spec's "disabled" answer); no referrers API; a
            # POST with ?digest= starts an upload (202), the spec's fallback.
            features=frozenset(
                {"delete", "blob_delete", "mount", "range", "reference_check", "catalog"}
            ),
            namespace=f"conformance-{secrets.token_hex(3)}",
            deviations=DISTRIBUTION_DEVIATIONS,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


ENV_TARGET = "REGCACHE_CONFORMANCE_TARGET"
"""A registry running elsewhere, as JSON: `host`, `connect`, `scheme`, `ca`, `auth`
([user, password]), `features` and `deviations` ("distribution" for its list). The
end-to-end tests run the suite this way inside their network namespace, against
regcache's local registry and through regcache to a real registry."""


@contextlib.contextmanager
def described(_tmp: Path) -> Iterator[Endpoint]:
    spec = json.loads(os.environ[ENV_TARGET])
    deviations = DISTRIBUTION_DEVIATIONS if spec.get("deviations") == "distribution" else {}
    yield Endpoint(
        host=spec["host"], connect=spec["connect"], scheme=spec.get("scheme", "https"),
        ca=Path(spec["ca"]) if spec.get("ca") else None,
        auth=tuple(spec["auth"]) if spec.get("auth") else None,  # type: ignore[arg-type]
        features=frozenset(spec.get("features", ())),
        namespace=f"conformance-{secrets.token_hex(3)}", deviations=deviations,
    )  # fmt: skip


TARGETS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Endpoint]]] = (
    {"described": described} if os.environ.get(ENV_TARGET) else {"distribution": distribution}
)


@pytest.fixture(scope="session", params=sorted(TARGETS))
def endpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Endpoint]:
    with TARGETS[request.param](tmp_path_factory.mktemp(request.param)) as running:
        yield running


@pytest.fixture
async def registry(endpoint: Endpoint) -> AsyncIterator[Registry]:
    """The client on the target; at teardown, every answer's `Warning` headers are checked
    against the spec (l.829-833), whatever the test was about."""
    async with Registry(endpoint) as client:
        yield client
    assert warning_problems(client.warnings) == []


@pytest.fixture
def new_repo(endpoint: Endpoint, request: pytest.FixtureRequest) -> Callable[[], str]:
    """Names of repositories of this test's own: `<namespace>/<test name>-<random>`."""
    name = request.node.originalname.removeprefix("test_").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", name)[:40].strip("-")
    return lambda: f"{endpoint.namespace}/{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def repo(new_repo: Callable[[], str]) -> str:
    return new_repo()


@pytest.fixture(autouse=True)
def _known_deviation(request: pytest.FixtureRequest) -> None:
    if "endpoint" not in request.fixturenames:
        return
    endpoint: Endpoint = request.getfixturevalue("endpoint")
    reason = endpoint.deviations.get(request.node.originalname)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
