"""Strict YAML into frozen dataclasses, on a small schema of its own: every value built,
every error naming the dotted key and its line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from appliance.config.strict_yaml import SchemaError, check, load


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _positive(value: int) -> None:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")


SCALARS = {int: _int, str: _str}


@dataclass(frozen=True)
class Limits:
    burst: int = field(default=10, metadata=check(_positive))
    name: str | None = None


@dataclass(frozen=True)
class Server:
    host: str
    limits: Limits = Limits()
    ports: tuple[int, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


def test_a_document_is_built_with_the_line_of_every_dotted_key() -> None:
    text = "host: gw\nlimits:\n  burst: 5\nports: [53, 443]\nlabels: {a: b}\n"
    value, lines = load(Server, text, SCALARS)
    assert value == Server("gw", Limits(5), (53, 443), {"a": "b"})
    assert (lines["host"], lines["limits.burst"], lines["ports[1]"], lines["labels.a"]) == (
        1, 3, 4, 5,
    )  # fmt: skip


def test_an_empty_section_means_its_defaults_and_null_only_where_allowed() -> None:
    value, _ = load(Server, "host: gw\nlimits:\nports:\nlabels:\n", SCALARS)
    assert value == Server("gw")
    value, _ = load(Server, "host: gw\nlimits: {name: null}\n", SCALARS)
    assert value.limits.name is None


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("host: gw\nprots: [1]\n", "prots", 2, "unknown key (did you mean 'ports'?)"),
        ("host: gw\nlimits: {burst: 0}\n", "limits.burst", 2, "must be positive"),
        ("host: gw\nlimits: {burst: yes}\n", "limits.burst", 2, "expected an integer"),
        ("host: gw\nhost: other\n", "host", 2, "duplicate key"),
        ("host: gw\nlabels: {a: b, a: c}\n", "labels.a", 2, "duplicate key"),
        ("limits: {}\n", "host", 1, "required key is missing"),
        ("host: [a]\n", "host", 1, "expected a single value, got a list"),
        ("host: null\n", "host", 1, "expected a string"),
        ("host: gw\nports: 53\n", "ports", 2, "expected a list, got the scalar '53'"),
        ("host: gw\nlabels: [a]\n", "labels", 2, "expected a mapping, got a list"),
        ("- host\n", "", 1, "expected a mapping"),
        ("", "", 1, "the file is empty"),
        ("host: gw\nlimits: {burst: 1\n", "", 3, "invalid YAML"),
    ],
)
def test_every_error_names_the_dotted_key_and_line(
    text: str, key: str, line: int, words: str
) -> None:
    with pytest.raises(SchemaError) as error:
        load(Server, text, SCALARS)
    assert (error.value.key, error.value.line) == (key, line)
    assert words in error.value.message
    assert str(error.value).startswith(f"line {line}: {key or '<top level>'}: ")
