"""Recording a run for reports: counters over time and the result, as JSON lines.

A :class:`RunRecorder` observer writes ``RUN_DIR/run.jsonl``, one JSON object per line, each
with a ``"type"``:

``start``   ``{"type": "start", "format": 1, "flow", "workers", "started" (ISO UTC),
            "steps": [{"id", "kind", "inputs": [[step, port], ...]}]}``
``stats``   ``{"type": "stats", "t": seconds since start, "steps": {step: [rows_in, rows_out,
            dead, batches]}}``, at most one per ``interval`` (counters are cumulative).
            Fields the engine does not report yet (``latency_ms``, ``watermarks``) will be
            added as optional keys; readers ignore keys they do not know.
``table``   ``{"type": "table", "topic", "columns", "rows", "total"}``: the last rows a live
            sink published (``connectors.live.sink_live``), written at the end.
``finish``  ``{"type": "finish", "seconds", "completed", "error", "records_in",
            "dead_letters", "steps": {...as in stats}}``

``tideflow report RUN_DIR`` reads it (:func:`read_run`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import polars as pl

from tideflow._errors import ConfigError
from tideflow.dashboard._state import LiveState, _jsonable_rows
from tideflow.runtime._observe import BaseObserver, StepInfo
from tideflow.runtime._worker import LATENCY_BUCKETS

if TYPE_CHECKING:
    from tideflow.runtime._run import RunResult
    from tideflow.runtime._worker import StepStats

__all__ = ["RunLog", "RunRecorder", "read_run"]

FORMAT = 1
FILE = "run.jsonl"


def _counters(stats: dict[str, StepStats]) -> dict[str, list[int]]:
    return {k: [s.rows_in, s.rows_out, s.dead, s.batches] for k, s in stats.items()}


def _latency(stats: dict[str, StepStats]) -> dict[str, list[int]]:
    """Batch latency bucket counts (cumulative over the run) of the steps that have some."""
    return {k: list(s.latency) for k, s in stats.items() if sum(getattr(s, "latency", ()))}


class RunRecorder(BaseObserver):
    """A run observer writing counters over time and the result to ``run_dir/run.jsonl``.

    Parameters
    ----------
    run_dir
        The directory (created if needed; an older ``run.jsonl`` there is replaced).
    interval
        Seconds between two recorded counter points.
    keep
        Rows kept per live topic for the report's top results.

    Examples
    --------
    >>> import tempfile, polars as pl
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> d = tempfile.mkdtemp()
    >>> flow = tf.Dataflow("doc_rec")
    >>> flow.source(TestingSource([{"k": "a"}, {"k": "b"}])).sink(CollectSink())
    >>> _ = tf.run(flow, observers=[RunRecorder(d)])
    >>> log = read_run(d)
    >>> log.flow, log.completed, log.records_in
    ('doc_rec', True, 2)
    """

    def __init__(self, run_dir: str | Path, *, interval: float = 1.0, keep: int = 100) -> None:
        self.dir = Path(run_dir)
        self.interval = interval
        self.live = LiveState(keep=keep)
        self._fh: IO[str] | None = None
        self._last = -1e9

    def _write(self, obj: dict[str, Any]) -> None:
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fh = (self.dir / FILE).open("w", encoding="utf-8")
        self._fh.write(json.dumps(obj, allow_nan=False) + "\n")
        self._fh.flush()

    def on_start(self, flow: str, steps: list[StepInfo], workers: int) -> None:
        """Write the ``start`` line."""
        self.live.on_start(flow, steps, workers)
        self._t0 = time.monotonic()
        self._write(
            {
                "type": "start",
                "format": FORMAT,
                "flow": flow,
                "workers": workers,
                "started": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "latency_buckets": list(LATENCY_BUCKETS),
                "steps": [
                    {"id": s.step_id, "kind": s.kind, "inputs": [list(i) for i in s.inputs]}
                    for s in steps
                ],
            }
        )

    def on_stats(self, stats: dict[str, StepStats], elapsed: float) -> None:
        """Write a ``stats`` line at most every ``interval`` seconds."""
        if elapsed - self._last < self.interval:
            return
        self._last = elapsed
        self._write(
            {
                "type": "stats",
                "t": round(elapsed, 3),
                "steps": _counters(stats),
                "latency": _latency(stats),
            }
        )

    def on_rows(self, topic: str, rows: pl.DataFrame) -> None:
        """Keep the latest published rows for the report."""
        self.live.on_rows(topic, rows)

    def on_finish(self, result: RunResult) -> None:
        """Write the ``table`` and ``finish`` lines and close the file."""
        with self.live._lock:
            tables = {k: dataclasses.replace(t) for k, t in self.live.tables.items()}
        for topic, t in sorted(tables.items()):
            if t.frame is None:
                continue
            self._write(
                {
                    "type": "table",
                    "topic": topic,
                    "columns": t.frame.columns,
                    "rows": _jsonable_rows(t.frame),
                    "total": t.total,
                }
            )
        self._write(
            {
                "type": "finish",
                "seconds": round(result.seconds, 3),
                "completed": result.completed,
                "error": result.error,
                "records_in": result.records_in,
                "dead_letters": result.dead_letters,
                "steps": _counters(result.steps),
                "latency": _latency(result.steps),
            }
        )
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclasses.dataclass(frozen=True, slots=True)
class RunLog:
    """A recorded run, read back from ``run.jsonl``."""

    flow: str
    workers: int
    started: str
    #: ``[{"id", "kind", "inputs"}]``
    steps: list[dict[str, Any]]
    #: ``(t, {step: [rows_in, rows_out, dead, batches]})``, oldest first.
    points: list[tuple[float, dict[str, list[int]]]]
    #: topic -> (columns, rows, total published)
    tables: dict[str, tuple[list[str], list[list[Any]], int]]
    finish: dict[str, Any] | None
    #: ``(t, {step: batch latency bucket counts})`` per point (empty in logs without them).
    latency: list[tuple[float, dict[str, list[int]]]] = dataclasses.field(default_factory=list)

    @property
    def completed(self) -> bool | None:
        """Whether the run finished its input (None if it did not record its end)."""
        return None if self.finish is None else bool(self.finish["completed"])

    @property
    def records_in(self) -> int:
        """Records read by the sources (last known)."""
        if self.finish is not None:
            return int(self.finish["records_in"])
        if not self.points:
            return 0
        sources = {s["id"] for s in self.steps if s["kind"] == "source"}
        return sum(v[1] for k, v in self.points[-1][1].items() if k in sources)


def read_run(run_dir: str | Path) -> RunLog:
    """Read a run directory written by :class:`RunRecorder`."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        msg = (
            f"{str(run_dir)!r} holds no {FILE}; record a run with "
            "`tideflow run/demo --run-dir DIR` (or the RunRecorder observer)"
        )
        raise ConfigError(msg)
    start: dict[str, Any] | None = None
    points: list[tuple[float, dict[str, list[int]]]] = []
    latency: list[tuple[float, dict[str, list[int]]]] = []
    tables: dict[str, tuple[list[str], list[list[Any]], int]] = {}
    finish = None
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                if n > 1:  # a run killed mid-write leaves a cut last line: keep what came before
                    break
                msg = f"{path}: line {n} is not JSON"
                raise ConfigError(msg) from None
            kind = obj.get("type")
            if kind == "start":
                start = obj
            elif kind == "stats":
                points.append((float(obj["t"]), obj["steps"]))
                latency.append((float(obj["t"]), obj.get("latency") or {}))
            elif kind == "table":
                tables[obj["topic"]] = (obj["columns"], obj["rows"], int(obj.get("total", 0)))
            elif kind == "finish":
                finish = obj
                points.append((float(obj["seconds"]), obj["steps"]))
                latency.append((float(obj["seconds"]), obj.get("latency") or {}))
    if start is None:
        msg = f"{path} has no start line: not a tideflow run log"
        raise ConfigError(msg)
    return RunLog(
        start["flow"],
        int(start["workers"]),
        start["started"],
        start["steps"],
        points,
        tables,
        finish,
        latency if any(p for _, p in latency) else [],
    )
