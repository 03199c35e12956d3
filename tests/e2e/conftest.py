from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.lab import Lab, lab


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    for tool in ("ip", "skopeo", "docker-registry", "htpasswd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make test installs it when run as root)"
    return None


@pytest.fixture(scope="module")
def the_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with lab(tmp_path_factory.mktemp("lab")) as running:
        yield running
