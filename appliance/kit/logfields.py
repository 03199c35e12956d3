"""One log event's `key=value` fields, formatted only if the line is emitted.

    log.info("fill committed %s", fields(digest=digest, bytes=n, s=f"{seconds:.3f}"))

gives `fill committed digest=sha256:… bytes=123 s=0.045`: the house's one-line events,
without a format string whose placeholders must be kept in step with its arguments.
"""

from __future__ import annotations


class Fields:
    __slots__ = ("_items",)

    def __init__(self, items: dict[str, object]) -> None:
        self._items = items

    def __str__(self) -> str:
        return " ".join(f"{key}={_value(value)}" for key, value in self._items.items())


def fields(**items: object) -> Fields:
    return Fields(items)


def _value(value: object) -> str:
    """A value that would split the line (spaces, `=`, empty) is quoted."""
    text = str(value)
    if not text or any(c.isspace() or c in '="' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
