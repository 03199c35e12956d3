"""No private content to the wrong client: a verdict per host, repository, digest and
credential, against a real store and index with the upstream port faked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.answers import Filling, Refused, Stored, Target
from appliance.cache.negative import NegativeCache
from appliance.cache.ports import UpstreamUnavailable, UpstreamUnreachable
from appliance.cache.service import RegistryCache
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeUpstream
from tests.mirror.images import Image, image
from tests.mirror.rig import Rig

HUB = "https://registry-1.docker.io"
GHCR = "https://ghcr.io"
LAYER = b"shared layer " * 1000
DIGEST = Digest.of(LAYER)
SECRET_LAYER = b"private only " * 500
SECRET = Digest.of(SECRET_LAYER)
PRIVATE = f"{HUB}/v2/acme/secret/blobs/{DIGEST}"
PUBLIC = f"{HUB}/v2/library/base/blobs/{DIGEST}"
DENIED = '{"errors":[{"code":"UNAUTHORIZED"}]}'
CHALLENGE = 'Bearer realm="https://auth.docker.io/token"'


def manifest_of(*layers: bytes, foreign: bytes | None = None) -> bytes:
    descriptors = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(Digest.of(b)),
         "size": len(b)} for b in layers
    ]  # fmt: skip
    if foreign is not None:  # a layer fetched from elsewhere: the registry checks nothing
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.nondistributable"
                            ".v1.tar", "digest": str(Digest.of(foreign)), "size": len(foreign),
                            "urls": ["https://example.com/layer"]})  # fmt: skip
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": descriptors,
                       "config": descriptors[0]}).encode()  # fmt: skip


def as_(repository: str, token: str | None, origin: str = HUB) -> Target:
    headers = {"Authorization": token} if token else {}
    return Target(origin, repository, headers, frozenset({OCI_MANIFEST}))


@dataclass
class Lab:
    cache: RegistryCache
    upstream: FakeUpstream
    index: SqliteIndex
    files: FileBlobStore
    now: list[float]
    offline: list[bool]

    def gate(self) -> AccessGate:
        return self.cache._gate

    def restart(self) -> None:
        """A new gate and cache over the same store and index: memory is gone."""
        gate = _gate(self.upstream, self.index, self.files, self.now, self.offline)
        self.cache = RegistryCache(self.files, self.index, self.upstream, gate)  # type: ignore[arg-type]


def _gate(
    upstream: FakeUpstream,
    index: SqliteIndex,
    files: FileBlobStore,
    now: list[float],
    offline: list[bool],
) -> AccessGate:
    return AccessGate(
        upstream,  # type: ignore[arg-type]
        index,
        files,
        verified_ttl_s=300,
        public_ttl_s=3600,
        outage_grace_s=86400,
        offline=lambda: offline[0],
        clock=lambda: now[0],
        wall_clock=lambda: now[0],
    )


def serve(upstream: FakeUpstream, url: str, body: bytes, *, auth: str | None = None) -> None:
    for method in ("HEAD", "GET"):
        upstream.add(method, url, 200, body if method == "GET" else b"", auth=auth,
                     Content_Length=str(len(body)),
                     Docker_Content_Digest=str(Digest.of(body)))  # fmt: skip


def refuse(upstream: FakeUpstream, url: str, status: int = 401) -> None:
    for method in ("HEAD", "GET"):
        upstream.add(method, url, status, DENIED.encode() if method == "GET" else b"",
                     WWW_Authenticate=CHALLENGE)  # fmt: skip


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    now, offline = [1000.0], [False]
    serve(upstream, PRIVATE, LAYER, auth="Bearer alice")  # private: only alice's token
    refuse(upstream, PRIVATE)
    serve(upstream, PUBLIC, LAYER)  # the same layer in a public repository
    gate = _gate(upstream, index, files, now, offline)
    yield Lab(RegistryCache(files, index, upstream, gate), upstream, index, files, now, offline)  # type: ignore[arg-type]
    await index.close()


async def drain(answer: object) -> bytes:
    assert isinstance(answer, Filling)
    return b"".join([c async for c in answer.fill.stream(0, 1 << 40)])


async def stored(lab: Lab, target: Target, digest: Digest) -> None:
    """Wait for a fill's commit (fsync, rename, index row follow the last byte)."""
    for _ in range(200):
        if lab.files.size_of(digest) is not None and await lab.index.blob(digest) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{digest} was not stored")


