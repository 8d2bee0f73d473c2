"""What the dashboard knows about a run: graph, counters over time, live tables, the result.

:class:`LiveState` is a :class:`~tideflow.runtime.RunObserver`: the run driver calls it (on the
driver's thread, so every call returns quickly: it only stores references under a lock), and
the web server reads consistent snapshots of it from its own thread.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from tideflow._errors import ConfigError
from tideflow.connectors.live import KEY_META
from tideflow.runtime._observe import BaseObserver, CheckpointInfo, StepInfo
from tideflow.runtime._worker import LATENCY_BUCKETS

if TYPE_CHECKING:
    from tideflow.runtime._control import RunControl
    from tideflow.runtime._run import RunResult
    from tideflow.runtime._worker import StepStats

__all__ = [
    "CHECKPOINT_BUCKETS",
    "LiveState",
    "Panel",
    "PanelKind",
    "RunStatus",
    "model_panel",
    "state_table_name",
]

PanelKind = Literal["table", "line", "bar"]
RunStatus = Literal["waiting", "running", "finished", "stopped", "failed"]
_PANEL_KINDS = ("table", "line", "bar")

#: How many points of counter history the dashboard keeps (one per stats report, ~2/s).
HISTORY = 600
#: Upper bounds (seconds) of the checkpoint duration histogram buckets.
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def state_table_name(step_id: str) -> str:
    """The SQL table of a step's keyed state: its step id with ``.`` (and other signs) as ``_``.

    Examples
    --------
    >>> state_table_name("fraud.features.card_stats")
    'fraud_features_card_stats'
    """
    return re.sub(r"\W", "_", step_id)


@dataclasses.dataclass(frozen=True, slots=True)
class _Point:
    """Counters of one step at one moment (a point of history)."""

    rows_in: int
    rows_out: int
    dead: int
    batches: int
    blocked_s: float = 0.0
    busy_s: float = 0.0
    latency: tuple[int, ...] = ()


def _point(s: StepStats) -> _Point:
    return _Point(
        s.rows_in,
        s.rows_out,
        s.dead,
        s.batches,
        getattr(s, "blocked_s", 0.0),
        getattr(s, "busy_s", 0.0),
        tuple(getattr(s, "latency", ())),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Panel:
    """One panel of a job's dashboard: a SQL query over the live tables, drawn as table or chart.

    Parameters
    ----------
    title
        The panel's heading.
    sql
        A read-only query over the live tables (one table per published topic).
    kind
        ``"table"``, ``"line"`` (``x`` against one or more ``y`` columns) or ``"bar"``.
    x, y
        Column names for charts.

    Examples
    --------
    >>> Panel("Cards flagged per rule", "SELECT rule, cards FROM rules", kind="bar",
    ...       x="rule", y=("cards",)).kind
    'bar'
    """

    title: str
    sql: str
    kind: PanelKind = "table"
    x: str | None = None
    y: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _PANEL_KINDS:
            msg = f"dashboard panel {self.title!r}: kind must be one of {_PANEL_KINDS}, got {self.kind!r}"
            raise ConfigError(msg)
        if self.kind != "table" and (self.x is None or not self.y):
            msg = f"dashboard panel {self.title!r}: a {self.kind} chart needs x= and y= columns"
            raise ConfigError(msg)


def model_panel(topic: str = "model", title: str = "Model quality (prequential)") -> Panel:
    """A line chart of an online model's metric over records seen.

    For the rows of ``tideflow.ml.evaluate`` (``n``, ``metric``, ``value``) published with
    ``live.sink_live(topic, keep=...)``.

    Examples
    --------
    >>> model_panel("fraud_model").sql
    'SELECT n, max(value) AS value FROM fraud_model GROUP BY n ORDER BY n'
    """
    return Panel(
        title,
        f"SELECT n, max(value) AS value FROM {topic} GROUP BY n ORDER BY n",
        kind="line",
        x="n",
        y=("value",),
    )


@dataclasses.dataclass(slots=True)
class _Table:
    keep: int
    key: tuple[str, ...] | None
    frame: pl.DataFrame | None = None
    total: int = 0
    updated: float = 0.0


class LiveState(BaseObserver):
    """A run observer that keeps the latest graph, counters, counter history and live tables.

    Parameters
    ----------
    keep
        Rows kept per published topic when the publisher does not say (the latest ones).

    Examples
    --------
    >>> import polars as pl
    >>> from tideflow.runtime import StepInfo, StepStats
    >>> st = LiveState()
    >>> st.on_start("job", [StepInfo("src", "source", ())], 1)
    >>> st.on_stats({"src": StepStats(rows_out=10)}, 1.0)
    >>> st.on_rows("alerts", pl.DataFrame({"card": ["c1"]}))
    >>> snap = st.snapshot()
    >>> snap["status"], snap["steps"][0]["rows_out"], snap["tables"]["alerts"]["total"]
    ('running', 10, 1)
    """

    def __init__(self, *, keep: int = 200) -> None:
        self._lock = threading.Lock()
        self.keep = keep
        self.flow = ""
        self.workers = 0
        self.steps: list[StepInfo] = []
        self.status: RunStatus = "waiting"
        self.started_wall = 0.0
        self.elapsed = 0.0
        self.latest: dict[str, StepStats] = {}
        #: (elapsed, {step: counters}), newest last.
        self.history: collections.deque[tuple[float, dict[str, _Point]]] = collections.deque(
            maxlen=HISTORY
        )
        self.tables: dict[str, _Table] = {}
        self.result: RunResult | None = None
        self.version = 0
        self._changed = threading.Condition(self._lock)
        #: The run's handle (reads of keyed state); None before the run starts.
        self.control: RunControl | None = None
        #: The latest checkpoint, counts written/failed, durations of recent ones.
        self.last_checkpoint: CheckpointInfo | None = None
        self.checkpoints = {"written": 0, "failed": 0}
        self.checkpoint_buckets = [0] * (len(CHECKPOINT_BUCKETS) + 1)
        self.checkpoint_seconds = 0.0
        self.recent_checkpoints: collections.deque[CheckpointInfo] = collections.deque(maxlen=60)
        #: (elapsed, value) of each evaluate step's metric, newest last.
        self.model_history: dict[str, collections.deque[tuple[float, float]]] = {}

    # -- observer side (driver thread) ----------------------------------------------------
    def on_control(self, control: RunControl) -> None:
        """Keep the run's handle (SQL reads keyed state through it)."""
        self.control = control

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        """Count a checkpoint and its duration."""
        import bisect

        with self._lock:
            self.last_checkpoint = info
            self.recent_checkpoints.append(info)
            if info.written:
                self.checkpoints["written"] += 1
                self.checkpoint_buckets[bisect.bisect_left(CHECKPOINT_BUCKETS, info.seconds)] += 1
                self.checkpoint_seconds += info.seconds
            else:
                self.checkpoints["failed"] += 1
            self._bump()

    def on_start(self, flow: str, steps: list[StepInfo], workers: int) -> None:
        """Remember the graph."""
        with self._lock:
            self.flow, self.steps, self.workers = flow, list(steps), workers
            self.status = "running"
            self.started_wall = time.time()
            self._bump()

    def on_stats(self, stats: dict[str, StepStats], elapsed: float) -> None:
        """Keep the counters and a point of history."""
        point = {k: _point(s) for k, s in stats.items()}
        with self._lock:
            self.latest = dict(stats)
            self.elapsed = elapsed
            self.history.append((elapsed, point))
            for k, s in stats.items():
                value = getattr(s, "metric_value", None)
                if value is not None:
                    hist = self.model_history.setdefault(k, collections.deque(maxlen=HISTORY))
                    hist.append((elapsed, value))
            self._bump()

    def on_rows(self, topic: str, rows: pl.DataFrame) -> None:
        """Append published rows to the topic's live table (or upsert them by key)."""
        keep, key = self.keep, None
        if KEY_META in rows.columns:
            meta = rows.get_column(KEY_META)[0]
            rows = rows.drop(KEY_META)
            keep = int(meta["keep"]) if meta and meta["keep"] else keep
            key = tuple(meta["key"]) if meta and meta["key"] else None
        with self._lock:
            table = self.tables.get(topic)
            if table is None:
                table = self.tables[topic] = _Table(keep, key)
            table.keep, table.key = keep, key
            table.total += rows.height
            table.updated = time.time()
            if table.frame is None:
                frame = rows
            else:
                try:
                    frame = pl.concat([table.frame, rows], how="vertical_relaxed")
                except Exception:  # the topic's schema changed: start over with the new rows
                    frame = rows
            if key is not None:
                frame = frame.unique(subset=list(key), keep="last", maintain_order=True)
            table.frame = frame.tail(keep)
            self._bump()

    def on_finish(self, result: RunResult) -> None:
        """Keep the result and the final counters."""
        with self._lock:
            self.result = result
            self.latest = dict(result.steps)
            self.elapsed = result.seconds
            point = {k: _point(s) for k, s in result.steps.items()}
            self.history.append((result.seconds, point))
            if result.error is not None:
                self.status = "failed"
            else:
                self.status = "finished" if result.completed else "stopped"
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    # -- reader side (server thread) ------------------------------------------------------
    def wait_change(self, version: int, timeout: float) -> int:
        """Block until the state is newer than ``version`` (or ``timeout`` seconds); return it."""
        with self._changed:
            if self.version == version:
                self._changed.wait(timeout)
            return self.version

    def frames(self) -> dict[str, pl.DataFrame]:
        """The live tables now (Polars frames are immutable: a consistent snapshot)."""
        with self._lock:
            return {k: t.frame for k, t in self.tables.items() if t.frame is not None}

    def counters(self) -> tuple[list[StepInfo], dict[str, StepStats], float]:
        """The graph, the latest counters and the elapsed seconds."""
        with self._lock:
            return list(self.steps), dict(self.latest), self.elapsed

    def rates(self, window: float = 5.0) -> dict[str, tuple[float, float]]:
        """Rows in/out per second per step over the last ``window`` seconds of history."""
        with self._lock:
            hist = list(self.history)
        return _rates(hist, window)

    def snapshot(self, *, table_rows: int = 50, history: int = 120) -> dict[str, Any]:
        """Everything the dashboard shows, as JSON-able data (the ``/api/state`` answer)."""
        with self._lock:
            steps = list(self.steps)
            latest = dict(self.latest)
            hist = list(self.history)
            tables = {k: dataclasses.replace(t) for k, t in self.tables.items()}
            status, elapsed, result = self.status, self.elapsed, self.result
            flow, workers, version = self.flow, self.workers, self.version
            checkpoint = self._checkpoint_json()
            models = {k: list(v)[-history:] for k, v in self.model_history.items()}
        win = _window(hist, 5.0)
        sources = {s.step_id for s in steps if s.kind == "source"}
        sinks = {s.step_id for s in steps if s.kind == "sink"}
        queryable = self.control.queryable if self.control is not None else frozenset()
        out_steps = []
        for s in steps:
            st = latest.get(s.step_id)
            now = win.recent(s.step_id)
            out_steps.append(
                {
                    "id": s.step_id,
                    "kind": s.kind,
                    "detail": s.detail,
                    "inputs": [[i, p] for i, p in s.inputs],
                    "rows_in": st.rows_in if st else 0,
                    "rows_out": st.rows_out if st else 0,
                    "dead": st.dead if st else 0,
                    "batches": st.batches if st else 0,
                    "rate_in": round(now.rate_in, 1),
                    "rate_out": round(now.rate_out, 1),
                    # Share of the time the sources stood still for backpressure (sources only).
                    "backpressure": round(now.blocked / max(workers, 1), 3)
                    if s.step_id in sources and win.seconds > 0
                    else None,
                    # Share of one core the step's own work took.
                    "busy": round(now.busy, 3) if win.seconds > 0 else None,
                    "latency_p50_s": _rounded(latency_quantile(now.latency, 0.5)),
                    "latency_p99_s": _rounded(latency_quantile(now.latency, 0.99)),
                    "watermark": _watermark(st)[0],
                    "watermark_lag_s": _watermark(st)[1],
                    "late": _optional(st, "late"),
                    "state_table": state_table_name(s.step_id) if s.step_id in queryable else None,
                }
            )
        records_in = sum(latest[k].rows_out for k in sources if k in latest)
        records_out = sum(latest[k].rows_in for k in sinks if k in latest)
        dead = sum(v.dead for v in latest.values())
        series = []
        for t, point in hist[-history:]:
            series.append(
                [
                    round(t, 2),
                    sum(point[k].rows_out for k in sources if k in point),
                    sum(p.dead for p in point.values()),
                ]
            )
        rate_in = sum(win.recent(k).rate_out for k in sources)
        sink_latency = [0] * (len(LATENCY_BUCKETS) + 1)
        for k in sinks:
            for i, c in enumerate(win.recent(k).latency):
                sink_latency[i] += c
        pressures = [x["backpressure"] for x in out_steps if x["backpressure"] is not None]
        return {
            "version": version,
            "flow": flow,
            "workers": workers,
            "status": status,
            "started": self.started_wall,
            "elapsed": round(elapsed, 2),
            "totals": {
                "records_in": records_in,
                "records_out": records_out,
                "dead_letters": dead,
                "rate_in": round(rate_in, 1),
                "late": _sum_optional(latest.values(), "late"),
                # Source to sink, over the last seconds (sink batches of every sink).
                "latency_p50_s": _rounded(latency_quantile(sink_latency, 0.5)),
                "latency_p99_s": _rounded(latency_quantile(sink_latency, 0.99)),
                "backpressure": max(pressures) if pressures else None,
            },
            "checkpoint": checkpoint,
            "steps": out_steps,
            "models": _models_json(steps, latest, out_steps, models),
            # [elapsed, records read by sources, dead letters], oldest first.
            "history": series,
            "tables": {name: _table_json(t, table_rows) for name, t in sorted(tables.items())},
            "result": None
            if result is None
            else {
                "completed": result.completed,
                "seconds": round(result.seconds, 3),
                "records_in": result.records_in,
                "dead_letters": result.dead_letters,
                "error": result.error,
            },
        }

    def _checkpoint_json(self) -> dict[str, Any] | None:
        """The checkpoint card: the latest one, counts, recent durations (lock held)."""
        last = self.last_checkpoint
        if last is None:
            return None
        return {
            "id": last.checkpoint_id,
            "status": "written" if last.written else "failed",
            "seconds": round(last.seconds, 4),
            "age_s": round(max(0.0, time.time() - last.at), 1),
            "written": self.checkpoints["written"],
            "failed": self.checkpoints["failed"],
            "recent": [
                [c.checkpoint_id, round(c.seconds, 4), c.written] for c in self.recent_checkpoints
            ],
        }


