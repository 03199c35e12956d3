"""A CA for the tests: made now, valid a year, constrained to docker.io and ghcr.io."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from appliance.tls.ca import create_ca

NOW = dt.datetime.now(dt.UTC)
YEAR = dt.timedelta(days=365)


def new_ca(tmp: Path, domains: tuple[str, ...] | None = ("docker.io", "ghcr.io")):  # type: ignore[no-untyped-def]
    return create_ca(tmp, permitted_domains=domains, lifetime=YEAR, now=NOW)