async def learn_public_base(lab: Lab) -> None:
    """An anonymous client pulls library/base's tag, whose manifest lists LAYER: the
    gate learns (in the background) that anyone may read it."""
    tag = f"{HUB}/v2/library/base/manifests/latest"
    base_manifest = manifest_of(LAYER)
    serve(lab.upstream, tag, base_manifest)
    serve(lab.upstream, f"{HUB}/v2/library/base/manifests/{Digest.of(base_manifest)}",
          base_manifest)  # fmt: skip
    assert isinstance(await lab.cache.manifest(as_("library/base", None), "latest", head=False),
                      Stored)  # fmt: skip
    await asyncio.sleep(0.05)  # the background public probe


async def fill_privately(lab: Lab) -> None:
    assert await drain(await lab.cache.blob(as_("acme/secret", "Bearer alice"), DIGEST,
                                            head=False)) == LAYER  # fmt: skip
    await stored(lab, as_("acme/secret", "Bearer alice"), DIGEST)


@pytest.mark.parametrize("token", [None, "Bearer mallory"], ids=["no-credentials", "wrong"])
@pytest.mark.parametrize("head", [False, True], ids=["GET", "HEAD"])
async def test_stored_private_blob_is_refused_to_others(lab: Lab, token, head) -> None:  # type: ignore[no-untyped-def]
    await fill_privately(lab)
    answer = await lab.cache.blob(as_("acme/secret", token), DIGEST, head=head)
    assert answer == Refused(401, CHALLENGE)


async def test_a_refused_stored_digest_costs_one_request_like_an_absent_one(lab: Lab) -> None:
    await fill_privately(lab)
    calls = len(lab.upstream.calls)
    assert isinstance(await lab.cache.blob(as_("acme/secret", None), DIGEST, head=False), Refused)
    assert len(lab.upstream.calls) == calls + 1  # one HEAD: no second GET for a body
    absent = Digest.of(b"never stored")
    refuse(lab.upstream, f"{HUB}/v2/acme/secret/blobs/{absent}")
    calls = len(lab.upstream.calls)
    assert await lab.cache.blob(as_("acme/secret", None), absent, head=False) == Refused(
        401, CHALLENGE
    )  # the same answer, for the same cost
    assert len(lab.upstream.calls) == calls + 1


async def test_same_digest_is_served_through_a_public_repository_upstream_says_has_it(
    lab: Lab,
) -> None:
    await fill_privately(lab)
    gets = lab.upstream.count("GET")
    answer = await lab.cache.blob(as_("library/base", None), DIGEST, head=False)
    assert isinstance(answer, Stored) and lab.upstream.count("GET") == gets  # from the store
    assert isinstance(await lab.cache.blob(as_("acme/secret", None), DIGEST, head=False), Refused)


async def test_a_private_digest_is_refused_under_any_other_repository_or_host(lab: Lab) -> None:
    lab.upstream.add("GET", f"{HUB}/v2/acme/secret/blobs/{SECRET}", 200, SECRET_LAYER,
                     auth="Bearer alice", Content_Length=str(len(SECRET_LAYER)))  # fmt: skip
    secret = as_("acme/secret", "Bearer alice")
    assert await drain(await lab.cache.blob(secret, SECRET, head=False)) == SECRET_LAYER
    await stored(lab, secret, SECRET)
    # Anyone may read library/base (learnt the proper way, from a tag a client pulled)...
    await learn_public_base(lab)
    host = "registry-1.docker.io"
    assert lab.gate().vouches(host, "library/base", DIGEST, None)  # its manifest lists it
    assert not lab.gate().vouches(host, "library/base", SECRET, None)
    # ...but the private digest is not in it (upstream's 404 for these exact URLs): by a
    # public repository, alice's own token elsewhere, another registry, a manifest URL.
    for target, kind in (
        (as_("library/base", None), "blobs"),
        (as_("library/base", "Bearer alice"), "blobs"),
        (as_("alice/other", "Bearer alice"), "blobs"),
        (as_("acme/secret", "Bearer alice", origin=GHCR), "blobs"),
        (as_("library/base", None), "manifests"),
    ):
        get = lab.cache.blob if kind == "blobs" else lab.cache.manifest
        for head in (False, True):
            answer = await get(target, SECRET, head=head)
            assert isinstance(answer, Refused) and answer.status == 404, (target, kind, answer)


