"""The status page's section on the site's other gateways (`peers`): which are up, what
share of the digests each owns now, and what was relayed to each."""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerRow:
    name: str
    up: bool
    since_s: float
    """When `up` last changed (epoch seconds); 0: not known."""
    why: str
    share: float
    """The part of all digests it owns now (0 when down)."""
    relays: int
    relays_failed: int
    refused: int


def render(rows: list[PeerRow]) -> str:
    body = "".join(_row(row) for row in rows)
    return f"""<h2>Peers</h2>
<p>A cold blob is filled once, by its owner among the gateways that are up (rendezvous
hashing of its digest); the others stream it from the owner as it arrives.</p>
<table id="peers"><tr><th>gateway</th><th>state</th><th>owns</th><th>relayed to it</th>
<th>failed</th><th>refused</th></tr>
{body}</table>
"""


def _row(row: PeerRow) -> str:
    if row.up:
        state = row.why or "up" if not row.since_s else f"up since {_when(row.since_s)}"
    else:
        state = f"DOWN since {_when(row.since_s)}: {row.why}" if row.since_s else row.why
    css = "" if row.up else ' class="bad"'
    return (f"<tr{css}><td><code>{_e(row.name)}</code></td><td>{_e(state)}</td>"
            f"<td>{row.share:.0%}</td><td>{row.relays}</td><td>{row.relays_failed}</td>"
            f"<td>{row.refused}</td></tr>\n")  # fmt: skip


def _when(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(text: str) -> str:
    return html.escape(text, quote=True)
