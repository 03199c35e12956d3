"""The status page's mirror section: each entry's tags, drift, runs and errors, the
rate-limit budgets seen with when their window ends, and the latest tag moves."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence

from appliance.kit.units import human_size
from appliance.mirror.records import BudgetSeen, Move
from appliance.mirror.scheduler import Figures


def render(figures: Sequence[Figures], budgets: Sequence[BudgetSeen], moves: Sequence[Move]) -> str:
    if not figures and not moves:
        return ""
    entries = "".join(
        f"<tr><td>{_e(f.entry)}</td><td>{f.tags}</td>"
        f'<td class="{"bad" if f.drift else ""}">{f.drift}</td>'
        f'<td class="{"bad" if f.gone else ""}">{f.gone}</td>'
        f'<td class="{"" if f.state in ("idle", "running") else "bad"}">{_e(f.state)}</td>'
        f"<td>{_when(f.last_success_s)}</td><td>{_when(f.next_run_s)}</td>"
        f"<td>{'-' if f.duration_s is None else f'{f.duration_s:.1f} s'}</td>"
        f"<td>{human_size(f.fetched_bytes)}</td><td>{_e(f.error or '')}</td></tr>"
        for f in figures
    )
    left = "".join(
        f"<tr><td>{_e(b.registry)}</td><td>{_e(b.credential)}</td><td>{b.remaining}"
        f"{'' if b.limit is None else f' / {b.limit}'}</td>"
        f"<td>{_when(None if b.window_s is None else b.seen_s + b.window_s)}</td></tr>"
        for b in budgets
    )
    recent = "".join(
        f"<tr><td>{_when(m.moved_s)}</td><td>{_e(str(m.place))}</td><td>{_e(m.reason)}</td>"
        f"<td><code>{_short(m.old)}</code> → <code>{_short(m.new)}</code></td>"
        f"<td>{_e(m.backup or '')}</td></tr>"
        for m in reversed(moves)
    )
    return f"""<h2>Mirror</h2>
<table id="mirror-entries"><tr><th>entry</th><th>tags</th><th>drift</th>
<th>deleted upstream</th><th>state</th><th>last success</th><th>next run</th>
<th>last run took</th><th>fetched</th><th>error</th></tr>{entries}</table>
<h3>Rate-limit budgets</h3>
<table id="mirror-budgets"><tr><th>host</th><th>credential</th><th>left</th>
<th>window ends</th></tr>{left}</table>
<h3>Latest tag moves</h3>
<table id="mirror-moves"><tr><th>when</th><th>tag</th><th>why</th><th>digest</th>
<th>backup</th></tr>{recent}</table>
"""


def _when(moment: float | None) -> str:
    if moment is None or moment == float("inf"):
        return "-"
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(digest: object) -> str:
    return "-" if digest is None else _e(str(digest)[:19])


def _e(text: str) -> str:
    return html.escape(text, quote=True)
