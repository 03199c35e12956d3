"""`registries[].push`: rules in order, the first matching glob decides; strict loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.model import ConfigError, load_config
from appliance.config.push import DENY, PASS_THROUGH, PushRule, push_policy

RULES = (
    PushRule(("team/release-*",), PASS_THROUGH),
    PushRule(("team/*", "frozen"), DENY),
)


@pytest.mark.parametrize(
    ("names", "policy"),
    [
        (("team/release-1",), PASS_THROUGH),  # the first rule wins over the broader second
        (("team/app",), DENY),
        (("team/a/b",), DENY),  # `*` crosses `/`
        (("frozen", "library/frozen"), DENY),  # either of an official image's names
        (("library/frozen",), PASS_THROUGH),
        (("other",), PASS_THROUGH),  # no rule: pass through
    ],
)
def test_the_first_rule_whose_glob_matches_a_name_decides(
    names: tuple[str, ...], policy: str
) -> None:
    assert push_policy(RULES, names) == policy


def test_no_rules_pass_everything_through() -> None:
    assert push_policy((), ("anything",)) == PASS_THROUGH


def _config(tmp_path: Path, push: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "appliance: {ipv4: 192.0.2.10}\nregistries:\n  - name: ghcr.io\n    hosts: [ghcr.io]\n"
        f"    push:\n{push}"
    )
    return path


def test_rules_load_in_order(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, '      - {repositories: ["team/*"], policy: deny}\n'
                                           "      - {policy: pass_through}\n"))  # fmt: skip
    assert config.registries[0].push == (PushRule(("team/*",), DENY), PushRule())


@pytest.mark.parametrize(
    ("push", "key", "words"),
    [
        ("      - {policy: local}\n", "registries[0].push[0].policy", "local"),
        ("      - {repositories: [], policy: deny}\n", "registries[0].push[0].repositories",
         "empty"),
        ("      - {repository: x}\n", "registries[0].push[0].repository", "unknown key"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key_and_line(tmp_path: Path, push: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, push))
    assert key in str(caught.value) and words in str(caught.value) and "line 6" in str(caught.value)
