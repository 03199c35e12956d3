"""The mirror's entries as it works with them: configured and added ones, resolved to
where they are keyed and which host is asked, defaults filled in; and which of a
repository's tags an entry takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.mirror import RateLimitConfig, TagFilter
from appliance.config.model import Config, parse_config
from appliance.config.registries import Registries
from appliance.config.values import Duration
from appliance.mirror.entries import chosen_tags, resolve
from appliance.mirror.records import Place
from appliance.oci.digest import Digest

DIGEST = "sha256:" + "b" * 64
CONFIG = f"""\
appliance:
  ipv4: 192.0.2.10
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
  - name: ghcr.io
    hosts: [ghcr.io]
  - name: gcr.io
    hosts: [gcr.io, "*.gcr.io"]
mirror:
  defaults:
    interval: 2h
    ratelimit: {{min: 20, retry: 10m}}
    backup: "{{tag}}-{{date:%Y%m%d%H%M}}"
    keep_backups: 4
    platforms: [linux/amd64]
  entries:
    - source: alpine:3.20
      pin: {DIGEST}
    - source: ghcr.io/org/app
      tags: {{allow: ["v.*"]}}
      access: upstream
      schedule: "0 3 * * *"
      parallel: 4
      keep_backups: 0
      platforms: []
      referrers: true
    - source: eu.gcr.io/proj/tool:1
      interval: 30m
      backup: "{{tag}}.bak"
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(CONFIG, tmp_path / "config.yaml")


def test_defaults_fill_in_what_an_entry_leaves_out(config: Config) -> None:
    alpine = resolve(config.mirror, Registries.of(config))[0]
    assert (alpine.source, alpine.pin, alpine.access) == ("alpine:3.20", Digest.parse(DIGEST), None)
    assert alpine.schedule is None and alpine.interval_s == 7200.0
    assert alpine.ratelimit == RateLimitConfig(20, Duration(600.0))
    assert alpine.backup == "{tag}-{date:%Y%m%d%H%M}" and alpine.keep_backups == 4
    assert alpine.platforms == ("linux/amd64",) and alpine.referrers is False
    assert alpine.parallel == 2 and alpine.tags == TagFilter()


def test_an_entry_overrides_the_defaults_even_with_empty_or_zero_values(config: Config) -> None:
    app, tool = resolve(config.mirror, Registries.of(config))[1:]
    assert app.schedule == "0 3 * * *" and app.parallel == 4 and app.access == "upstream"
    assert app.keep_backups == 0 and app.platforms == () and app.referrers is True
    assert app.tags == TagFilter(allow=("v.*",))
    # its own interval wins over a default schedule; its own template over the default one
    assert tool.interval_s == 1800.0 and tool.schedule is None and tool.backup == "{tag}.bak"


def test_an_interval_of_its_own_is_not_overridden_by_the_default_schedule(
    tmp_path: Path,
) -> None:
    text = CONFIG.replace("    interval: 2h\n", "    schedule: '0 1 * * *'\n", 1)
    config = parse_config(text, tmp_path / "config.yaml")
    alpine, app, tool = resolve(config.mirror, Registries.of(config))
    assert alpine.schedule == "0 1 * * *" and app.schedule == "0 3 * * *"
    assert tool.schedule is None and tool.interval_s == 1800.0


def test_sources_are_keyed_where_clients_name_them_and_asked_at_the_api_host(
    config: Config,
) -> None:
    alpine, app, tool = resolve(config.mirror, Registries.of(config))
    assert (alpine.registry, alpine.origin, alpine.repository, alpine.tag) == (
        "docker.io", "registry-1.docker.io", "library/alpine", "3.20",
    )  # fmt: skip
    assert alpine.place("3.20") == Place("docker.io", "library/alpine", "3.20")
    assert alpine.url == "https://registry-1.docker.io/v2/library/alpine"
    assert (app.registry, app.origin, app.repository, app.tag) == (
        "ghcr.io",
        "ghcr.io",
        "org/app",
        None,
    )
    # a host under a `*.` pattern is a registry of its own
    assert (tool.registry, tool.origin, tool.repository) == ("eu.gcr.io", "eu.gcr.io", "proj/tool")


def test_added_entries_follow_the_configured_ones_unless_they_name_the_same(
    config: Config,
) -> None:
    added = [
        ("docker.io/library/alpine:3.20", "network"),  # configured as alpine:3.20
        ("index.docker.io/team/app:v2", "upstream"),
        ("quay.io/org/gone:1", "network"),  # quay.io is no longer configured
        ("team/app:v2", "network"),  # the same as an earlier added one
    ]
    entries = resolve(config.mirror, Registries.of(config), added)
    assert [e.source for e in entries] == [
        "alpine:3.20", "ghcr.io/org/app", "eu.gcr.io/proj/tool:1", "index.docker.io/team/app:v2",
    ]  # fmt: skip
    team = entries[-1]
    assert (team.registry, team.repository, team.tag, team.access) == (
        "docker.io", "team/app", "v2", "upstream",
    )  # fmt: skip
    assert team.keep_backups == 4 and team.interval_s == 7200.0  # the defaults


TAGS = ["latest", "3.18", "3.19.1", "3.20", "3.20-rc1", "4.0", "4.0.0a1", "edge", "v1", "v1-rc"]


@pytest.mark.parametrize(
    ("wanted", "chosen"),
    [
        (TagFilter(), TAGS),
        (TagFilter(allow=("3\\..*",)), ["3.18", "3.19.1", "3.20", "3.20-rc1"]),
        (TagFilter(allow=("3",)), []),  # a whole-tag match, not a search
        (TagFilter(allow=("v.*",), deny=(".*-rc",)), ["v1"]),
        (TagFilter(deny=("latest", "edge")), [t for t in TAGS if t not in ("latest", "edge")]),
        # versions in the range only, no pre-releases, and tags that are no version are out
        (TagFilter(semver=">=3.19,<4"), ["3.19.1", "3.20"]),
        (TagFilter(allow=("3\\..*",), semver=">=3.19"), ["3.19.1", "3.20"]),
        (TagFilter(semver=">=4"), ["4.0"]),
    ],
)
def test_a_repository_entry_takes_the_tags_its_filter_chooses_in_upstream_order(
    wanted: TagFilter, chosen: list[str]
) -> None:
    assert chosen_tags(TAGS, wanted) == chosen
