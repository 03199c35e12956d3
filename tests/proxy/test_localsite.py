"""The local registry through the proxy application: pushes in every upload style, pulls,
tags, referrers and deletes, answered by regcache alone (the fake upstream is never
asked), and who may do what (htpasswd users, regcache's own token realm)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from appliance.cache.ports import Unbounded
from appliance.config.hostnames import Hostname
from appliance.config.local import LocalAuth, LocalConfig, LocalRule
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.proxy.localsite import LocalSite
from appliance.proxy.loops import Bridge
from appliance.runtime.local import build_local
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.proxy.registry import LOCAL, Stack, stack

OPEN = LocalConfig(access=(LocalRule(read=("anonymous",), write=("anonymous",)),))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def ask(s: Stack, path: str, method: str = "GET", body: bytes | None = None,
              **headers: str) -> Any:  # fmt: skip
    return await s.ask(path, method, LOCAL, body, **headers)


async def push_blob(s: Stack, repo: str, data: bytes, **headers: str) -> str:
    digest = sha(data)
    r = await ask(s, f"/v2/{repo}/blobs/uploads/?digest={digest}", "POST", data, **headers)
    assert r.status == 201, await r.text()
    assert r.headers["Docker-Content-Digest"] == digest
    return digest


def image_manifest(config: str, layers: list[str], **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                    "size": 1} for d in layers],
        **extra,
    }  # fmt: skip
    return json.dumps(doc).encode()


async def push_image(s: Stack, repo: str, tag: str, **headers: str) -> tuple[str, bytes]:
    config = await push_blob(s, repo, b"{}", **headers)
    layer = await push_blob(s, repo, repo.encode() + tag.encode(), **headers)
    body = image_manifest(config, [layer])
    r = await ask(s, f"/v2/{repo}/manifests/{tag}", "PUT", body, Content_Type=OCI_MANIFEST,
                  **headers)  # fmt: skip
    assert r.status == 201, await r.text()
    assert r.headers["Docker-Content-Digest"] == sha(body)
    return sha(body), body


async def test_a_pushed_image_is_pulled_by_tag_and_digest_and_upstream_is_never_asked(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client, OPEN) as s:
        digest, body = await push_image(s, "team/app", "v1")
        for ref in ("v1", digest):
            r = await ask(s, f"/v2/team/app/manifests/{ref}")
            assert r.status == 200 and await r.read() == body
            assert r.headers["Content-Type"] == OCI_MANIFEST
        layer = json.loads(body)["layers"][0]["digest"]
        r = await ask(s, f"/v2/team/app/blobs/{layer}", Range="bytes=1-3")
        assert r.status == 206 and await r.read() == b"eam"
        assert s.registry.seen == []


async def test_a_chunked_upload_with_an_out_of_order_chunk_is_refused_and_kept_going(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client, OPEN) as s:
        r = await ask(s, "/v2/app/blobs/uploads/", "POST")
        assert r.status == 202
        location = r.headers["Location"]
        r = await ask(s, location, "PATCH", b"hello ", Content_Range="0-5")
        assert r.status == 202 and r.headers["Range"] == "0-5"
        r = await ask(s, r.headers["Location"], "PATCH", b"xx", Content_Range="9-10")
        assert r.status == 416 and r.headers["Range"] == "0-5"
        r = await ask(s, location, "PATCH", b"world")  # docker's way: no Content-Range
        assert r.status == 202
        status = await ask(s, location)
        assert status.status == 204 and status.headers["Range"] == "0-10"
        bad = await ask(s, f"{location}?digest={sha(b'other')}", "PUT")
        assert bad.status == 400 and "DIGEST_INVALID" in await bad.text()
        assert (await ask(s, location)).status == 404  # a bad digest ends the upload


async def test_a_blob_is_mounted_from_another_repository_only_if_it_is_there(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client, OPEN) as s:
        digest = await push_blob(s, "a", b"shared")
        r = await ask(s, f"/v2/b/blobs/uploads/?mount={digest}&from=a", "POST")
        assert r.status == 201 and r.headers["Location"] == f"/v2/b/blobs/{digest}"
        assert (await ask(s, f"/v2/b/blobs/{digest}", "HEAD")).status == 200
        r = await ask(s, f"/v2/c/blobs/uploads/?mount={digest}&from=nowhere", "POST")
        assert r.status == 202  # an upload instead
        assert (await ask(s, f"/v2/c/blobs/{digest}", "HEAD")).status == 404


async def test_a_manifest_naming_a_blob_not_in_its_repository_is_refused(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client, OPEN) as s:
        config = await push_blob(s, "other", b"{}")  # pushed elsewhere only
        body = image_manifest(config, [])
        r = await ask(s, "/v2/app/manifests/v1", "PUT", body, Content_Type=OCI_MANIFEST)
        assert r.status == 400 and "MANIFEST_BLOB_UNKNOWN" in await r.text()


async def test_tags_page_with_a_link_and_deletes_remove_tags_and_manifests(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client, OPEN) as s:
        digest, _ = await push_image(s, "app", "b")
        for tag in ("a", "c"):
            await push_image(s, "app", tag)
        r = await ask(s, "/v2/app/tags/list?n=2")
        assert (await r.json())["tags"] == ["a", "b"]
        assert r.headers["Link"] == '</v2/app/tags/list?n=2&last=b>; rel="next"'
        assert (await (await ask(s, "/v2/app/tags/list?last=b")).json())["tags"] == ["c"]
        assert (await ask(s, "/v2/app/manifests/a", "DELETE")).status == 202
        assert (await ask(s, "/v2/app/manifests/a")).status == 404
        assert (await ask(s, f"/v2/app/manifests/{digest}", "DELETE")).status == 202
        assert (await ask(s, f"/v2/app/manifests/{digest}")).status == 404
        assert (await (await ask(s, "/v2/app/tags/list")).json())["tags"] == ["c"]
        assert (await ask(s, "/v2/nothing/tags/list")).status == 404


async def test_referrers_are_found_by_subject_and_filtered_by_artifact_type(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client, OPEN) as s:
        subject, body = await push_image(s, "app", "v1")
        empty = await push_blob(s, "app", b"{}")
        sig = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty,
                       "size": 2},
            "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject,
                                      "size": len(body)},
            "annotations": {"signed": "yes"},
        }).encode()  # fmt: skip
        r = await ask(s, f"/v2/app/manifests/{sha(sig)}", "PUT", sig, Content_Type=OCI_MANIFEST)
        assert r.status == 201 and r.headers["OCI-Subject"] == subject
        r = await ask(s, f"/v2/app/referrers/{subject}")
        assert r.status == 200 and r.headers["Content-Type"] == OCI_INDEX
        (found,) = (await r.json())["manifests"]
        assert found["digest"] == sha(sig) and found["annotations"] == {"signed": "yes"}
        r = await ask(s, f"/v2/app/referrers/{subject}?artifactType=other")
        assert (await r.json())["manifests"] == [] and r.headers["OCI-Filters-Applied"]


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    for user, password in (("alice", "wonder"), ("bob", "builder")):
        out = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True,
                             text=True, check=True)  # fmt: skip
        with path.open("a") as f:
            f.write(out.stdout.strip() + "\n")
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_the_token_realm_grants_what_the_rules_allow_and_no_more(
    tmp_path: Path, aiohttp_client: Any, users: Path
) -> None:
    config = LocalConfig(
        auth=LocalAuth(htpasswd=users),
        access=(LocalRule(("team/*",), read=("*",), write=("alice",)),),
    )
    async with stack(tmp_path, aiohttp_client, config) as s:
        r = await ask(s, "/v2/")
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="https://{LOCAL}/token"')
        r = await ask(s, "/v2/team/app/blobs/uploads/", "POST")
        assert r.status == 401 and 'scope="repository:team/app:pull,push"' in r.headers[
            "WWW-Authenticate"]  # fmt: skip
        scope = "scope=repository:team/app:pull,push"
        for who, secret, granted in (("alice", "wonder", ["pull", "push"]),
                                     ("bob", "builder", ["pull"])):  # fmt: skip
            r = await ask(s, f"/token?service={LOCAL}&{scope}", Authorization=basic(who, secret))
            token = (await r.json())["token"]
            claims = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
            assert claims["access"] == {"team/app": granted}
            bearer = {"Authorization": f"Bearer {token}"}
            if who == "alice":
                await push_image(s, "team/app", "v1", **bearer)
            else:
                assert (await ask(s, "/v2/team/app/manifests/v1", **bearer)).status == 200
                r = await ask(s, "/v2/team/app/blobs/uploads/", "POST", **bearer)
                assert r.status == 403 and "DENIED" in await r.text()
        r = await ask(s, "/token", Authorization=basic("alice", "wrong"))
        assert r.status == 401
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        assert (await ask(s, "/v2/team/app/manifests/v1", Authorization=f"Bearer {forged}")
                ).status == 401  # fmt: skip
        r = await ask(s, "/v2/elsewhere/manifests/v1", Authorization=basic("alice", "wonder"))
        assert r.status == 403  # no rule names the repository: nobody may


async def test_basic_scheme_checks_each_request_and_refuses_unknown_users(
    tmp_path: Path, aiohttp_client: Any, users: Path
) -> None:
    config = LocalConfig(auth=LocalAuth(htpasswd=users, scheme="basic"))
    async with stack(tmp_path, aiohttp_client, config) as s:
        r = await ask(s, "/v2/app/manifests/v1")
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
        await push_image(s, "app", "v1", Authorization=basic("bob", "builder"))
        r = await ask(s, "/v2/app/manifests/v1", Authorization=basic("carol", "x"))
        assert r.status == 401
        r = await ask(s, "/v2/_catalog", Authorization=basic("alice", "wonder"))
        assert (await r.json())["repositories"] == ["app"]


async def test_the_realm_takes_an_oauth2_password_grant_as_containerd_sends_it(
    tmp_path: Path, aiohttp_client: Any, users: Path
) -> None:
    config = LocalConfig(auth=LocalAuth(htpasswd=users))
    async with stack(tmp_path, aiohttp_client, config) as s:
        form = {"grant_type": "password", "username": "alice", "password": "wonder",
                "service": LOCAL, "client_id": "containerd",
                "scope": "repository:app:pull,push repository:base:pull"}  # fmt: skip
        r = await s.client.post("/token", data=form, headers={"Host": LOCAL})
        assert r.status == 200, await r.text()
        answer = await r.json()
        claims = json.loads(base64.urlsafe_b64decode(answer["access_token"].split(".")[0] + "=="))
        assert claims["access"] == {"app": ["pull", "push"], "base": ["pull"]}
        await push_image(s, "app", "v1", Authorization=f"Bearer {answer['access_token']}")
        r = await s.client.post(
            "/token", data={**form, "password": "nope"}, headers={"Host": LOCAL}
        )
        assert r.status == 401
        r = await s.client.post("/token", data={**form, "grant_type": "refresh_token"},
                                headers={"Host": LOCAL})  # fmt: skip
        assert r.status == 400 and (await r.json())["error"] == "unsupported_grant_type"


async def test_writes_wait_while_the_store_is_checked_at_start_and_reads_go_on(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    files = FileBlobStore(tmp_path / "store")
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    try:
        built = build_local(replace(OPEN, hosts=(Hostname(LOCAL),)), index, files, Unbounded())
        assert built is not None
        ready = False
        site = LocalSite(built.registry, built.access, Bridge(None), lambda: ready)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", site.handle)
        client = await aiohttp_client(app)
        r = await client.post("/v2/app/blobs/uploads/", headers={"Host": LOCAL})
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        r = await client.get("/v2/app/tags/list", headers={"Host": LOCAL})
        assert r.status == 404 and "NAME_UNKNOWN" in await r.text()  # answered, not held
        ready = True
        r = await client.post("/v2/app/blobs/uploads/", headers={"Host": LOCAL})
        assert r.status == 202
    finally:
        await index.close()


async def test_the_realm_is_named_at_the_port_the_client_reached(
    tmp_path: Path, aiohttp_client: Any, users: Path
) -> None:
    async with stack(tmp_path, aiohttp_client, LocalConfig(auth=LocalAuth(htpasswd=users))) as s:
        r = await s.ask("/v2/", host=f"{LOCAL}:8443")
        assert r.headers["WWW-Authenticate"] == (
            f'Bearer realm="https://{LOCAL}:8443/token",service="{LOCAL}"'
        )
        scope = "/token?scope=repository:app:pull,push"
        r = await s.ask(scope, host=f"{LOCAL}:8443", Authorization=basic("alice", "wonder"))
        token = (await r.json())["token"]
        await push_image(s, "app", "v1", Authorization=f"Bearer {token}")  # Host without port
        r = await s.ask("/token", host=LOCAL, Authorization=f"Bearer {token}")
        payload = (await r.json())["token"].split(".")[0]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        assert claims["sub"] is None  # a token buys no other: the realm takes passwords only


async def test_pulls_are_in_the_audit_log_with_who_and_what(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client, OPEN) as s:
        digest, body = await push_image(s, "team/app", "v1")
        assert s.audit == []  # pushes are not pulls
        await (await ask(s, "/v2/team/app/manifests/v1")).read()
        assert (await ask(s, "/v2/team/app/manifests/v9")).status == 404
        (entry,) = s.audit
        assert (entry["registry"], entry["repository"], entry["reference"], entry["digest"],
                entry["kind"], entry["status"], entry["bytes"], entry["outcome"]) == (
            LOCAL, "team/app", "v1", digest, "manifest", 200, len(body), "local")  # fmt: skip
