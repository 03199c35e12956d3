"""Small upstream-side servers the lab needs where no real component exists.

- `token`: a registry token realm (docker/distribution token spec). Grants every scope
  asked for, anonymously, as an ES256 JWT whose x5c chains to the upstream test CA.
- `ratelimit`: a reverse proxy adding Docker Hub's `ratelimit-*` headers to a registry.
- `cdn`: serves a registry's storage folder over TLS, where distribution's `redirect`
  middleware sends blob GETs; it can be throttled, told to corrupt given blobs, or to
  reset, cut or stall them mid-body.

Run inside the lab's namespace: `python -m tests.e2e.servers token|cdn ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from multidict import CIMultiDict

ISSUER = "regcache-test-issuer"
ALICE = "Basic " + base64.b64encode(b"alice:Wonder-1and").decode()
DAVE = "Basic " + base64.b64encode(b"dave:dave-Pa55word").decode()
USERS = {ALICE: "alice", DAVE: "dave"}
# Repositories under private/ are alice's alone, under dave/ dave's; the rest is public.
OWNERS = {"private/": "alice", "dave/": "dave"}


def _may(user: str | None, repository: str) -> bool:
    owner = next((o for prefix, o in OWNERS.items() if repository.startswith(prefix)), None)
    return owner is None or owner == user


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, claims: dict[str, object]
) -> str:
    der = cert.public_bytes(serialization.Encoding.DER)
    header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def token_app(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, log: Path
) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        basic = request.headers.get("Authorization", "")
        if basic and basic not in USERS:
            return web.json_response({"details": "incorrect username or password"}, status=401)
        user = USERS.get(basic)
        access = []
        for scope in request.query.getall("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = actions.split(",") if _may(user, name) else []
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": "", "aud": service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}  # fmt: skip
        seen = {"service": service, "scopes": request.query.getall("scope", []),
                "user": user}  # fmt: skip
        with log.open("a") as f:
            f.write(json.dumps(seen) + "\n")
        return web.json_response({"token": make_jwt(key, cert, claims), "expires_in": 300})

    app = web.Application()
    app.router.add_get("/token", token)
    return app


def cdn_app(
    root: Path, rate_bytes_s: int, corrupt: Path, faults: Path | None = None
) -> web.Application:
    """Serves blob files; `corrupt` lists digests to serve with a flipped first byte, and
    `faults` (JSON, re-read per request) maps a digest to what goes wrong mid-body:
    {"mode": "reset" | "truncate" | "stall", "at": byte, "seconds": stall}."""

    async def serve(request: web.Request) -> web.StreamResponse:
        path = (root / request.match_info["tail"]).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            return web.Response(status=404)
        data = path.read_bytes()
        bad = corrupt.read_text().split() if corrupt.exists() else []
        if any(digest.split(":")[1] in str(path) for digest in bad):
            data = bytes([data[0] ^ 0xFF]) + data[1:]  # same length, wrong bytes
        table = json.loads(faults.read_text()) if faults and faults.exists() else {}
        fault = next((f for d, f in table.items() if d.split(":")[1] in str(path)), None)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(data)
        await response.prepare(request)
        if request.method == "HEAD":  # headers only, as a CDN answers
            await response.write_eof()
            return response
        at = len(data) if fault is None else int(fault["at"])
        await _send(response, data[:at], rate_bytes_s)
        if fault is not None:
            if fault["mode"] == "stall":
                await asyncio.sleep(float(fault["seconds"]))
            else:
                _hang_up(request, reset=fault["mode"] == "reset")
                return response
        await _send(response, data[at:], rate_bytes_s)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    return app


async def _send(response: web.StreamResponse, data: bytes, rate_bytes_s: int) -> None:
    step = 64 * 1024
    for i in range(0, len(data), step):
        await response.write(data[i : i + step])
        if rate_bytes_s:
            await asyncio.sleep(step / rate_bytes_s)


def _hang_up(request: web.Request, *, reset: bool) -> None:
    """End the connection mid-body: a TCP reset (SO_LINGER 0), or a clean close."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


