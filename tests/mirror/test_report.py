"""The mirror's report, from the real index: tags grouped under their entries however the
source is written, drift and deletions upstream, backups counted, runs and budgets."""

from __future__ import annotations

from pathlib import Path

from appliance.config.model import parse_config
from appliance.config.registries import Registries
from appliance.mirror.entries import Entry, resolve
from appliance.mirror.records import BudgetSeen, Check, EntryRun, MirroredTag, Place
from appliance.mirror.report import drift, owner, report
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.index import SqliteIndex

A, B = Digest.of(b"a"), Digest.of(b"b")
CONFIG = """\
appliance:
  ipv4: 192.0.2.10
registries:
  - name: docker.io
    hosts: [registry-1.docker.io]
  - name: ghcr.io
    hosts: [ghcr.io]
mirror:
  entries:
    - source: alpine:3.20
    - source: ghcr.io/org/app
      access: upstream
    - source: ghcr.io/org/app:special
    - source: ghcr.io/org/new:1
"""
ALPINE = Place("docker.io", "library/alpine", "3.20")
V1, V2 = Place("ghcr.io", "org/app", "v1"), Place("ghcr.io", "org/app", "v2")
SPECIAL = Place("ghcr.io", "org/app", "special")


def entries(tmp_path: Path) -> list[Entry]:
    config = parse_config(CONFIG, tmp_path / "config.yaml")
    return resolve(config.mirror, Registries.of(config))


async def keep(index: SqliteIndex, place: Place, entry: str, *digests: Digest) -> None:
    before = None
    for at, digest in enumerate(digests, start=1):
        tag = MirroredTag(place, entry, digest, OCI_MANIFEST, 1, float(at), "network")
        await index.move_tag(tag, "sync", expect=before, backup=f"{place.tag}-{at}", keep_backups=3)
        before = digest


def test_the_owner_is_the_recorded_entry_then_the_image_then_the_repository(
    tmp_path: Path,
) -> None:
    alpine, app, special, new = entries(tmp_path)
    known = [alpine, app, special, new]
    assert owner(known, ALPINE, "docker.io/library/alpine:3.20") is alpine  # written otherwise
    assert owner(known, SPECIAL, None) is special and owner(known, V1, None) is app
    assert owner(known, SPECIAL, app.source) is app  # recorded under the repository
    assert owner(known, Place("ghcr.io", "org/other", "v1"), None) is None


def test_drift_says_yes_no_gone_or_unknown() -> None:
    assert drift(A, None) == "?"
    assert drift(A, Check(ALPINE, "e", None, 1.0, error="timeout")) == "?"
    assert drift(A, Check(ALPINE, "e", A, 1.0)) == "no"
    assert drift(A, Check(ALPINE, "e", B, 1.0)) == "yes"
    assert drift(A, Check(ALPINE, "e", None, 1.0, gone=True)) == "gone"


async def test_the_report_groups_tags_under_entries_with_what_upstream_said(
    tmp_path: Path, index: SqliteIndex
) -> None:
    await keep(index, ALPINE, "docker.io/library/alpine:3.20", A, B)
    await keep(index, V1, "ghcr.io/org/app", A)
    await keep(index, V2, "ghcr.io/org/app", B)
    await keep(index, Place("quay.io", "org/old", "1"), "quay.io/org/old:1", A)
    await index.set_mirror_pin(ALPINE, B)
    await index.record_check(Check(ALPINE, "alpine:3.20", A, 10.0))
    await index.record_check(Check(V1, "ghcr.io/org/app", None, 11.0, gone=True))
    run = EntryRun("alpine:3.20", "idle", 5.0, 5.0, 99.0)
    await index.record_run(run)
    budget = BudgetSeen("docker.io", "anonymous", 90, 100, 21600, 7.0)
    await index.record_budget(budget)
    seen = await report(index, entries(tmp_path))
    by_source = {e.source: e for e in seen.entries}
    assert list(by_source) == [
        "alpine:3.20", "ghcr.io/org/app", "ghcr.io/org/app:special", "ghcr.io/org/new:1",
        "quay.io/org/old:1",
    ]  # fmt: skip
    alpine = by_source["alpine:3.20"]
    assert alpine.run == run and alpine.configured and alpine.access == "network"
    [tag] = alpine.tags  # its backup is counted, not listed
    assert (tag.tag, tag.serving, tag.pinned, tag.upstream, tag.drift, tag.backups) == (
        "3.20", B, B, A, "yes", 1,
    )  # fmt: skip
    app = by_source["ghcr.io/org/app"]
    assert app.access == "upstream"  # as configured
    assert [(t.tag, t.drift, t.upstream) for t in app.tags] == [
        ("v1", "gone", None),
        ("v2", "?", None),
    ]
    assert (
        by_source["ghcr.io/org/new:1"].tags == ()
        and by_source["ghcr.io/org/app:special"].tags == ()
    )
    old = by_source["quay.io/org/old:1"]
    assert not old.configured and [t.tag for t in old.tags] == ["1"]
    assert seen.budgets == (budget,)