def _smuggled(how: str) -> bytes:
    """Mallory's own manifest, naming the secret where a registry does not check it."""
    doc = json.loads(manifest_of(LAYER))
    secret = {"mediaType": "application/octet-stream", "digest": str(SECRET),
              "size": len(SECRET_LAYER)}  # fmt: skip
    if how == "urls":
        return manifest_of(LAYER, foreign=SECRET_LAYER)
    if how == "blobs":  # an artifact field, unchecked in an image manifest
        doc["blobs"] = [secret]
    elif how == "fsLayers":  # schema 1's field, in a schema 2 manifest
        doc["fsLayers"] = [{"blobSum": str(SECRET)}]
    elif how == "manifests":  # an index's field, in an image manifest
        doc["manifests"] = [secret]
    return json.dumps(doc).encode()


@pytest.mark.parametrize("how", ["urls", "blobs", "fsLayers", "manifests"])
async def test_a_manifest_vouches_only_for_what_its_registry_checked(lab: Lab, how: str) -> None:
    """The warm path: a tag revalidated for a client covers what it lists, without a
    request per layer; but a descriptor a registry does not check at push, in someone's
    own public manifest, does not open another image's digest."""
    await fill_privately(lab)  # DIGEST is in the store (alice's)
    lab.upstream.add("GET", f"{HUB}/v2/acme/secret/blobs/{SECRET}", 200, SECRET_LAYER,
                     auth="Bearer alice", Content_Length=str(len(SECRET_LAYER)))  # fmt: skip
    await drain(await lab.cache.blob(as_("acme/secret", "Bearer alice"), SECRET, head=False))
    await stored(lab, as_("acme/secret", "Bearer alice"), SECRET)
    body = _smuggled(how)
    digest = Digest.of(body)
    base = f"{HUB}/v2/mallory/app"
    serve(lab.upstream, f"{base}/manifests/v1", body)
    serve(lab.upstream, f"{base}/manifests/{digest}", body)
    serve(lab.upstream, f"{base}/blobs/{DIGEST}", LAYER)  # really pushed there
    refuse(lab.upstream, f"{base}/blobs/{SECRET}", 404)  # never pushed: foreign
    mallory = as_("mallory/app", "Bearer mallory")
    assert isinstance(await lab.cache.manifest(mallory, "v1", head=False), Stored)
    calls = len(lab.upstream.calls)
    assert isinstance(await lab.cache.blob(mallory, DIGEST, head=False), Stored)
    assert len(lab.upstream.calls) == calls  # vouched for by the manifest
    assert lab.cache.stored_now(mallory, DIGEST, manifest=False) is not None  # other loops
    assert await lab.cache.blob(mallory, SECRET, head=False) == Refused(404, CHALLENGE)
    assert lab.cache.stored_now(mallory, SECRET, manifest=False) is None


async def test_a_redirect_alone_is_not_a_yes(lab: Lab) -> None:
    await fill_privately(lab)
    url = f"{HUB}/v2/anything/blobs/{DIGEST}"
    lab.upstream.add("HEAD", url, 307, Location="https://backend.example/v2/x")
    with pytest.raises(UpstreamUnavailable):  # "not known", and nothing vouches
        await lab.cache.blob(as_("anything", None), DIGEST, head=False)


