"""`store.s3`: a bad value is refused naming its key and line; a good one is taken."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.model import ConfigError, parse_config

BASE = """\
appliance: {ipv4: 10.0.0.1}
registries: [{name: hub, hosts: [registry-1.docker.io]}]
store:
  s3:
"""


def parse(lines: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_config(BASE + lines, tmp_path / "config.yaml")


def test_a_full_section_is_taken(tmp_path: Path) -> None:
    s3 = parse(
        "    endpoint: https://s3.eu-west-1.amazonaws.com\n"
        "    bucket: build-cache.eu\n"
        "    region: eu-west-1\n"
        "    prefix: regcache\n"
        "    part_size: 32MiB\n"
        "    lease: 1m\n"
        "    max_size: 2TiB\n"
        "    max_age: 90d\n"
        "    redirect: 15m\n"
        "    credentials: {access_key_id: {env: K}, secret_access_key: {file: /etc/k}}\n",
        tmp_path,
    ).store.s3
    assert s3 is not None
    assert (s3.bucket, s3.region, s3.key_prefix()) == ("build-cache.eu", "eu-west-1", "regcache/")
    assert s3.part_size.bytes == 32 << 20 and s3.lease.seconds == 60
    assert s3.credentials is not None and s3.credentials.access_key_id.env == "K"
    assert s3.verify_tls and not s3.force_path_style
    assert s3.max_size is not None and s3.max_size.bytes == 2 << 40
    assert s3.max_age is not None and s3.max_age.seconds == 90 * 86400
    assert s3.redirect is not None and s3.redirect.seconds == 900


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ("    endpoint: s3.local:9000\n    bucket: abc\n", "store.s3.endpoint", "http://"),
        ("    endpoint: http://s3/x\n    bucket: abc\n", "store.s3.endpoint", "no path"),
        ("    endpoint: http://s3\n    bucket: Ab\n", "store.s3.bucket", "not a bucket name"),
        ("    endpoint: http://s3\n    bucket: a..b\n", "store.s3.bucket", "not a bucket"),
        ("    endpoint: http://s3\n    bucket: abc\n    prefix: /x\n", "store.s3.prefix", ""),
        ("    endpoint: http://s3\n    bucket: abc\n    part_size: 4MiB\n",
         "store.s3.part_size", "5MiB"),
        ("    endpoint: http://s3\n    bucket: abc\n    part_size: 50%\n",
         "store.s3.part_size", "5MiB"),
        ("    endpoint: http://s3\n    bucket: abc\n    lease: 1s\n", "store.s3.lease", "5s"),
        ("    endpoint: http://s3\n    bucket: abc\n    credentials: {access_key_id: {env: K}}\n",
         "store.s3.credentials", "secret_access_key"),
        ("    endpoint: http://s3\n    bucket: abc\n"
         "    credentials: {access_key_id: {env: K, file: /k}, secret_access_key: {env: S}}\n",
         "store.s3.credentials.access_key_id", "exactly one"),
        ("    bucket: abc\n", "store.s3", "endpoint"),
        ("    endpoint: http://s3\n    bucket: abc\n    max_size: 10%\n", "store.s3.max_size",
         "bytes"),
        ("    endpoint: http://s3\n    bucket: abc\n    max_age: soon\n", "store.s3.max_age", ""),
        ("    endpoint: http://s3\n    bucket: abc\n    peer: x\n", "store.s3.peer", ""),
        ("    endpoint: http://s3\n    bucket: abc\n    redirect: 10s\n", "store.s3.redirect",
         "between 1m and 7d"),
        ("    endpoint: http://s3\n    bucket: abc\n    redirect: 8d\n", "store.s3.redirect",
         "between 1m and 7d"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_key_and_line(
    tmp_path: Path, lines: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"line \d+: {key}\b.*{message}"):
        parse(lines, tmp_path)
