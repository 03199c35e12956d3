"""One line of a check report (`regcache doctor`): what was checked, whether it passed,
what was found and, when it did not pass, how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'PASS' if self.ok else 'FAIL'}  {self.check}: {self.detail}"
        return text if self.ok else f"{text}\n      fix: {self.fix}"
