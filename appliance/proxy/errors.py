"""Registry error answers: one table from exception to HTTP status, error code and log line.

Every error a client gets from the proxy is rendered here, in the registry error format
(distribution spec, "Error Codes"): exceptions through `ERRORS`, upstream's refusals
(the cache's `Refused` answer) through `refusal`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from appliance.cache.answers import Refused, UpstreamMismatch
from appliance.cache.fill import FillFailed, NotKept, TooManyFills
from appliance.cache.ports import UpstreamUnavailable, UpstreamUntrusted
from appliance.kit.logthrottle import LogThrottle
from appliance.oci.routes import RouteError
from appliance.proxy.ranges import RangeError

log = logging.getLogger(__name__)
_outage_log = LogThrottle(log, interval_s=300.0)
_refused_log = LogThrottle(log, interval_s=60.0)

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


class UnknownHost(Exception):
    """The request's Host is not a registry regcache serves (a misdirected request)."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{host!r} is not a registry regcache serves")


class PushDenied(Exception):
    """A push to a repository whose `registries[].push` policy is deny."""

    def __init__(self, host: str, repository: str) -> None:
        super().__init__(
            f"pushing to {host}/{repository} through this gateway is denied by its policy"
            " (registries[].push)"
        )


class Unsupported(Exception):
    """A request this endpoint does not take (a push to the mirror endpoint)."""


class Evicted(Exception):
    """The stored content went away between lookup and open, on every attempt."""


def registry_error(status: int, code: str, message: str) -> web.Response:
    """The one place HTTP errors are rendered, in the registry error format."""
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=API_VERSION
    )


def _text(e: Exception, _request: web.Request) -> str:
    return str(e)


def _transfer_failed(e: Exception, _request: web.Request) -> str:
    return f"upstream transfer failed: {e}"


def _inconsistent(e: Exception, _request: web.Request) -> str:
    return f"upstream sent inconsistent content: {e}"


def _untrusted(_e: Exception, request: web.Request) -> str:
    return f"upstream {request.host:.100} its TLS certificate was not accepted"


def _unavailable(_e: Exception, request: web.Request) -> str:
    return f"upstream {request.host:.100} unavailable"


def _own_code(e: Exception) -> str:
    """The code an exception names itself (a bad path: which part is bad)."""
    return e.code if isinstance(e, RouteError) else "UNKNOWN"


def _log_refused(e: Exception, request: web.Request) -> None:
    _refused_log.warning(
        f"bad-request {request.host}", "request refused host=%.100s code=%s error=%s",
        request.host, _own_code(e), e,
    )  # fmt: skip


def _log_mismatch(e: Exception, request: web.Request) -> None:
    log.warning("upstream mismatch host=%s path=%s error=%s", request.host, request.path, e)


def _log_unavailable(e: Exception, request: web.Request) -> None:
    _outage_log.warning(
        f"unavailable {request.host}", "upstream unavailable host=%.100s path=%.200s error=%s",
        request.host, request.path, e,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ErrorRule:
    status: int
    code: str | None
    """None: the code the exception names (`RouteError.code`)."""
    message: Callable[[Exception, web.Request], str] = _text
    log: Callable[[Exception, web.Request], None] | None = None
    """Where the error is handled, so where it is logged; None: not worth a line."""
    retry_after: str | None = None


# Looked up along the exception's MRO: a subclass without a row of its own (e.g.
# UpstreamUnreachable) gets its base's. The details of an outage stay in the log: the
# answer must not differ between content regcache holds and content it does not
# (THREAT_MODEL.md).
ERRORS: Mapping[type[Exception], ErrorRule] = {
    UnknownHost: ErrorRule(421, "DENIED"),
    # 403, not 405: docker retries a 405 push in a loop; a DENIED error it reports and stops.
    PushDenied: ErrorRule(403, "DENIED"),
    Unsupported: ErrorRule(405, "UNSUPPORTED"),
    RouteError: ErrorRule(400, None, log=_log_refused),
    RangeError: ErrorRule(416, "RANGE_INVALID"),
    FillFailed: ErrorRule(502, "UNKNOWN", _transfer_failed),
    # Streamed through uncached (no room): an answer that needs the stored copy (a range
    # short of the end) is told at once, and may have it when asked again.
    NotKept: ErrorRule(503, "UNAVAILABLE", retry_after="5"),
    # 503, not 429: regcache is busy for a moment, not the client over a quota. Docker
    # retries a layer download that got a 5xx, never one refused with TOOMANYREQUESTS
    # (moby distribution/errors.go, retryOnError).
    TooManyFills: ErrorRule(503, "UNAVAILABLE", retry_after="1"),
    Evicted: ErrorRule(503, "UNAVAILABLE"),
    UpstreamMismatch: ErrorRule(502, "UNKNOWN", _inconsistent, _log_mismatch),
    UpstreamUntrusted: ErrorRule(502, "UNAVAILABLE", _untrusted, _log_unavailable),
    UpstreamUnavailable: ErrorRule(502, "UNAVAILABLE", _unavailable, _log_unavailable),
}
_HANDLED = tuple(ERRORS)


def rule_for(e: Exception) -> ErrorRule | None:
    """The table's row for `e`: its own type's, else its nearest base's."""
    for cls in type(e).__mro__:
        rule = ERRORS.get(cls)
        if rule is not None:
            return rule
    return None


def error_response(e: Exception, request: web.Request) -> web.Response:
    """The registry error answer for `e`, which must have a row in `ERRORS`."""
    rule = rule_for(e)
    if rule is None:
        raise e
    if rule.log is not None:
        rule.log(e, request)
    response = registry_error(rule.status, rule.code or _own_code(e), rule.message(e, request))
    if rule.retry_after is not None:
        response.headers["Retry-After"] = rule.retry_after
    if isinstance(e, RangeError) and e.size is not None:
        response.headers["Content-Range"] = f"bytes */{e.size}"
    return response


@web.middleware
async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception in `ERRORS` into its registry error; others propagate."""
    try:
        return await handler(request)
    except _HANDLED as e:
        return error_response(e, request)


_REFUSALS = {
    401: ("UNAUTHORIZED", "authentication required"),
    403: ("DENIED", "requested access to the resource is denied"),
    429: ("TOOMANYREQUESTS", "upstream rate limit reached"),
}


def refusal(refused: Refused, *, manifest: bool) -> web.Response:
    """Upstream's no, the same whether or not the content is in the store."""
    if refused.status == 404:
        code, message = (
            ("MANIFEST_UNKNOWN", "manifest unknown")
            if manifest
            else ("BLOB_UNKNOWN", "blob unknown to registry")
        )
    elif refused.status >= 500:
        code, message = "UNAVAILABLE", f"upstream answered {refused.status}"
    else:
        code, message = _REFUSALS.get(
            refused.status, ("UNKNOWN", f"upstream answered {refused.status}")
        )
    response = registry_error(refused.status, code, message)
    response.headers.update(refused.headers)
    return response