async def test_a_yes_must_show_the_same_digest_and_size(lab: Lab) -> None:
    await fill_privately(lab)
    url = f"{HUB}/v2/liar/repo/blobs/{DIGEST}"
    lab.upstream.add("HEAD", url, 200, Docker_Content_Digest=str(SECRET))
    assert await lab.cache.blob(as_("liar/repo", None), DIGEST, head=False) == Refused(404)
    lab.upstream.add("HEAD", url, 200, Content_Length=str(len(LAYER) + 1))
    assert await lab.cache.blob(as_("liar/repo", None), DIGEST, head=False) == Refused(404)
    lab.upstream.add("HEAD", url, 200)  # shows nothing at all
    assert await lab.cache.blob(as_("liar/repo", None), DIGEST, head=False) == Refused(404)
    lab.upstream.add("HEAD", url, 200, Content_Length=str(len(LAYER)))  # a CDN's answer
    assert isinstance(await lab.cache.blob(as_("liar/repo", None), DIGEST, head=False), Stored)


async def test_a_verified_credential_is_remembered_for_a_bounded_time(lab: Lab) -> None:
    await fill_privately(lab)
    heads = lab.upstream.count("HEAD")
    alice = as_("acme/secret", "Bearer alice")
    assert isinstance(await lab.cache.blob(alice, DIGEST, head=False), Stored)
    assert lab.upstream.count("HEAD") == heads  # proven by her own fill moments ago
    lab.now[0] += 301
    assert isinstance(await lab.cache.blob(alice, DIGEST, head=False), Stored)
    assert lab.upstream.count("HEAD") == heads + 1  # expired: asked upstream again


async def test_followers_of_a_private_fill_are_checked(lab: Lab) -> None:
    gate = lab.upstream.routes[("GET", PRIVATE, "Bearer alice")]
    gate.gate = asyncio.Event()
    leader = await lab.cache.blob(as_("acme/secret", "Bearer alice"), DIGEST, head=False)
    assert isinstance(leader, Filling)
    follower = await lab.cache.blob(as_("acme/secret", "Bearer mallory"), DIGEST, head=False)
    assert follower == Refused(401, CHALLENGE)
    gate.gate.set()
    await drain(leader)


async def test_refused_requests_record_nothing(lab: Lab) -> None:
    await fill_privately(lab)
    manifest = manifest_of(LAYER)
    digest = Digest.of(manifest)
    serve(lab.upstream, f"{HUB}/v2/acme/secret/manifests/{digest}", manifest, auth="Bearer alice")
    assert isinstance(
        await lab.cache.manifest(as_("acme/secret", "Bearer alice"), digest, head=False), Stored
    )
    for i in range(20):
        answer = await lab.cache.manifest(as_(f"random/name{i}", None), digest, head=False)
        assert isinstance(answer, Refused)
    await lab.index.flush()
    assert {repository for _, repository, _ in await lab.index.sources()} == {"acme/secret"}
    assert await lab.index.public_status("registry-1.docker.io", "random/name1") is None


async def test_public_status_comes_from_a_tag_never_from_a_digests_404(lab: Lab) -> None:
    """Item 11: after a restart an anonymous request for a foreign digest under a public
    repository gets upstream's 404, which must not make the repository non-public for
    the outage that follows."""
    manifest = manifest_of(LAYER)
    digest = Digest.of(manifest)
    base = f"{HUB}/v2/library/base"
    serve(lab.upstream, f"{base}/manifests/latest", manifest)
    serve(lab.upstream, f"{base}/manifests/{digest}", manifest)
    assert isinstance(await lab.cache.manifest(as_("library/base", "Bearer t1"), "latest",
                                               head=False), Stored)  # fmt: skip
    assert isinstance(await lab.cache.blob(as_("library/base", "Bearer t1"), DIGEST,
                                           head=False), Stored | Filling)  # fmt: skip
    await stored(lab, as_("library/base", None), DIGEST)
    await asyncio.sleep(0.05)  # the probe of the tag, in the background
    await lab.index.flush()
    lab.restart()
    foreign = Digest.of(b"somebody else's")
    (lab.files.root / "blobs").mkdir(exist_ok=True)
    await lab.index.add_blob(foreign, 16, None)
    refuse(lab.upstream, f"{base}/blobs/{foreign}", 404)
    assert isinstance(await lab.cache.blob(as_("library/base", None), foreign, head=False),
                      Refused)  # fmt: skip
    lab.upstream.routes.clear()  # upstream down: every request 404s... or worse, times out
    lab.upstream.answer_gate = asyncio.Event()
    lab.offline[0] = True
    for token in (None, "Bearer new-client"):
        assert isinstance(await lab.cache.manifest(as_("library/base", token), digest,
                                                   head=False), Stored)  # fmt: skip
        assert isinstance(await lab.cache.blob(as_("library/base", token), DIGEST, head=False),
                          Stored)  # fmt: skip
    lab.now[0] += 40 * 86400  # offline for longer than the outage grace: still public
    assert isinstance(await lab.cache.blob(as_("library/base", None), DIGEST, head=False), Stored)