def _models_json(
    steps: list[StepInfo],
    latest: dict[str, StepStats],
    out_steps: list[dict[str, Any]],
    history: dict[str, list[tuple[float, float]]],
) -> list[dict[str, Any]]:
    """The online-model steps (``tideflow.ml`` predict/learn/evaluate): counts and metrics."""
    out = []
    for s, row in zip(steps, out_steps, strict=True):
        if not s.detail.startswith("ml."):
            continue
        mode, _, model = s.detail[3:].partition(" ")
        st = latest.get(s.step_id)
        value = getattr(st, "metric_value", None)
        out.append(
            {
                "id": s.step_id,
                "mode": mode,
                "model": model,
                "records": row["rows_in"],
                "rate": row["rate_in"],
                "metric": getattr(st, "metric", None),
                "value": _jsonable(value),
                "history": [[round(t, 2), _jsonable(v)] for t, v in history.get(s.step_id, [])],
            }
        )
    return out


def latency_quantile(counts: Sequence[int], q: float) -> float | None:
    """Estimate a quantile from latency bucket counts (:data:`LATENCY_BUCKETS`).

    Linear within the bucket that holds it, as Prometheus' ``histogram_quantile``; the last
    (open) bucket answers its lower bound. None without counts.

    Examples
    --------
    >>> latency_quantile([0, 10] + [0] * 12, 0.5)  # all between 1 and 2.5 ms
    0.00175
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            lo = LATENCY_BUCKETS[i - 1] if i else 0.0
            hi = LATENCY_BUCKETS[i]
            return lo + (hi - lo) * (rank - seen) / c
        seen += c
    return LATENCY_BUCKETS[-1]


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 5)


@dataclasses.dataclass(frozen=True, slots=True)
class _Recent:
    """A step's activity over the window: rates, shares of time, latency bucket counts."""

    rate_in: float = 0.0
    rate_out: float = 0.0
    blocked: float = 0.0
    busy: float = 0.0
    latency: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Window:
    """The first and last points of history over the last seconds."""

    seconds: float
    first: dict[str, _Point]
    last: dict[str, _Point]

    def recent(self, step: str) -> _Recent:
        b = self.last.get(step)
        if b is None or self.seconds <= 0:
            return _Recent()
        a = self.first.get(step, _Point(0, 0, 0, 0))
        dt = self.seconds
        lat = tuple(
            y - (a.latency[i] if i < len(a.latency) else 0) for i, y in enumerate(b.latency)
        )
        return _Recent(
            (b.rows_in - a.rows_in) / dt,
            (b.rows_out - a.rows_out) / dt,
            max(0.0, b.blocked_s - a.blocked_s) / dt,
            max(0.0, b.busy_s - a.busy_s) / dt,
            lat,
        )


