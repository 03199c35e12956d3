"""Human-readable sizes for tables and pages."""

from __future__ import annotations


def human_size(n: float) -> str:
    """`1536` → `1.5 KiB` (binary units; whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