async def test_in_an_outage_recent_verdicts_count_and_nothing_else(lab: Lab) -> None:
    await fill_privately(lab)
    lab.upstream.routes.clear()
    lab.upstream.add("HEAD", PRIVATE, 503, Retry_After="30")
    alice, bob = as_("acme/secret", "Bearer alice"), as_("acme/secret", "Bearer bob")
    lab.now[0] += 3600  # past verified_ttl_s, within outage_grace_s
    assert isinstance(await lab.cache.blob(alice, DIGEST, head=False), Stored)
    # Others get upstream's own trouble, as for content regcache does not hold.
    assert await lab.cache.blob(bob, DIGEST, head=False) == Refused(503, None, "30")
    lab.now[0] += 86400  # past the grace period: alice too
    assert await lab.cache.blob(alice, DIGEST, head=False) == Refused(503, None, "30")
    lab.upstream.routes.clear()  # unreachable: the error raised, as a fill would meet it
    lab.upstream.answer_gate = asyncio.Event()
    lab.offline[0] = True
    with pytest.raises(UpstreamUnavailable, match="offline"):
        await lab.cache.blob(bob, DIGEST, head=False)


async def test_a_login_page_after_a_redirect_does_not_make_a_repository_public(lab: Lab) -> None:
    """Only an anonymous answer naming the digest the client was given counts."""
    manifest = manifest_of(LAYER)
    tag = f"{HUB}/v2/corp/app/manifests/v1"
    serve(lab.upstream, tag, manifest, auth="Bearer employee")
    lab.upstream.add("HEAD", tag, 200, auth="", Content_Type="text/html")  # an SSO page
    employee = as_("corp/app", "Bearer employee")
    assert isinstance(await lab.cache.manifest(employee, "v1", head=False), Stored | Refused)
    await asyncio.sleep(0.05)  # the background probe
    assert not await lab.gate()._public.public_within(
        ("registry-1.docker.io", "corp/app"), lab.now[0], 3600
    )
    assert await lab.index.public_status("registry-1.docker.io", "corp/app") is None


async def test_a_stored_manifests_refusal_is_replayed_like_an_absent_ones(lab: Lab) -> None:
    lab.cache = RegistryCache(lab.files, lab.index, lab.upstream, lab.gate(),  # type: ignore[arg-type]
                              NegativeCache(30, clock=lambda: lab.now[0]))  # fmt: skip
    manifest = manifest_of(LAYER)
    digest = Digest.of(manifest)
    serve(lab.upstream, f"{HUB}/v2/acme/secret/manifests/{digest}", manifest, auth="Bearer alice")
    await lab.cache.manifest(as_("acme/secret", "Bearer alice"), digest, head=False)
    refuse(lab.upstream, f"{HUB}/v2/other/repo/manifests/{digest}", 404)
    first = await lab.cache.manifest(as_("other/repo", "Bearer x"), digest, head=False)
    calls = len(lab.upstream.calls)
    again = await lab.cache.manifest(as_("other/repo", "Bearer x"), digest, head=False)
    assert first == again == Refused(404, CHALLENGE)  # challenge kept, whatever its spelling
    assert len(lab.upstream.calls) == calls  # from memory, as an absent manifest's 404


