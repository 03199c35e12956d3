"""Host names and the exact-or-wildcard patterns that select intercepted hosts."""

from __future__ import annotations

import pytest

from appliance.config.hostnames import (
    HostnameError,
    HostSet,
    check_hostname,
    check_pattern,
    is_within,
    normalise,
    too_broad,
)


def test_names_are_kept_lower_case_without_one_trailing_dot() -> None:
    assert normalise(" Registry-1.Docker.IO. ") == "registry-1.docker.io"
    assert check_hostname("GHCR.io.") == "ghcr.io"
    assert check_hostname("cdn_edge.example") == "cdn_edge.example"  # CDNs use underscores


@pytest.mark.parametrize(
    ("name", "words"),
    [("", "empty"), (".", "empty"), ("10.0.0.1", "IP address"), ("[::1]", "IP address"),
     ("a" * 250 + ".com", "longer than 253"), ("-a.example", "invalid label"),
     ("a-.example", "invalid label"), ("a..example", "invalid label"),
     ("a b.example", "invalid label"), ("x" * 64 + ".example", "invalid label")],
)  # fmt: skip
def test_bad_host_names_are_refused_saying_why(name: str, words: str) -> None:
    with pytest.raises(HostnameError, match=words):
        check_hostname(name)


def test_a_wildcard_is_one_leading_label_below_a_domain_with_a_dot() -> None:
    assert check_pattern("*.Pkg.Dev.") == "*.pkg.dev"
    assert check_pattern("ghcr.io") == "ghcr.io"
    with pytest.raises(HostnameError, match="top-level domain"):
        check_pattern("*.com")
    for bad in ("a.*.example", "*example.com", "**.a.example", "*"):
        with pytest.raises(HostnameError, match="leading"):
            check_pattern(bad)


def test_a_host_set_matches_exact_names_and_well_formed_names_strictly_below_a_pattern() -> None:
    hosts = HostSet.of(["GHCR.io", "*.pkg.dev", "*.us.pkg.dev"])
    assert hosts.match("ghcr.io") and hosts.match("GHCR.IO.")
    assert hosts.match("us-docker.pkg.dev") and hosts.match("a.b.pkg.dev")
    for other in ("pkg.dev", "evilpkg.dev", "x.ghcr.io", "a b.pkg.dev", " ghcr.io", "-a.pkg.dev"):
        assert not hosts.match(other), other
    assert hosts.pattern_for("a.us.pkg.dev") == "*.us.pkg.dev"  # the closest pattern
    assert hosts.pattern_for("A.pkg.dev.") == "*.pkg.dev"
    assert hosts.pattern_for("GHCR.io") == "ghcr.io" and hosts.pattern_for("quay.io") is None
    assert hosts.patterns() == ["ghcr.io", "*.pkg.dev", "*.us.pkg.dev"]


def test_a_ca_domain_that_is_a_single_label_or_a_public_suffix_is_too_broad() -> None:
    assert "single label" in (too_broad("com") or "")
    assert "public suffix" in (too_broad("co.uk") or "")
    assert "public suffix" in (too_broad("s3.amazonaws.com") or "")  # the private section
    assert too_broad("docker.io") is None and too_broad("corp.example.co.uk") is None


def test_within_a_domain_means_the_domain_or_below_it_never_a_lookalike() -> None:
    assert is_within("docker.io", "docker.io") and is_within("registry-1.docker.io", "docker.io")
    assert not is_within("evildocker.io", "docker.io")
    assert not is_within("docker.io.evil.example", "docker.io")
