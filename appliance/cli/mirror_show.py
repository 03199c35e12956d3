"""How `regcache mirror` prints its answers as tables and lines (JSON is printed as is),
and which answers mean the command failed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from appliance.cli import output
from appliance.mirror.records import BudgetSeen
from appliance.mirror.report import EntryReport, Report
from appliance.oci.digest import Digest

_SHORT = len("sha256:") + 12


def short(digest: Digest | str | None, none: str = "-") -> str:
    return none if digest is None else str(digest)[:_SHORT]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else output.when(epoch)


def failed(result: Any) -> bool:
    """A diff or sync answer naming an error for an entry or a tag."""
    if not isinstance(result, dict) or not isinstance(result.get("entries"), list):
        return False
    return any(
        entry.get("error") or any(tag.get("error") for tag in entry.get("tags") or ())
        for entry in result["entries"]
    )


_STATUS = ("ENTRY", "TAG", "SERVING", "PINNED", "UPSTREAM", "DRIFT", "ACCESS", "BACKUPS",
           "LAST RUN", "LAST SUCCESS", "NEXT RUN", "STATE", "ERROR")  # fmt: skip


def _entry_rows(entry: EntryReport) -> list[tuple[object, ...]]:
    run = entry.run
    source = entry.source if entry.configured else f"{entry.source} (not configured)"
    runs: tuple[object, ...] = (
        ("-", "-", "-", "-")
        if run is None
        else (_when(run.last_run_s), _when(run.last_success_s), _when(run.next_run_s), run.state)
    )
    run_error = None if run is None else run.error
    if not entry.tags:
        return [(source, "-", "not copied yet", "-", "-", "-", entry.access or "auto", "-",
                 *runs, run_error or "")]  # fmt: skip
    rows: list[tuple[object, ...]] = []
    for i, tag in enumerate(entry.tags):
        first = i == 0
        upstream = "gone" if tag.drift == "gone" else short(tag.upstream, "?")
        rows.append(
            (source if first else "", tag.tag, short(tag.serving), short(tag.pinned), upstream,
             tag.drift, tag.access, tag.backups, *(runs if first else ("",) * 4),
             tag.error or (run_error if first else None) or "")
        )  # fmt: skip
    return rows


def show_status(result: Report) -> None:
    if not result.entries:
        print("no mirror entries: list them under mirror.entries in the config, or")
        print("promote a cached tag with `regcache mirror add --from-cache IMAGE`")
    else:
        output.table(_STATUS, [row for e in result.entries for row in _entry_rows(e)])
    gone = [f"{e.source}:{t.tag}" for e in result.entries for t in e.tags if t.drift == "gone"]
    if gone:
        print(f"deleted upstream, still served from the mirror: {', '.join(gone)}")
    print()
    show_budgets(list(result.budgets))


def show_budgets(budgets: list[BudgetSeen]) -> None:
    if not budgets:
        print("rate-limit budgets: none seen yet")
        return
    output.table(
        ("REGISTRY", "CREDENTIAL", "REMAINING", "WINDOW", "SEEN (UTC)"),
        [
            (b.registry, b.credential, f"{b.remaining}/{'?' if b.limit is None else b.limit}",
             span(b.window_s), output.when(b.seen_s))
            for b in budgets
        ],
    )  # fmt: skip


def show_answer(result: dict[str, Any]) -> None:
    """A diff's or a sync's answer from the running regcache."""
    if "entries" not in result:
        print(f"request {result['request']} taken by the running regcache; "
              "see `regcache mirror status`")  # fmt: skip
        return
    rows: list[tuple[object, ...]] = []
    for entry in result["entries"]:
        if entry.get("error") or entry.get("waiting") or not entry.get("tags"):
            change = "waiting" if entry.get("waiting") else ("error" if entry.get("error") else "")
            why = entry.get("error") or entry.get("waiting") or ""
            rows.append((entry["entry"], "-", "-", "-", change or "no tags", why))
        for tag in entry.get("tags") or ():
            change = str(tag.get("change")) + (" (moved)" if tag.get("moved") else "")
            rows.append((entry["entry"], tag["tag"], short(tag.get("serving")),
                         short(tag.get("upstream")), change, tag.get("error") or ""))  # fmt: skip
    output.table(("ENTRY", "TAG", "SERVING", "UPSTREAM", "CHANGE", "ERROR"), rows)


def show_history(result: dict[str, Any]) -> None:
    print(f"history of {result['tag']} (oldest first)")
    output.table(
        ("WHEN (UTC)", "REASON", "OLD", "NEW", "BACKUP"),
        [(m["at"], m["reason"], m["old"] or "-", m["new"], m["backup"] or "-")
         for m in result["moves"]],
    )  # fmt: skip


def show_rollback(result: dict[str, Any]) -> None:
    backup = f"; {short(result['old'])} kept as {result['backup']}" if result["backup"] else ""
    print(f"{result['tag']} now serves {result['new']} (was {short(result['old'])}){backup}")
    print("pinned there until `regcache mirror unpin` (syncs do not move it)")


def show_add(result: dict[str, Any]) -> None:
    print(f"{result['tag']} mirrored at {result['digest']} as entry {result['entry']}")
    print(f"access {result['access']} ({result['why']})")


SHOW: dict[str, Callable[[Any], None]] = {
    "status": show_status,
    "diff": show_answer,
    "sync": show_answer,
    "pin": lambda result: print(result["message"]),
    "unpin": lambda result: print(result["message"]),
    "rollback": show_rollback,
    "history": show_history,
    "add": show_add,
    "rm": lambda result: print(
        f"{result['entry']}: {result['forgotten_tags']} tags and backup refs forgotten"
        " (their content is left to eviction; the history stays)"
    ),
}