async def test_within_a_tag_ttl_only_a_vouched_client_skips_upstream(lab: Lab) -> None:
    manifest = manifest_of(LAYER)
    tag = f"{HUB}/v2/acme/secret/manifests/v1"
    serve(lab.upstream, tag, manifest, auth="Bearer alice")
    serve(lab.upstream, f"{HUB}/v2/acme/secret/manifests/{Digest.of(manifest)}", manifest,
          auth="Bearer alice")  # fmt: skip
    refuse(lab.upstream, tag)
    ttl = {"tag_ttl_s": 300.0}
    alice = Target(
        HUB, "acme/secret", {"Authorization": "Bearer alice"}, frozenset({OCI_MANIFEST}), **ttl
    )  # type: ignore[arg-type]
    bob = Target(
        HUB, "acme/secret", {"Authorization": "Bearer bob"}, frozenset({OCI_MANIFEST}), **ttl
    )  # type: ignore[arg-type]
    assert isinstance(await lab.cache.manifest(alice, "v1", head=False), Stored)
    calls = len(lab.upstream.calls)
    assert isinstance(await lab.cache.manifest(alice, "v1", head=False), Stored)
    assert len(lab.upstream.calls) == calls  # vouched: the TTL holds
    assert await lab.cache.manifest(bob, "v1", head=False) == Refused(401, CHALLENGE)
    assert [c[1] for c in lab.upstream.calls[calls:]] == [tag, tag]  # asked about the tag


async def test_an_unreachable_registry_is_not_asked_again_by_the_gate_or_by_fills(lab: Lab) -> None:
    await fill_privately(lab)
    lab.upstream.unreachable.add("registry-1.docker.io")
    with pytest.raises(UpstreamUnavailable):
        await lab.cache.blob(as_("acme/secret", "Bearer bob"), DIGEST, head=False)
    calls = len(lab.upstream.calls)
    absent = Digest.of(b"not here")
    for digest in (DIGEST, absent):  # stored or not: the same answer, no request
        with pytest.raises(UpstreamUnavailable, match="connection refused"):
            await lab.cache.blob(as_("acme/secret", "Bearer bob"), digest, head=False)
    assert len(lab.upstream.calls) == calls
    lab.now[0] += 11  # a few seconds later it is asked again
    with pytest.raises(UpstreamUnavailable):
        await lab.cache.blob(as_("acme/secret", "Bearer bob"), absent, head=False)
    assert len(lab.upstream.calls) == calls + 1


def test_a_refusal_not_even_tried_does_not_extend_the_gates_memory() -> None:
    """The upstream client refuses at once while a host failed moments ago: that is no
    news. Taking it for a new failure kept the gate's "down" alive for another 10 s after
    the one request the client let through had reconnected."""
    gate = AccessGate(FakeUpstream())  # type: ignore[arg-type]
    host = "registry-1.docker.io"
    gate.note_down(host, UpstreamUnreachable("not tried, unreachable moments ago", host,
                                             tried=False))  # fmt: skip
    assert gate.down(host) is None
    gate.note_down(host, UpstreamUnreachable("connection refused", host))
    assert gate.down(host) is not None


async def test_a_401_while_the_realm_is_down_is_an_outage_for_the_gate(lab: Lab) -> None:
    """The realm hung for hours while the registry is up: every anonymous check gets a
    401 (no token to be had). For a client whose token step regcache answered itself
    (`realm_down`) that is upstream unable to say, as a 503: public content confirmed
    within the outage grace is served, a private digest still is not."""
    await fill_privately(lab)
    await learn_public_base(lab)
    refuse(lab.upstream, PUBLIC)  # the realm is down: no anonymous token, every answer 401
    lab.now[0] += 2 * 3600  # past public_ttl_s, within outage_grace_s
    anonymous = as_("library/base", None)
    assert await lab.cache.blob(anonymous, DIGEST, head=False) == Refused(401, CHALLENGE)
    down = replace(anonymous, realm_down=True)
    assert isinstance(await lab.cache.blob(down, DIGEST, head=False), Stored)
    with pytest.raises(UpstreamUnavailable, match="token realm"):
        await lab.cache.blob(replace(as_("acme/secret", None), realm_down=True), DIGEST,
                             head=False)  # fmt: skip


