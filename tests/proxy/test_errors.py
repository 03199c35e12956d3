"""Every row of the proxy's error table, through the application: the exception, where it
is met, becomes its status and registry error code (and its log line, where it has one)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from appliance.cache.answers import Filling, Refused, UpstreamMismatch
from appliance.cache.fill import FillFailed, FillState, NotKept, TooManyFills
from appliance.cache.ports import UpstreamUnavailable, UpstreamUnreachable, UpstreamUntrusted
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCTET_STREAM
from appliance.oci.routes import RouteError
from appliance.proxy.errors import ERRORS, Evicted, PushDenied, UnknownHost, Unsupported
from appliance.proxy.ranges import RangeError
from tests.proxy.conftest import REGISTRY, Proxy, registry_error
from tests.proxy.fakes import FakeFill, stored

DIGEST = Digest.of(b"layer")
BLOB = f"/v2/team/app/blobs/{DIGEST}"
MANIFEST = "/v2/team/app/manifests/v1"

# The rows the tests below exercise, one test (at least) each.
TESTED = {
    UnknownHost,
    RouteError,
    RangeError,
    FillFailed,
    NotKept,
    TooManyFills,
    Evicted,
    UpstreamMismatch,
    UpstreamUntrusted,
    UpstreamUnavailable,
    PushDenied,  # test_app_push.py::test_a_denied_push_is_refused_at_once_and_never_reaches…
    Unsupported,  # test_mirrorfront.py::test_pushes_unknown_registries_and_foreign_relays_…
}


def fresh_host() -> str:
    """A host of its own: log lines are throttled per host."""
    return f"{uuid.uuid4().hex[:8]}.{REGISTRY}"


def test_every_row_of_the_error_table_has_a_test() -> None:
    assert set(ERRORS) == TESTED


async def test_a_host_regcache_does_not_serve_gets_421_denied(proxy: Proxy) -> None:
    response = await proxy.ask("/v2/", host="elsewhere.example")
    message = await registry_error(response, 421, "DENIED")
    assert message == "'elsewhere.example' is not a registry regcache serves"
    assert proxy.upstream.sent == [] and proxy.cache.asked == []
    assert proxy.requests_counted("unknown", "ping", "GET", 421) == 1


async def test_an_invalid_digest_in_a_path_gets_400_with_the_code_naming_the_bad_part(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    host = fresh_host()
    with caplog.at_level(logging.WARNING):
        response = await proxy.ask("/v2/team/app/blobs/sha256:nothex", host=host)
    await registry_error(response, 400, "DIGEST_INVALID")
    assert f"request refused host={host} code=DIGEST_INVALID" in caplog.text
    assert proxy.cache.asked == [] and proxy.upstream.sent == []


async def test_an_encoded_slash_is_refused_before_it_could_pass_through(proxy: Proxy) -> None:
    response = await proxy.ask("/v2/team%2Fapp/tags/list")
    await registry_error(response, 400, "NAME_INVALID")
    assert proxy.upstream.sent == []


async def test_an_unsatisfiable_range_gets_416_range_invalid(proxy: Proxy, tmp_path: Path) -> None:
    blob = stored(tmp_path, b"0123456789")
    proxy.cache.answers(blob)
    response = await proxy.ask(f"/v2/team/app/blobs/{blob.digest}", Range="bytes=10-")
    await registry_error(response, 416, "RANGE_INVALID")


async def test_an_upstream_transfer_that_failed_gets_502_unknown(proxy: Proxy) -> None:
    proxy.cache.answers(FillFailed("body cut short at 512"))
    response = await proxy.ask(BLOB)
    message = await registry_error(response, 502, "UNKNOWN")
    assert message == "upstream transfer failed: body cut short at 512"


async def test_joining_a_fill_that_has_failed_gets_502_unknown_before_any_byte(
    proxy: Proxy,
) -> None:
    failed = FakeFill(b"", None, FillState.FAILED, RuntimeError("digest mismatch"))
    proxy.cache.answers(Filling(DIGEST, OCTET_STREAM, failed))  # type: ignore[arg-type]
    response = await proxy.ask(BLOB)
    message = await registry_error(response, 502, "UNKNOWN")
    assert message == "upstream transfer failed: digest mismatch"


async def test_a_range_of_a_fill_not_kept_gets_503_unavailable_and_a_retry_after(
    proxy: Proxy,
) -> None:
    why = f"{DIGEST} is not kept: the store is at its bound, store.max_size"
    fill = FakeFill(b"layer", size=5, error=NotKept(why))
    proxy.cache.answers(Filling(DIGEST, OCTET_STREAM, fill))  # type: ignore[arg-type]
    response = await proxy.ask(BLOB, Range="bytes=0-1")  # short of the end: waits for it
    assert await registry_error(response, 503, "UNAVAILABLE") == why
    assert response.headers["Retry-After"] == "5" and fill.waited


async def test_too_many_fills_gets_503_unavailable_and_a_retry_after(proxy: Proxy) -> None:
    proxy.cache.answers(TooManyFills("256 transfers running"))
    response = await proxy.ask(BLOB)
    await registry_error(response, 503, "UNAVAILABLE")
    assert response.headers["Retry-After"] == "1"


async def test_content_evicted_on_every_attempt_gets_503_unavailable(
    proxy: Proxy, tmp_path: Path
) -> None:
    gone = stored(tmp_path, b"layer")
    gone.path.unlink()  # evicted between the lookup and the open
    proxy.cache.answers(gone)
    response = await proxy.ask(BLOB)
    message = await registry_error(response, 503, "UNAVAILABLE")
    assert message == "content was evicted while being served"
    assert len(proxy.cache.asked) == 2  # asked again once: a miss the second time, usually


async def test_content_evicted_once_is_asked_for_again_and_served(
    proxy: Proxy, tmp_path: Path
) -> None:
    directory = tmp_path / "first"
    directory.mkdir()
    gone = stored(directory, b"layer")
    gone.path.unlink()
    there = stored(tmp_path, b"layer")
    proxy.cache.answers(gone, there)
    response = await proxy.ask(BLOB)
    assert response.status == 200 and await response.read() == b"layer"
    assert len(proxy.cache.asked) == 2


async def test_upstream_content_that_does_not_match_gets_502_unknown_and_a_log_line(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.cache.answers(UpstreamMismatch("Content-Length 5 for a 9-byte manifest"))
    with caplog.at_level(logging.WARNING):
        response = await proxy.ask(MANIFEST)
    message = await registry_error(response, 502, "UNKNOWN")
    assert message == "upstream sent inconsistent content: Content-Length 5 for a 9-byte manifest"
    assert f"upstream mismatch host={REGISTRY} path={MANIFEST}" in caplog.text


async def test_an_untrusted_upstream_certificate_gets_502_unavailable_naming_it(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    host = fresh_host()
    proxy.cache.answers(UpstreamUntrusted("certificate verify failed: self-signed"))
    with caplog.at_level(logging.WARNING):
        response = await proxy.ask(BLOB, host=host)
    message = await registry_error(response, 502, "UNAVAILABLE")
    assert message == f"upstream {host} its TLS certificate was not accepted"
    assert f"upstream unavailable host={host} path={BLOB}" in caplog.text
    assert "self-signed" in caplog.text  # the details go to the log...


@pytest.mark.parametrize(
    "error",
    [
        UpstreamUnavailable("read timeout after 30 s"),
        UpstreamUnreachable("connection refused", "registry.example"),  # a subclass: same row
    ],
    ids=["unavailable", "unreachable"],
)
async def test_an_unavailable_upstream_gets_502_unavailable_without_the_details(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, error: UpstreamUnavailable
) -> None:
    host = fresh_host()
    proxy.cache.answers(error)
    with caplog.at_level(logging.WARNING):
        response = await proxy.ask(MANIFEST, host=host)
    message = await registry_error(response, 502, "UNAVAILABLE")
    # ...not to the client: the answer must not differ between content regcache holds
    # and content it does not (THREAT_MODEL.md).
    assert message == f"upstream {host} unavailable"
    assert f"upstream unavailable host={host} path={MANIFEST} error={error}" in caplog.text


async def test_an_exception_outside_the_table_is_not_dressed_as_a_registry_error(
    proxy: Proxy,
) -> None:
    proxy.cache.answers(KeyError("a bug"))
    response = await proxy.ask(BLOB)
    assert response.status == 500
    assert response.content_type != "application/json"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (MANIFEST, 404, "MANIFEST_UNKNOWN"),
        (BLOB, 404, "BLOB_UNKNOWN"),
        (BLOB, 403, "DENIED"),
        (MANIFEST, 418, "UNKNOWN"),
    ],
)
async def test_upstreams_refusal_is_passed_on_as_a_registry_error(
    proxy: Proxy, path: str, status: int, code: str
) -> None:
    proxy.cache.answers(Refused(status))
    response = await proxy.ask(path)
    await registry_error(response, status, code)
    assert "WWW-Authenticate" not in response.headers and "Retry-After" not in response.headers
