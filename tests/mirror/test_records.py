"""The mirror's record types: how a place prints, and the index providing every record
operation the mirror relies on."""

from __future__ import annotations

import inspect

from appliance.mirror.records import MirrorRecords, Place
from appliance.store.index import SqliteIndex


def test_a_place_prints_as_registry_repository_and_tag() -> None:
    assert str(Place("docker.io", "library/alpine", "3.20")) == "docker.io/library/alpine:3.20"


def test_the_sqlite_index_provides_every_mirror_record_operation_as_a_coroutine() -> None:
    wanted = [n for n in vars(MirrorRecords) if not n.startswith("_")]
    assert "move_tag" in wanted and "withdraw_request" in wanted
    missing = [n for n in wanted if not inspect.iscoroutinefunction(getattr(SqliteIndex, n, None))]
    assert missing == []
