"""Human-readable sizes."""

from __future__ import annotations

import pytest

from appliance.kit.units import human_size


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (5 * 2**20, "5.0 MiB"), (3.3 * 2**30, "3.3 GiB"),
     (2**40, "1.0 TiB"), (2048 * 2**40, "2048.0 TiB"), (-2048, "-2.0 KiB")],
)  # fmt: skip
def test_sizes_are_shown_in_binary_units_whole_bytes_below_one_kib(n: float, text: str) -> None:
    assert human_size(n) == text
