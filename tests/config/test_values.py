"""The values a config is written in: sizes, durations, endpoints, secret references."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.config.values import Duration, Endpoint, SecretRef, Size


def test_sizes_parse_and_bad_ones_are_refused() -> None:
    assert Size.parse("50GiB").bytes == 50 << 30 and Size.parse("500MB").bytes == 500 * 10**6
    assert Size.parse(1024).bytes == 1024 and Size.parse("80%").of(1000) == 800
    for bad in ("80 apples", "-5GB", "0%", "120%", True, "GiB"):
        with pytest.raises(ValueError, match="expected"):
            Size.parse(bad)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(300, 300.0), (1.5, 1.5), (0, 0.0), ("90s", 90.0), ("15m", 900.0), (" 6h ", 21600.0),
     ("1d", 86400.0), ("0.5h", 1800.0)],
)  # fmt: skip
def test_durations_are_seconds_or_a_number_with_a_unit(value: object, seconds: float) -> None:
    assert Duration.parse(value) == Duration(seconds)


@pytest.mark.parametrize("value", ["15 minutes", "m", "-5m", "5w", "", True, -1, None, [1]])
def test_bad_durations_are_refused_saying_what_is_expected(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like '300', '15m'"):
        Duration.parse(value)


@pytest.mark.parametrize("text", ["127.0.0.1:53", "[::1]:5353", "0.0.0.0:443", "[fe80::1]:1"])
def test_endpoints_read_as_they_are_written(text: str) -> None:
    assert str(Endpoint.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [("::1:53", "[ADDR]:PORT"), ("127.0.0.1", "ADDRESS:PORT"), (53, "ADDRESS:PORT"),
     ("gateway:53", "not an IP address"), ("127.0.0.1:0", "1..65535"),
     ("127.0.0.1:65536", "1..65535"), ("127.0.0.1:https", "1..65535")],
)  # fmt: skip
def test_bad_endpoints_are_refused_saying_why(text: object, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        Endpoint.parse(text)


def test_a_wildcard_listener_receives_what_is_sent_to_its_port_on_its_family() -> None:
    anywhere = Endpoint.parse("0.0.0.0:53")
    assert anywhere.receives(Endpoint.parse("127.0.0.1:53"))
    assert anywhere.receives(Endpoint.parse("192.0.2.1:53"))
    assert not anywhere.receives(Endpoint.parse("192.0.2.1:5353"))
    assert not anywhere.receives(Endpoint.parse("[2001:db8::1]:53"))
    own = Endpoint.parse("127.0.0.1:53")
    assert own.receives(Endpoint.parse("127.0.0.1:53"))
    assert not own.receives(Endpoint.parse("127.0.0.2:53"))


def test_a_secret_is_read_at_each_use_from_its_file_or_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    ref = SecretRef(file=path)
    assert ref.read() == "first"
    path.write_text("rotated\n")
    assert ref.read() == "rotated"
    monkeypatch.setenv("REGCACHE_TEST_SECRET", "from-env")
    assert SecretRef(env="REGCACHE_TEST_SECRET").read() == "from-env"
    monkeypatch.delenv("REGCACHE_TEST_SECRET")
    with pytest.raises(OSError, match="REGCACHE_TEST_SECRET"):
        SecretRef(env="REGCACHE_TEST_SECRET").read()
