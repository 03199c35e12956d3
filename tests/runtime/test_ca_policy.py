"""Whether the CA fits the config: created on first start, refused when its constraints
leave out intercepted hosts, warned about when too broad."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.model import StartupError
from appliance.config.registries import Registries
from appliance.runtime.ca_policy import ca_constraints, ensure_ca
from appliance.tls.ca import create_ca
from tests.runtime.configs import config
from tests.tls.cas import NOW, YEAR, new_ca


def test_a_ca_constrained_to_a_public_suffix_is_warned_about(tmp_path: Path) -> None:
    """CAs made before public suffixes were refused (`microsoft.com` was fine, `co.uk`
    and `amazonaws.com`'s siblings were not) are named at start and by check-config."""
    from appliance.runtime.ca_policy import constraints_warning

    broad = create_ca(tmp_path / "a", permitted_domains=("docker.io", "co.uk"), lifetime=YEAR,
                      now=NOW)  # fmt: skip
    warning = constraints_warning(broad)
    assert warning is not None and "co.uk" in warning and "docker.io" not in warning
    assert constraints_warning(new_ca(tmp_path / "b")) is None


def test_the_ca_is_made_on_first_start_for_the_served_names_and_loaded_after(
    tmp_path: Path,
) -> None:
    first = config(tmp_path)
    ca = ensure_ca(first, Registries.of(first), NOW)
    assert ca.permitted_domains() == ("registry-1.docker.io",)
    assert ensure_ca(first, Registries.of(first), NOW).cert == ca.cert


def test_a_ca_whose_constraints_leave_out_a_host_stops_the_start_saying_what_to_do(
    tmp_path: Path,
) -> None:
    first = config(tmp_path)
    ensure_ca(first, Registries.of(first), NOW)
    wider = config(tmp_path, hosts="registry-1.docker.io, ghcr.io")
    with pytest.raises(StartupError, match=r"ghcr\.io .*regcache ca rotate"):
        ensure_ca(wider, Registries.of(wider), NOW)


def test_an_unconstrained_ca_fits_any_host_and_an_expiring_one_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    short = config(tmp_path, "tls: {name_constraints: false, ca_lifetime_days: 10}\n")
    ca = ensure_ca(short, Registries.of(short), NOW)
    assert ca.permitted_domains() is None and ca_constraints(short, Registries.of(short)) is None
    assert "ca expiring the regcache CA expires on" in caplog.text
    wider = config(tmp_path, "tls: {name_constraints: false}\n", hosts="ghcr.io, quay.io")
    assert ensure_ca(wider, Registries.of(wider), NOW).cert == ca.cert
