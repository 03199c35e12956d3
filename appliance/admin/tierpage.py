"""The status page's section on the blob tier several gateways share (`store.s3`): the
bucket, whether it answers, what it holds, and what this gateway did with it."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.kit.units import human_size


@dataclass(frozen=True, slots=True)
class TierState:
    endpoint: str
    bucket: str
    problem: str | None
    counts: Mapping[str, int]
    """This gateway's, since it started (`TierCounts.figures`)."""
    held: tuple[int, int, bool, int, float] | None
    """(objects, bytes, listing complete, leases held, when) from the last survey."""


def render(state: TierState) -> str:
    c = state.counts
    if state.held is None:
        held = "not surveyed yet"
    else:
        objects, size, complete, leases, at_s = state.held
        when = dt.datetime.fromtimestamp(at_s, dt.UTC).strftime("%H:%M UTC")
        held = (f"{'' if complete else 'at least '}{objects} blobs, {human_size(size)};"
                f" {leases} fills leading now (at {when})")  # fmt: skip
    answer = "answers" if state.problem is None else f"DEGRADED: {state.problem}"
    return f"""<h2>Shared tier</h2>
<p id="tier-state" class="{"" if state.problem is None else "bad"}">bucket
<code>{_e(state.bucket)}</code> at <code>{_e(state.endpoint)}</code>: {_e(answer)}</p>
<p id="tier-held">{_e(held)}</p>
<table id="tier-counts"><tr><th>this gateway</th><th>blobs</th><th>bytes</th></tr>
<tr><td>read from the bucket</td><td>{c.get("reads", 0)}</td>
<td>{human_size(c.get("read_bytes", 0))}</td></tr>
<tr><td>filled and shared</td><td>{c.get("uploads", 0)}</td>
<td>{human_size(c.get("upload_bytes", 0))}</td></tr>
<tr><td>left to another gateway's fill</td><td>{c.get("waits", 0)}</td><td></td></tr>
<tr><td>taken over from a gateway gone</td><td>{c.get("takeovers", 0)}</td><td></td></tr>
<tr><td>clients sent to the bucket</td><td>{c.get("redirects", 0)}</td><td></td></tr>
</table>
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)