# The managed mirror (issue #16): what a network-access entry opens, and only there.


async def test_a_network_mirror_entry_opens_its_content_only_through_its_repository(
    rig: Rig,
) -> None:
    served = mirror_image("tool")
    await rig.mirror(served)
    layer = next(iter(served.blobs))
    rig.upstream.calls.clear()
    gate = rig.cache._gate
    for repository in ("library/alpine", "alpine"):
        assert gate.vouches("registry-1.docker.io", repository, layer, None)
        assert await gate.check("registry-1.docker.io", repository, layer, url="unused",
                                authorization=None, manifest=False, size=None) is None  # fmt: skip
    assert rig.upstream.calls == []
    # The same digest under another repository is that repository's business upstream.
    elsewhere = as_("library/busybox", None)
    refuse(rig.upstream, f"{HUB}/v2/library/busybox/blobs/{layer}", 404)
    refuse(rig.upstream, f"{HUB}/v2/library/busybox/manifests/{served.digest}", 404)
    assert not gate.vouches("registry-1.docker.io", "library/busybox", layer, None)
    assert rig.cache.stored_now(elsewhere, layer, manifest=False) is None
    assert await rig.cache.blob(elsewhere, layer, head=False) == Refused(404, CHALLENGE)
    assert await rig.cache.manifest(elsewhere, served.digest, head=False) == Refused(404, CHALLENGE)
    assert await rig.cache.manifest(elsewhere, "3.20", head=False) == Refused(404)  # not mirrored


@pytest.mark.parametrize("how", ["urls", "blobs", "manifests"])
async def test_a_mirrored_manifest_opens_only_what_its_registry_checked(rig: Rig, how: str) -> None:
    """Mallory's public image, mirrored for everyone, names alice's private layer where a
    registry does not check it at push: the mirror must not open it to anyone."""
    alice = as_("acme/secret", "Bearer alice")
    rig.upstream.add("GET", f"{HUB}/v2/acme/secret/blobs/{SECRET}", 200, SECRET_LAYER,
                     auth="Bearer alice", Content_Length=str(len(SECRET_LAYER)))  # fmt: skip
    assert (await drain(await rig.cache.blob(alice, SECRET, head=False))) == SECRET_LAYER
    for _ in range(200):
        if await rig.index.blob(SECRET) is not None:
            break
        await asyncio.sleep(0.01)
    body = json.loads(mirror_image("mallory's tool").body)
    secret = {"mediaType": "application/octet-stream", "digest": str(SECRET),
              "size": len(SECRET_LAYER)}  # fmt: skip
    if how == "urls":
        body["layers"].append({**secret, "urls": ["https://example.com/x"]})
    else:
        body[how] = [secret]
    smuggled = Image(json.dumps(body).encode(), OCI_MANIFEST, mirror_image("mallory's tool").blobs)
    refuse(rig.upstream, f"{HUB}/v2/mallory/tool/blobs/{SECRET}", 404)  # never pushed there
    await rig.mirror(smuggled, source="mallory/tool:v1", repository="mallory/tool", tag="v1")
    mallory = as_("mallory/tool", None)
    assert not rig.cache._gate.vouches("registry-1.docker.io", "mallory/tool", SECRET, None)
    assert rig.cache.stored_now(mallory, SECRET, manifest=False) is None
    assert await rig.cache.blob(mallory, SECRET, head=False) == Refused(404, CHALLENGE)
    layer = next(iter(smuggled.blobs))  # what it really holds is open to anyone
    assert isinstance(await rig.cache.blob(mallory, layer, head=False), Stored)


def mirror_image(name: str) -> Image:
    return image(name)
