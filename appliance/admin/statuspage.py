"""The status page: one HTML page, no scripts, the chart drawn as inline SVG. It shows
what `/metrics` says (parsed by `appliance.admin.status`), plus two things Prometheus labels
should not carry: bytes saved over time and the busiest repositories; and the managed
mirror's section (`mirrorpage.render`), given as `mirror`."""

from __future__ import annotations

import datetime as dt
import html
import time

from appliance.admin.metrics import Savings
from appliance.admin.status import Status
from appliance.kit.units import human_size


def render(status: Status, savings: Savings, ca_fingerprint: str, mirror: str = "") -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_ratio(r.hit_ratio)}</td><td>{r.hits:.0f}</td>"
        f"<td>{r.misses:.0f}</td><td>{r.stale:.0f}</td><td>{human_size(r.from_store)}</td>"
        f"<td>{human_size(r.fetched)}</td><td>{r.upstream_errors:.0f}</td>"
        f"<td>{_e(', '.join(f'{v:.0f}' for v in r.ratelimit.values()) or '-')}</td></tr>"
        for name, r in sorted(status.registries.items())
    )
    top = "".join(
        f"<tr><td>{_e(repo)}</td><td>{human_size(n)}</td></tr>"
        for repo, n in savings.repositories.most_common(10)
    )
    answered = sum(r.hits + r.misses + r.stale for r in status.registries.values())
    hits = sum(r.hits + r.stale for r in status.registries.values())
    ready = "ready" if status.ready else "NOT READY: " + "; ".join(status.problems)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>regcache status</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.1em; margin-top: 2em; }}
h3 {{ font-size: 1em; }}
.figures {{ display: flex; gap: 2em; }} .figure b {{ display: block; font-size: 1.8em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .2em .8em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr:nth-child(even) {{ background: #f4f4f4; }}
.bad {{ color: #b00; }} code {{ font-size: .85em; }}
</style></head><body>
<h1>regcache <span id="ready" class="{"" if status.ready else "bad"}">{_e(ready)}</span></h1>
<div class="figures">
{
        _figure(
            "store-bytes",
            "store",
            human_size(status.store_bytes),
            f"{human_size(status.free_bytes)} free",
        )
    }
{
        _figure(
            "hit-ratio",
            "hit ratio",
            _ratio(hits / answered if answered else None),
            f"{answered:.0f} answers",
        )
    }
{_figure("saved-bytes", "saved", human_size(savings.saved), "served from the store")}
{_figure("fetched-bytes", "fetched", human_size(savings.fetched), "from upstream")}
</div>
<h2>Bytes saved since start</h2>
{_chart([*savings.history, (time.time(), savings.saved)])}
<h2>Registries</h2>
<table id="registries"><tr><th>registry</th><th>hit ratio</th><th>hits</th><th>misses</th>
<th>stale</th><th>from store</th><th>fetched</th><th>upstream 5xx/429</th>
<th>rate limit left</th></tr>{rows}</table>
{mirror}<h2>Top repositories (bytes served)</h2>
<table id="top-repositories"><tr><th>repository</th><th>bytes</th></tr>{top}</table>
<h2>CA</h2>
<p>SHA-256 fingerprint <code id="ca-fingerprint">{_e(ca_fingerprint)}</code> —
<a id="ca-download" href="/ca.crt" download>download the CA certificate</a></p>
</body></html>
"""


def _chart(points: list[tuple[float, int]], width: int = 800, height: int = 200) -> str:
    """A line of cumulative bytes saved over time, with its extremes labelled."""
    start, end = points[0][0], max(points[-1][0], points[0][0] + 1)
    top = max(max(p[1] for p in points), 1)
    xy = " ".join(
        f"{40 + (t - start) / (end - start) * (width - 50):.1f},"
        f"{height - 20 - v / top * (height - 40):.1f}"
        for t, v in points
    )
    first = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    last = dt.datetime.fromtimestamp(end, dt.UTC).strftime("%H:%M UTC")
    return f"""<svg id="saved-chart" width="{width}" height="{height}" role="img"
aria-label="bytes saved over time" xmlns="http://www.w3.org/2000/svg">
<line x1="40" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#999"/>
<line x1="40" y1="20" x2="40" y2="{height - 20}" stroke="#999"/>
<text x="0" y="16" font-size="11">{human_size(top)}</text>
<text x="40" y="{height - 4}" font-size="11">{first}</text>
<text x="{width - 80}" y="{height - 4}" font-size="11">{last}</text>
<polyline id="saved-line" fill="none" stroke="#2a7" stroke-width="2" points="{xy}"/>
</svg>"""


def _figure(element: str, label: str, value: str, note: str) -> str:
    return f'<div class="figure">{label}<b id="{element}">{_e(value)}</b>{_e(note)}</div>'


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
