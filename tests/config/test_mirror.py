"""The `mirror:` section: loaded strictly like the rest; each mistake names its dotted
key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.mirror import MirrorDefaults, TagFilter
from appliance.config.model import ConfigError, load_config
from appliance.config.values import Duration

BASE = """\
appliance:
  ipv4: 192.0.2.10
registries:
  - name: docker.io
    hosts: [registry-1.docker.io]
  - name: gcr.io
    hosts: ["*.gcr.io"]
mirror:
"""
DIGEST = "sha256:" + "a" * 64


def test_an_empty_section_means_the_documented_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE.removesuffix("mirror:\n"))
    config = load_config(path)
    assert config.mirror.entries == ()
    assert config.mirror.defaults == MirrorDefaults()
    assert config.mirror.defaults.interval == Duration(6 * 3600.0)
    assert config.mirror.defaults.ratelimit.retry == Duration(900.0)


def test_defaults_and_entries_load_with_their_overrides(tmp_path: Path) -> None:
    config = load_config(_written(tmp_path, f"""\
  defaults:
    schedule: "0 3 * * *"
    ratelimit: {{min: 50, retry: 10m}}
    backup: "{{tag}}-{{date:%Y%m%d%H%M}}"
    keep_backups: 5
    platforms: [linux/amd64, linux/arm64/v8]
  entries:
    - source: alpine:3.20
      pin: {DIGEST}
      access: network
    - source: eu.gcr.io/proj/app
      tags: {{allow: ["v.*"], deny: [".*-rc"], semver: ">=1.2,<2"}}
      interval: 1h
      keep_backups: 0
      referrers: true
"""))  # fmt: skip
    defaults = config.mirror.defaults
    assert defaults.schedule == "0 3 * * *" and defaults.ratelimit.min == 50
    assert defaults.ratelimit.retry == Duration(600.0) and defaults.keep_backups == 5
    assert defaults.platforms == ("linux/amd64", "linux/arm64/v8")
    image, repository = config.mirror.entries
    assert (image.source, image.pin, image.access) == ("alpine:3.20", DIGEST, "network")
    assert repository.tags == TagFilter(("v.*",), (".*-rc",), ">=1.2,<2")
    assert repository.interval == Duration(3600.0) and repository.keep_backups == 0
    assert repository.referrers is True and repository.schedule is None


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + text)
    return path


# (YAML after `mirror:`, dotted key, line, words in the message)
MALFORMED = [
    ("  defaults:\n    schedul: '0 3 * * *'\n", "mirror.defaults.schedul", 10,
     "did you mean 'schedule'"),
    ("  entries:\n    - source: alpine\n      tag: {allow: [x]}\n", "mirror.entries[0].tag", 11,
     "unknown key"),
    ("  defaults:\n    schedule: every day\n", "mirror.defaults.schedule", 10,
     "not a cron expression"),
    ("  entries:\n    - source: alpine\n      schedule: '61 * * * *'\n",
     "mirror.entries[0].schedule", 11, "not a cron expression"),
    ("  defaults:\n    ratelimit: {min: 10, retry: 4m}\n", "mirror.defaults.ratelimit.retry", 10,
     "at least 300 seconds"),
    ("  defaults:\n    interval: 0s\n", "mirror.defaults.interval", 10, "more than 0"),
    ("  defaults:\n    interval: soon\n", "mirror.defaults.interval", 10, "expected a duration"),
    ("  defaults:\n    backup: '{date:%Y}'\n", "mirror.defaults.backup", 10, "must contain {tag}"),
    ("  defaults:\n    backup: '{tag}-{when}'\n", "mirror.defaults.backup", 10, "use {tag}"),
    ("  defaults:\n    platforms: [linux]\n", "mirror.defaults.platforms", 10, "OS/ARCH"),
    ("  defaults:\n    keep_backups: -1\n", "mirror.defaults.keep_backups", 10, "between 0"),
    (f"  entries:\n    - source: alpine\n      pin: {DIGEST}\n", "mirror.entries[0].pin", 11,
     "only an image"),
    ("  entries:\n    - source: alpine:3.20\n      pin: sha256:abc\n", "mirror.entries[0].pin",
     11, "invalid digest"),
    ("  entries:\n    - source: alpine:3.20\n      tags: {allow: ['3.*']}\n",
     "mirror.entries[0].tags", 11, "only a repository"),
    ("  entries:\n    - source: alpine\n      tags: {semver: 'not a range'}\n",
     "mirror.entries[0].tags.semver", 11, "not a version range"),
    ("  entries:\n    - source: alpine\n      tags: {deny: ['(']}\n",
     "mirror.entries[0].tags.deny", 11, "not a regular expression"),
    ("  entries:\n    - source: example.com/org/app:1\n", "mirror.entries[0].source", 10,
     "'example.com' is not an API host of a configured registry"),
    ("  entries:\n    - source: alpine:3.20\n    - source: docker.io/library/alpine:3.20\n",
     "mirror.entries[1].source", 11, "already mirrored by mirror.entries[0]"),
    (f"  entries:\n    - source: alpine@{DIGEST}\n", "mirror.entries[0].source", 10,
     "pin a digest with 'pin'"),
    ("  entries:\n    - source: Alpine:3.20\n", "mirror.entries[0].source", 10,
     "invalid repository name"),
    ("  entries:\n    - source: alpine:3.20\n      access: everyone\n",
     "mirror.entries[0].access", 11, "must be one of network, upstream"),
    ("  entries:\n    - pin: x\n", "mirror.entries[0].source", 10, "required key is missing"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "line", "words"), MALFORMED, ids=[m[1] for m in MALFORMED])
def test_a_mistake_in_the_mirror_section_names_its_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, words: str
) -> None:
    path = _written(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line {line}: {key}: "), message
    assert words in message, message
