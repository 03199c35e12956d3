"""One mirrored tag brought up to date, over the real cache and index: one HEAD when
nothing changed; a new digest copied completely and verified before the tag moves;
platforms, budget, rate limits, deletions, pins, access and referrers as the issue says."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from appliance.mirror.copier import TagResult, bounded
from appliance.mirror.records import MirroredTag, Move, Place
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX
from appliance.store.eviction import protected_digests
from tests.mirror.images import Image, image, index, serve
from tests.mirror.rig import ALPINE, Rig

PLACE = Place("docker.io", "library/alpine", "3.20")
MULTI = index(
    {"linux/amd64": image("amd64"), "linux/arm64/v8": image("arm64")},
    attestation=image("provenance", layers=1),
)
NEXT = index({"linux/amd64": image("amd64 next"), "linux/arm64/v8": image("arm64 next")})


async def currents(rig: Rig) -> dict[Place, MirroredTag]:
    return {t.place: t for t in await rig.index.mirrored_tags()}


async def sync(rig: Rig, tag: str = "3.20", *, move: bool = True, **entry: object) -> TagResult:
    return await rig.copier.sync(rig.entry(**entry), tag, await currents(rig), move=move)


async def serving(rig: Rig, tag: str = "3.20") -> Digest | None:
    found = (await currents(rig)).get(dataclasses.replace(PLACE, tag=tag))
    return None if found is None else found.digest


def held(rig: Rig, served: Image) -> bool:
    """Every manifest and blob of `served` is in the store, byte for byte."""
    wanted = {m.digest: m.body for m in served.manifests()} | served.all_blobs()
    return all(rig.on_disk(d) == body for d, body in wanted.items())


async def test_a_new_tag_is_copied_completely_then_served(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    result = await sync(rig)
    assert (result.change, result.moved, result.error) == ("new", True, None)
    assert result.serving == result.upstream == MULTI.digest
    assert held(rig, MULTI)
    sizes = [len(m.body) for m in MULTI.manifests()] + [len(b) for b in MULTI.all_blobs().values()]
    assert result.fetched_bytes == sum(sizes)
    tag = (await currents(rig))[PLACE]
    assert (tag.digest, tag.media_type, tag.size, tag.access) == (
        MULTI.digest, OCI_INDEX, len(MULTI.body), "network",
    )  # fmt: skip
    assert await rig.index.mirror_history(PLACE) == [
        Move(PLACE, None, MULTI.digest, rig.now[0], "sync")
    ]
    assert rig.upstream.count("HEAD") == 1
    assert len(rig.gets("manifests")) == len(MULTI.manifests())  # each manifest once


async def test_an_unchanged_tag_costs_one_head_and_no_get(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    rig.upstream.calls.clear()
    result = await sync(rig)
    assert (result.change, result.moved, result.error) == ("none", False, None)
    assert result.serving == result.upstream == MULTI.digest and result.fetched_bytes == 0
    assert [(m, u) for m, u, _ in rig.upstream.calls] == [("HEAD", f"{ALPINE}/manifests/3.20")]
    assert len(await rig.index.mirror_history(PLACE)) == 1


async def test_an_unchanged_tag_whose_content_left_the_store_is_fetched_again(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    layer = next(iter(MULTI.children[1].blobs))
    rig.files.path_for(layer).unlink()  # `cache rm --force`, a disk error
    rig.upstream.calls.clear()
    result = await sync(rig)
    assert (result.change, result.error) == ("none", None)
    assert rig.gets() == [f"{ALPINE}/blobs/{layer}"]  # that blob, and nothing else
    assert held(rig, MULTI)


async def test_a_moved_tag_is_copied_before_it_moves_with_a_backup_and_history(
    rig: Rig,
) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    rig.now[0] += 86400.0
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    result = await sync(rig)
    assert (result.change, result.moved, result.serving) == ("move", True, NEXT.digest)
    assert held(rig, NEXT) and held(rig, MULTI)  # the old one stays: its backup serves it
    tags = await currents(rig)
    backup = result.move.backup if result.move else None
    assert backup == "3.20-backup-19700113"  # the default template, dated by the move
    assert tags[PLACE].digest == NEXT.digest
    assert tags[dataclasses.replace(PLACE, tag=backup)].digest == MULTI.digest
    assert tags[dataclasses.replace(PLACE, tag=backup)].backup_of == "3.20"
    history = await rig.index.mirror_history(PLACE)
    assert [(m.old, m.new, m.reason, m.backup) for m in history] == [
        (None, MULTI.digest, "sync", None), (MULTI.digest, NEXT.digest, "sync", backup),
    ]  # fmt: skip


def corrupt_blob(rig: Rig, served: Image) -> Digest:
    """Upstream sends other bytes for one layer of `served` (first platform's)."""
    layer = next(iter(served.children[0].blobs))
    rig.upstream.add("GET", f"{ALPINE}/blobs/{layer}", 200, b"evil " * 500,
                     Content_Length=str(2500))  # fmt: skip
    return layer


async def test_a_corrupt_blob_fails_the_copy_and_the_tag_does_not_move(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    bad = corrupt_blob(rig, NEXT)
    result = await sync(rig)
    assert (result.change, result.moved) == ("error", False)
    assert result.error is not None and str(bad) in result.error
    assert await serving(rig) == MULTI.digest
    assert len(await rig.index.mirror_history(PLACE)) == 1
    assert rig.on_disk(bad) is None and await rig.index.blob(bad) is None  # nothing kept


async def test_a_first_copy_that_fails_mirrors_nothing(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    corrupt_blob(rig, MULTI)
    result = await sync(rig)
    assert (result.change, result.moved, result.serving) == ("error", False, None)
    assert await rig.index.mirrored_tags() == []


@pytest.mark.parametrize("how", ["other bytes", "not a manifest type", "refused"])
async def test_a_manifest_upstream_garbles_fails_the_copy(rig: Rig, how: str) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    child = NEXT.children[1]
    url = f"{ALPINE}/manifests/{child.digest}"
    if how == "other bytes":
        rig.upstream.add("GET", url, 200, child.body + b" ", Content_Type=child.media_type)
    elif how == "not a manifest type":
        rig.upstream.add("GET", url, 200, child.body, Content_Type="text/html")
    else:
        rig.upstream.add("GET", url, 403, b"{}")
    result = await sync(rig)
    assert (result.change, result.moved) == ("error", False)
    assert await serving(rig) == MULTI.digest
    assert rig.on_disk(child.digest) is None and await rig.index.manifest_type(child.digest) is None


async def test_only_the_chosen_platforms_are_copied_and_the_index_is_kept_as_it_is(
    rig: Rig,
) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    result = await sync(rig, platforms=("linux/arm64/v8",))
    assert (result.change, result.moved) == ("new", True)
    amd64, arm64, attestation = MULTI.children
    assert rig.on_disk(MULTI.digest) == MULTI.body
    assert held(rig, arm64) and held(rig, attestation)  # one with no platform goes along
    assert rig.on_disk(amd64.digest) is None
    assert not any(rig.on_disk(d) for d in amd64.blobs)
    assert not any(str(amd64.digest) in u or any(str(d) in u for d in amd64.blobs)
                   for u in rig.gets())  # fmt: skip


async def test_below_the_budgets_minimum_it_waits_without_a_get(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    rig.budgets.seen("registry-1.docker.io", "anonymous", {"ratelimit-remaining": "10;w=21600"})
    result = await sync(rig)  # min 10: one GET would leave 9
    assert (result.change, result.moved) == ("waiting", False)
    assert result.error is not None and "rate-limit budget: 10 left" in result.error
    assert rig.gets() == [] and rig.upstream.count("HEAD") == 1
    assert await rig.index.mirrored_tags() == []


async def test_with_budget_enough_the_copy_spends_one_per_manifest_get(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    rig.budgets.seen("registry-1.docker.io", "anonymous", {"ratelimit-remaining": "50;w=21600"})
    result = await sync(rig)
    assert (result.change, result.moved) == ("new", True)
    assert rig.budgets.all()[0].remaining == 50 - len(MULTI.manifests())


async def test_a_budget_running_out_midway_stops_before_the_tag_moves(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    rig.budgets.seen("registry-1.docker.io", "anonymous", {"ratelimit-remaining": "12;w=21600"})
    result = await sync(rig)  # the index and one child: then only 10 would be left
    assert (result.change, result.moved) == ("waiting", False)
    assert len(rig.gets("manifests")) == 2 and await rig.index.mirrored_tags() == []


async def test_a_429_on_head_or_on_a_get_is_waiting(rig: Rig) -> None:
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 429)
    result = await sync(rig)
    assert (result.change, result.moved) == ("waiting", False) and rig.gets() == []
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    rig.upstream.add("GET", f"{ALPINE}/manifests/{MULTI.children[0].digest}", 429)
    result = await sync(rig)
    assert (result.change, result.moved) == ("waiting", False)
    assert await rig.index.mirrored_tags() == []


async def test_a_tag_upstream_deleted_keeps_being_served(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    rig.upstream.routes.clear()  # every request 404s now
    result = await sync(rig)
    assert (result.change, result.error, result.serving, result.moved) == (
        "gone", None, MULTI.digest, False,
    )  # fmt: skip
    assert await serving(rig) == MULTI.digest
    missing = await sync(rig, "3.19")
    assert (missing.change, missing.error) == ("error", "upstream has no such tag")


async def test_other_answers_to_head_are_errors(rig: Rig) -> None:
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 500)
    assert (await sync(rig)).change == "error"
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 200)  # names no digest
    result = await sync(rig)
    assert result.change == "error" and result.error == "HEAD answered 200, no digest"
    rig.upstream.unreachable.add("registry-1.docker.io")
    result = await sync(rig)
    assert result.change == "error" and result.error is not None
    assert result.error.startswith("upstream:")


async def test_a_pinned_tag_stays_where_it_is_held(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    assert await rig.index.set_mirror_pin(PLACE, MULTI.digest)
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    rig.upstream.calls.clear()
    result = await sync(rig)
    assert (result.change, result.moved, result.serving, result.upstream) == (
        "pinned", False, MULTI.digest, NEXT.digest,
    )  # fmt: skip
    assert rig.gets() == []  # not even the new digest is fetched
    assert await serving(rig) == MULTI.digest


async def test_a_pin_not_yet_stored_is_fetched_and_served_by_the_next_sync(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    serve(rig.upstream, ALPINE, NEXT)  # by digest only: the tag still names MULTI
    await rig.index.set_mirror_pin(PLACE, NEXT.digest)
    result = await sync(rig)
    assert (result.change, result.moved, result.serving) == ("pinned", True, NEXT.digest)
    tag = (await currents(rig))[PLACE]
    assert (tag.digest, tag.pin) == (NEXT.digest, NEXT.digest) and held(rig, NEXT)


async def test_a_configured_pin_is_copied_and_moved_to_as_a_pin(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI)
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    result = await sync(rig, pin=MULTI.digest)
    assert (result.change, result.moved, result.serving) == ("new", True, MULTI.digest)
    assert [m.reason for m in await rig.index.mirror_history(PLACE)] == ["pin"]
    again = await sync(rig, pin=MULTI.digest)
    assert (again.change, again.moved) == ("pinned", False)


async def test_a_persons_pin_beats_the_configured_one_until_unpinned(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI)
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    await sync(rig, pin=MULTI.digest)
    await rig.index.set_mirror_pin(PLACE, NEXT.digest)  # `mirror pin` (an emergency)
    result = await sync(rig, pin=MULTI.digest)
    assert (result.moved, result.serving) == (True, NEXT.digest)
    assert [m.reason for m in await rig.index.mirror_history(PLACE)] == ["pin", "pin"]
    await rig.index.set_mirror_pin(PLACE, None)  # `mirror unpin`: the config's again
    assert (await sync(rig, pin=MULTI.digest)).serving == MULTI.digest


async def test_a_pin_set_while_a_sync_copied_is_not_undone(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    seen = await currents(rig)  # the run's view, before the person acts
    assert await rig.index.set_mirror_pin(PLACE, MULTI.digest)
    result = await rig.copier.sync(rig.entry(), "3.20", seen, move=True)
    assert result.change == "error" and "moved meanwhile" in str(result.error)
    tag = (await currents(rig))[PLACE]
    assert (tag.digest, tag.pin) == (MULTI.digest, MULTI.digest)


async def test_access_is_asked_again_at_every_move(rig: Rig) -> None:
    """A source public at its first copy that turned private: its new digest is not
    served to everyone on the strength of the old answer."""
    rig.mirror_upstream.own = "Basic robot"
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    assert (await currents(rig))[PLACE].access == "network"
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 401, auth="")  # private now
    assert (await sync(rig)).moved
    assert (await currents(rig))[PLACE].access == "upstream"


async def test_a_tag_named_like_a_backup_ref_is_an_error_not_a_takeover(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig, backup="{tag}-old")
    serve(rig.upstream, ALPINE, NEXT, "3.20")
    await sync(rig, backup="{tag}-old")  # keeps MULTI as 3.20-old
    serve(rig.upstream, ALPINE, NEXT, "3.20-old")  # upstream publishes that very name
    result = await sync(rig, "3.20-old")
    assert result.change == "error" and "backup ref of 3.20" in str(result.error)
    assert await serving(rig, "3.20-old") == MULTI.digest


async def test_diff_asks_upstream_and_changes_nothing(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    result = await sync(rig, move=False)
    assert (result.change, result.moved, result.upstream) == ("new", False, MULTI.digest)
    assert rig.gets() == [] and await rig.index.mirrored_tags() == []


async def test_an_anonymously_pullable_source_is_network_access_even_with_credentials(
    rig: Rig,
) -> None:
    rig.mirror_upstream.own = "Basic robot"
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig)
    assert (await currents(rig))[PLACE].access == "network"
    anonymous = [h for m, u, h in rig.upstream.calls if m == "HEAD" and "Authorization" not in h]
    assert len(anonymous) == 1  # the one question: may anyone have it?


async def test_a_source_refused_to_anonymous_pulls_is_upstream_access(rig: Rig) -> None:
    rig.mirror_upstream.own = "Basic robot"
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 401, auth="")  # private
    result = await sync(rig)
    assert (result.change, result.moved) == ("new", True)
    assert (await currents(rig))[PLACE].access == "upstream"


async def test_configured_access_is_not_asked(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    await sync(rig, access="upstream")
    assert (await currents(rig))[PLACE].access == "upstream"


def signature(name: str) -> Image:
    return image(f"signature {name}", layers=1)


def listing(*referrers: Image) -> bytes:
    """The referrers API's answer."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": r.media_type, "digest": str(r.digest), "size": len(r.body)}
        for r in referrers
    ]}).encode()  # fmt: skip


async def test_referrers_the_api_lists_are_copied_and_kept_with_the_image(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    sig = signature("api")
    serve(rig.upstream, ALPINE, sig)
    rig.upstream.add("GET", f"{ALPINE}/referrers/{MULTI.digest}", 200, listing(sig))
    result = await sync(rig, referrers=True)
    assert (result.change, result.moved, result.referrers) == ("new", True, [sig.digest])
    assert held(rig, sig)
    kept = protected_digests(await rig.index.snapshot(), set())  # never evicted
    assert {str(d) for d in [sig.digest, *sig.blobs]} <= kept


async def test_without_the_api_cosigns_tags_are_copied_and_mirrored(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    sig = signature("tag schema")
    name = f"sha256-{MULTI.digest.hex}.sig"
    serve(rig.upstream, ALPINE, sig, name)
    result = await sync(rig, referrers=True)
    assert (result.change, result.moved) == ("new", True)
    assert result.referrer_tags == [(name, sig.digest)] and held(rig, sig)
    assert await serving(rig, name) == sig.digest
    asked = [u.rsplit("/", 1)[1] for m, u, _ in rig.upstream.calls if m == "HEAD"]
    base = f"sha256-{MULTI.digest.hex}"
    assert sorted(asked) == sorted(["3.20", base, name, base + ".att", base + ".sbom"])


@pytest.mark.parametrize("how", ["api", "tag schema"])
async def test_a_signature_added_after_the_copy_is_kept_by_the_next_sync(
    rig: Rig, how: str
) -> None:
    """cosign signs after the push: a sync in between sees the image without it; the
    next one, with the image unchanged, must keep the signature as a first copy would."""
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    assert (await sync(rig, referrers=True)).moved
    sig = signature("later")
    name = f"sha256-{MULTI.digest.hex}.sig"
    if how == "api":
        serve(rig.upstream, ALPINE, sig)
        rig.upstream.add("GET", f"{ALPINE}/referrers/{MULTI.digest}", 200, listing(sig))
    else:
        serve(rig.upstream, ALPINE, sig, name)
    result = await sync(rig, referrers=True)
    assert (result.change, result.error) == ("none", None)
    assert held(rig, sig)
    assert {str(d) for d in [sig.digest, *sig.blobs]} <= protected_digests(
        await rig.index.snapshot(), set()
    )  # never evicted, as the image it signs
    if how == "tag schema":
        assert await serving(rig, name) == sig.digest


async def test_referrers_are_not_copied_unless_asked(rig: Rig) -> None:
    serve(rig.upstream, ALPINE, MULTI, "3.20")
    serve(rig.upstream, ALPINE, signature("x"), f"sha256-{MULTI.digest.hex}.sig")
    await sync(rig)
    assert [u for _, u, _ in rig.upstream.calls if "sha256-" in u or "referrers" in u] == []


async def test_copy_jobs_run_at_most_limit_at_once_results_in_order_errors_contained() -> None:
    running, most = 0, 0

    async def job(tag: str) -> TagResult:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (5 - int(tag)))
        running -= 1
        if tag == "3":
            raise OSError("the index failed under this one")
        return TagResult(tag, None)

    results = await bounded(2, ["0", "1", "2", "3", "4"], job)
    assert [r.tag for r in results] == ["0", "1", "2", "3", "4"] and most == 2
    assert results[3].change == "error" and "the index failed" in str(results[3].error)
    assert [r.change for r in results if r.tag != "3"] == ["none"] * 4  # all ran to the end