def _window(hist: Sequence[tuple[float, dict[str, _Point]]], window: float) -> _Window:
    if len(hist) < 2:
        return _Window(0.0, {}, hist[-1][1] if hist else {})
    t1, last = hist[-1]
    first_t, first = hist[0]
    for t, point in reversed(hist[:-1]):
        first_t, first = t, point
        if t1 - t >= window:
            break
    return _Window(max(0.0, t1 - first_t), first, last)


def _optional(stats: object, name: str) -> Any:
    """A counter the engine may not report (yet): its value, or None for "n/a"."""
    value = getattr(stats, name, None) if stats is not None else None
    return _jsonable(value)


def _watermark(stats: object) -> tuple[str | None, float | None]:
    """A step's watermark (epoch milliseconds in the counters) as ISO text, and its lag.

    The lag is wall-clock time minus the watermark, in seconds (meaningful when event time
    follows the clock); the counters' own ``watermark_lag_s`` wins when present.
    """
    wm = getattr(stats, "watermark", None) if stats is not None else None
    lag = getattr(stats, "watermark_lag_s", None) if stats is not None else None
    if not isinstance(wm, int) or isinstance(wm, bool) or abs(wm) > 10**14:
        return None, lag if isinstance(lag, int | float) else None
    from datetime import UTC, datetime

    text = datetime.fromtimestamp(wm / 1000, UTC).isoformat(timespec="milliseconds")
    if not isinstance(lag, int | float):
        lag = round(time.time() - wm / 1000, 3)
    return text, lag


def _sum_optional(stats: Iterable[object], name: str) -> int | None:
    values = [getattr(s, name, None) for s in stats]
    known = [v for v in values if isinstance(v, int | float)]
    return int(sum(known)) if known else None


def _rates(
    hist: Sequence[tuple[float, dict[str, _Point]]], window: float
) -> dict[str, tuple[float, float]]:
    win = _window(hist, window)
    if win.seconds <= 0:
        return {}
    return {k: (win.recent(k).rate_in, win.recent(k).rate_out) for k in win.last}


def _table_json(t: _Table, limit: int) -> dict[str, Any]:
    frame = t.frame if t.frame is not None else pl.DataFrame()
    shown = frame.tail(limit).reverse()  # newest first
    return {
        "columns": shown.columns,
        "dtypes": [str(d) for d in shown.dtypes],
        "rows": _jsonable_rows(shown),
        "total": t.total,
        "kept": frame.height,
        "key": list(t.key) if t.key else None,
    }


def _jsonable_rows(frame: pl.DataFrame) -> list[list[Any]]:
    """Rows as JSON-able lists: temporals as ISO text, other unusual values as text."""
    return [[_jsonable(v) for v in row] for row in frame.rows()]


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
