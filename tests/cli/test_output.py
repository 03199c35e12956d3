"""How commands print: aligned tables, JSON-ready values, times."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from appliance.cli import output
from appliance.oci.digest import Digest


@dataclass(frozen=True)
class Row:
    name: str
    sizes: tuple[int, ...]


def test_a_table_aligns_its_columns_and_trims_trailing_space(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output.table(("NAME", "SIZE"), [("alpine", 3), ("a-much-longer-name", 12345)])
    assert capsys.readouterr().out.splitlines() == [
        "NAME                SIZE",
        "alpine              3",
        "a-much-longer-name  12345",
    ]


def test_plain_turns_dataclasses_in_lists_and_dicts_into_json_values() -> None:
    value = {"rows": [Row("a", (1, 2))], "n": 1}
    assert output.plain(value) == {"rows": [{"name": "a", "sizes": [1, 2]}], "n": 1}


def test_plain_writes_a_digest_as_its_text() -> None:
    digest = Digest.of(b"x")
    assert output.plain({"d": digest, "ds": [digest]}) == {"d": str(digest), "ds": [str(digest)]}


def test_when_is_utc_to_the_minute() -> None:
    assert output.when(0) == "1970-01-01 00:00"
    assert output.when(86400 + 3599) == "1970-01-02 00:59"