def redirector_app(target: str) -> web.Application:
    """A registry front that answers every manifest and blob request with a 307 before
    knowing whether the content exists, as registry.k8s.io does: to `target` (a registry
    origin) under `k8s-artifacts-prod/images/`."""

    async def ping(_request: web.Request) -> web.Response:
        return web.json_response({})

    async def redirect(request: web.Request) -> web.Response:
        name, kind, reference = (request.match_info[k] for k in ("name", "kind", "reference"))
        location = f"{target}/v2/k8s-artifacts-prod/images/{name}/{kind}/{reference}"
        return web.Response(status=307, headers={"Location": location})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    app.router.add_route("*", r"/v2/{name:.+}/{kind:manifests|blobs}/{reference:[^/]+}", redirect)
    return app


def fault_app(status: int) -> web.Application:
    """Every request answered with `status` (an upstream in trouble: 503, 429)."""

    async def fail(_request: web.Request) -> web.Response:
        body = {"errors": [{"code": "UNAVAILABLE" if status != 429 else "TOOMANYREQUESTS",
                            "message": "test fault"}]}  # fmt: skip
        return web.json_response(body, status=status, headers={"Retry-After": "30"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    return app


_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                  "host"})  # fmt: skip


def ratelimit_app(target: str, remaining: Path, log: Path) -> web.Application:
    """A reverse proxy in front of a registry at `target` that adds Docker Hub's rate-limit
    headers to every answer (`ratelimit-remaining` from the file `remaining`, default 100)
    and logs each request as `METHOD PATH` (bodies stream both ways, unchanged)."""

    async def relay(request: web.Request) -> web.StreamResponse:
        with log.open("a") as out:
            out.write(f"{request.method} {request.path_qs}\n")
        left = remaining.read_text().strip() if remaining.exists() else "100"
        # A multidict: clients send several Accept headers, each must reach the registry.
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        session: aiohttp.ClientSession = request.app["session"]
        body = request.content if request.body_exists else None
        async with session.request(request.method, target + request.path_qs, headers=headers,
                                   data=body, allow_redirects=False) as up:  # fmt: skip
            response = web.StreamResponse(status=up.status)
            for key, value in up.headers.items():
                if key.lower() not in _HOP:
                    response.headers.add(key, value)
            response.headers["ratelimit-limit"] = "100;w=21600"
            response.headers["ratelimit-remaining"] = f"{left};w=21600"
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in up.content.iter_chunked(1 << 16):
                    await response.write(chunk)
            await response.write_eof()
            return response

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(ssl=False)  # the registry behind, on loopback
        app["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app["session"].close()

    app = web.Application(client_max_size=0)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["token", "cdn", "fault", "redirector", "ratelimit"])
    parser.add_argument("--remaining")
    parser.add_argument("--target")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--signing-cert")
    parser.add_argument("--signing-key")
    parser.add_argument("--log")
    parser.add_argument("--root")
    parser.add_argument("--rate", type=int, default=0)
    parser.add_argument("--corrupt")
    parser.add_argument("--faults")
    parser.add_argument("--status", type=int, default=503)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    if args.role == "token":
        key = serialization.load_pem_private_key(Path(args.signing_key).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(Path(args.signing_cert).read_bytes())
        app = token_app(key, cert, Path(args.log))
    elif args.role == "fault":
        app = fault_app(args.status)
    elif args.role == "redirector":
        app = redirector_app(args.target)
    elif args.role == "ratelimit":
        app = ratelimit_app(args.target, Path(args.remaining), Path(args.log))
    else:
        faults = Path(args.faults) if args.faults else None
        app = cdn_app(Path(args.root), args.rate, Path(args.corrupt), faults)
    host, port = args.listen.rsplit(":", 1)
    web.run_app(app, host=host, port=int(port), ssl_context=context, print=None)


if __name__ == "__main__":
    main()
