"""``tideflow report RUN_DIR``: a self-contained HTML report of a recorded run (inline SVG).

The report has no scripts, fonts or links to fetch: one file to mail or archive.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tideflow.dashboard._record import RunLog, read_run
from tideflow.dashboard._state import latency_quantile
from tideflow.runtime._worker import LATENCY_BUCKETS

__all__ = ["render_report", "write_report"]

_COLORS = ("#1769aa", "#c0392b", "#23845b", "#b9770e", "#7d3c98", "#117a65")


def _num(v: float) -> str:
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:,.2f}"


def svg_lines(
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    width: int = 760,
    height: int = 220,
    xlabel: str = "seconds",
) -> str:
    """An SVG line chart of ``series`` (name, values) against ``xs``.

    Examples
    --------
    >>> svg_lines([0, 1, 2], [("rate", [1.0, 3.0, 2.0])]).startswith("<svg")
    True
    """
    e = html.escape
    left, right, top, bottom = 70, 12, 22, 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="chart">'
    ]
    values = [v for _, vs in series for v in vs]
    if len(xs) < 2 or not values:
        parts.append(f'<text x="{left}" y="{height // 2}">not enough points</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, *values), max(values) * 1.1 or 1.0
    xspan, yspan = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def px(x: float) -> float:
        return left + (width - left - right) * (x - x0) / xspan

    def py(y: float) -> float:
        return top + (height - top - bottom) * (1 - (y - y0) / yspan)

    for i in range(5):
        v = y0 + yspan * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{py(v):.1f}" y2="{py(v):.1f}" '
            'stroke="#eceff3"/>'
        )
        parts.append(
            f'<text x="{left - 5}" y="{py(v) + 4:.1f}" text-anchor="end" '
            f'class="ax">{_num(v)}</text>'
        )
    parts.append(f'<text x="{left}" y="{height - 8}" class="ax">{_num(x0)}</text>')
    parts.append(
        f'<text x="{width - right}" y="{height - 8}" text-anchor="end" class="ax">'
        f"{_num(x1)} {e(xlabel)}</text>"
    )
    for i, (name, vs) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, vs, strict=False))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(
            f'<text x="{left + 8 + 170 * i}" y="14" fill="{color}" class="ax">{e(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(labels: Sequence[str], values: Sequence[float], *, width: int = 860) -> str:
    """A horizontal SVG bar chart.

    Examples
    --------
    >>> "<rect" in svg_bars(["a", "b"], [1, 2])
    True
    """
    e = html.escape
    bar, gap, left, right = 18, 6, 300, 90
    height = max(1, len(labels)) * (bar + gap) + 6
    top = max([*values, 1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="chart">'
    ]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = 3 + i * (bar + gap)
        w = max(1.0, (width - left - right) * v / top)
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" class="ax">{e(label)}</text>'
        )
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="#1769aa"/>')
        parts.append(f'<text x="{left + w + 5:.1f}" y="{y + 13}" class="ax">{_num(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rates(log: RunLog, ids: set[str], col: int) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for (t0, a), (t1, b) in zip(log.points, log.points[1:], strict=False):
        if t1 <= t0:
            continue
        d = sum(b.get(k, [0] * 4)[col] - a.get(k, [0] * 4)[col] for k in ids)
        xs.append(t1)
        ys.append(d / (t1 - t0))
    return xs, ys


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = 20) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{e('' if v is None else str(v))}</td>" for v in r) + "</tr>"
        for r in list(rows)[:limit]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(log: RunLog) -> str:
    """The report's HTML for a recorded run."""
    e = html.escape
    sources = {s["id"] for s in log.steps if s["kind"] == "source"}
    sinks = {s["id"] for s in log.steps if s["kind"] == "sink"}
    last = log.points[-1][1] if log.points else {}
    seconds = log.finish["seconds"] if log.finish else (log.points[-1][0] if log.points else 0.0)
    records = log.records_in
    dead = sum(v[2] for v in last.values())
    state = (
        "failed: " + str(log.finish["error"])
        if log.finish and log.finish.get("error")
        else "finished"
        if log.completed
        else "stopped"
        if log.finish
        else "no end recorded"
    )
    rate = records / seconds if seconds else 0.0
    xs, r_in = _rates(log, sources, 1)
    _, r_out = _rates(log, sinks, 0)
    _, r_dead = _rates(log, set(last), 2)
    latency = _latency_section(log, sinks, xs)
    step_rows = [
        [s["id"], s["kind"], *(f"{v:,}" for v in last.get(s["id"], [0, 0, 0, 0]))]
        for s in log.steps
    ]
    # Rows out per step; sinks emit nothing, so theirs is rows in.
    col = {s["id"]: 0 if s["kind"] == "sink" else 1 for s in log.steps}
    labels = [f"{s['id']} ({'in' if col[s['id']] == 0 else 'out'})" for s in log.steps]
    values = [float(last.get(s["id"], [0, 0, 0, 0])[col[s["id"]]]) for s in log.steps]
    tables = (
        "".join(
            f"<h3>{e(topic)} <small>({total:,} rows published; last {len(rows):,} kept, newest "
            f"last)</small></h3>{_table(cols, rows[-20:])}"
            for topic, (cols, rows, total) in sorted(log.tables.items())
        )
        or "<p>No live tables were published (add a <code>connectors.live.sink_live</code>).</p>"
    )
    css = (
        "body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#1d232b}"
        "h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}h3{font-size:.95rem}"
        "table{border-collapse:collapse;font-variant-numeric:tabular-nums}"
        "td,th{padding:.2rem .6rem;border-bottom:1px solid #d9dde3;text-align:left}"
        ".ax{font-size:11px;fill:#6b7580}.kv td:first-child{color:#6b7580}"
        "small{color:#6b7580;font-weight:400}"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tideflow run report: {e(log.flow)}</title>
<style>{css}</style></head><body>
<h1>Run report: {e(log.flow)}</h1>
<table class="kv">
<tr><td>started</td><td>{e(log.started)}</td></tr>
<tr><td>outcome</td><td>{e(state)}</td></tr>
<tr><td>duration</td><td>{seconds:,.1f} s</td></tr>
<tr><td>workers</td><td>{log.workers}</td></tr>
<tr><td>records in</td><td>{records:,} ({rate:,.0f}/s on average)</td></tr>
<tr><td>dead letters</td><td>{dead:,}</td></tr>
</table>
<h2>Throughput over time</h2>
{svg_lines(xs, [("records in /s", r_in), ("rows into sinks /s", r_out)])}
<h2>Dead letters per second</h2>
{svg_lines(xs, [("dead letters /s", r_dead)])}
<h2>Latency over time</h2>
{latency}
<h2>Counts per step</h2>
{svg_bars(labels, values)}
{_table(["step", "kind", "rows in", "rows out", "dead", "batches"], step_rows, limit=1000)}
<h2>Top results</h2>
{tables}
<p><small>Generated by tideflow from {e(str(len(log.points)))} counter points.</small></p>
</body></html>
"""


def _latency_section(log: RunLog, sinks: set[str], xs: list[float]) -> str:
    """Batch latency source to sink (p50, p99 between two points), or the older stand-in."""
    if log.latency and len(log.latency) == len(log.points):
        p50, p99 = [], []
        for (t0, a), (t1, b) in itertools.pairwise(log.latency):
            if t1 <= t0:  # as the throughput points (_rates)
                continue
            counts = [0] * (len(LATENCY_BUCKETS) + 1)
            for k in sinks:
                new, old = b.get(k, []), a.get(k, [])
                for i, c in enumerate(new):
                    counts[i] += c - (old[i] if i < len(old) else 0)
            p50.append(1000.0 * (latency_quantile(counts, 0.5) or 0.0))
            p99.append(1000.0 * (latency_quantile(counts, 0.99) or 0.0))
        return (
            "<p><small>Batch latency from a micro-batch leaving its source to a sink having "
            "written it (ms), p50 and p99 of the sink batches between two points, estimated "
            "from the histogram buckets.</small></p>"
            + svg_lines(xs, [("p50 ms", p50), ("p99 ms", p99)])
        )
    # Logs without latency: the interval between source batches, a floor of the latency.
    sources = {s["id"] for s in log.steps if s["kind"] == "source"}
    _, batches = _rates(log, sources, 3)
    interval = [1000.0 / b if b > 0 else 0.0 for b in batches]
    return (
        "<p><small>This run log has no latency counts; shown is the mean interval between "
        "source micro-batches (ms), which bounds how long a record waits to be read.</small></p>"
        + svg_lines(xs, [("ms between source batches", interval)])
    )


def write_report(run_dir: str | Path, out: str | Path) -> Path:
    """Write the HTML report of the run recorded in ``run_dir`` to ``out``; return its path.

    Examples
    --------
    >>> import tempfile, os
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> from tideflow.dashboard import RunRecorder
    >>> d = tempfile.mkdtemp()
    >>> flow = tf.Dataflow("doc_report")
    >>> flow.source(TestingSource([{"k": 1}])).sink(CollectSink())
    >>> _ = tf.run(flow, observers=[RunRecorder(d)])
    >>> p = write_report(d, os.path.join(d, "report.html"))
    >>> "Run report: doc_report" in p.read_text()
    True
    """
    text = render_report(read_run(run_dir))
    path = Path(out)
    path.write_text(text, encoding="utf-8")
    return path
