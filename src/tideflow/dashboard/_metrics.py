"""Prometheus metrics of a run, in a registry of its own (never the process-global one).

Counters come straight from the run's latest counters (a custom collector reads
:class:`~tideflow.dashboard.LiveState` at scrape time), so they are exact and cost nothing
between scrapes. Names start with ``tideflow_``; counters end in ``_total``.

==================================== ======= ===============================================
metric                               type    labels
==================================== ======= ===============================================
``tideflow_records_in_total``        counter flow, step, kind: rows a step received
``tideflow_records_out_total``       counter flow, step, kind: rows a step emitted
``tideflow_dead_letters_total``      counter flow, step, kind: rows a step rejected
``tideflow_batches_total``           counter flow, step, kind: micro-batches a step handled
``tideflow_live_rows_total``         counter flow, topic: rows published to a live table
``tideflow_late_records_total``      counter flow, step, kind: late rows (when reported)
``tideflow_watermark_lag_seconds``   gauge   flow, step, kind: clock - watermark (when reported)
``tideflow_batch_latency_seconds``   histo.  flow, step, kind: source batch entering the graph
                                             to the step emitting (a sink: writing) its result
``tideflow_step_busy_seconds_total`` counter flow, step, kind: the step's own processing time
``tideflow_backpressure_seconds_total`` counter flow, step, kind: sources paused by backpressure
``tideflow_checkpoint_duration_seconds`` histo. flow: checkpoints written, start to manifest
``tideflow_checkpoints_total``       counter flow, outcome (written, failed)
``tideflow_last_checkpoint_id``      gauge   flow: the newest checkpoint written
``tideflow_last_checkpoint_age_seconds`` gauge flow: seconds since it was written
``tideflow_model_metric``            gauge   flow, step, metric: latest value of an evaluate step
``tideflow_workers``                 gauge   flow: worker processes
``tideflow_run_seconds``             gauge   flow: seconds since the run started
``tideflow_run_running``             gauge   flow: 1 while running, 0 once ended
``tideflow_sql_queries_total``       counter outcome (ok, refused, failed): dashboard SQL
``tideflow_sql_query_seconds``       histo.  time of dashboard SQL queries that ran
==================================== ======= ===============================================
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tideflow.dashboard._state import CHECKPOINT_BUCKETS, LiveState, _watermark
from tideflow.runtime._worker import LATENCY_BUCKETS

__all__ = ["RunMetrics"]


class _StateCollector(Collector):
    def __init__(self, state: LiveState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        steps, latest, elapsed = self.state.counters()
        flow = self.state.flow
        labels = ["flow", "step", "kind"]
        fams = {
            "records_in": CounterMetricFamily(
                "tideflow_records_in", "Rows a step received.", labels=labels
            ),
            "records_out": CounterMetricFamily(
                "tideflow_records_out", "Rows a step emitted.", labels=labels
            ),
            "dead": CounterMetricFamily(
                "tideflow_dead_letters", "Rows a step rejected (dead letters).", labels=labels
            ),
            "batches": CounterMetricFamily(
                "tideflow_batches", "Micro-batches a step handled.", labels=labels
            ),
        }
        for s in steps:
            st = latest.get(s.step_id)
            if st is None:
                continue
            lv = [flow, s.step_id, s.kind]
            fams["records_in"].add_metric(lv, st.rows_in)
            fams["records_out"].add_metric(lv, st.rows_out)
            fams["dead"].add_metric(lv, st.dead)
            fams["batches"].add_metric(lv, st.batches)
        yield from fams.values()
        # Reported by the engine's counters when it has them (event time): otherwise absent.
        late = CounterMetricFamily(
            "tideflow_late_records",
            "Rows a step received after their window fired.",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "tideflow_watermark_lag_seconds",
            "Wall-clock time minus a step's watermark.",
            labels=labels,
        )
        for s in steps:
            st = latest.get(s.step_id)
            lv = [flow, s.step_id, s.kind]
            n = getattr(st, "late", None)
            if isinstance(n, int):
                late.add_metric(lv, n)
            lag_s = _watermark(st)[1]
            if lag_s is not None:
                lag.add_metric(lv, lag_s)
        if late.samples:
            yield late
        if lag.samples:
            yield lag
        yield from self._timings(flow, steps, latest)
        yield from self._checkpoints(flow)
        live = CounterMetricFamily(
            "tideflow_live_rows", "Rows published to a live table.", labels=["flow", "topic"]
        )
        with self.state._lock:
            totals = {k: t.total for k, t in self.state.tables.items()}
            status = self.state.status
        for topic, n in sorted(totals.items()):
            live.add_metric([flow, topic], n)
        yield live
        yield _gauge("tideflow_workers", "Worker processes.", flow, self.state.workers)
        yield _gauge("tideflow_run_seconds", "Seconds since the run started.", flow, elapsed)
        yield _gauge(
            "tideflow_run_running",
            "1 while the run runs, 0 once it ended.",
            flow,
            1.0 if status == "running" else 0.0,
        )

    def _timings(self, flow: str, steps: list[Any], latest: dict[str, Any]) -> Iterator[Metric]:
        labels = ["flow", "step", "kind"]
        latency = HistogramMetricFamily(
            "tideflow_batch_latency_seconds",
            "Seconds from a source batch entering the dataflow to this step emitting its "
            "result (a sink: writing it), per output batch.",
            labels=labels,
        )
        busy = CounterMetricFamily(
            "tideflow_step_busy_seconds",
            "Seconds a step spent on its input batches (downstream steps excluded).",
            labels=labels,
        )
        blocked = CounterMetricFamily(
            "tideflow_backpressure_seconds",
            "Seconds a source stood still because a peer worker had too many of its batches "
            "waiting (summed over workers).",
            labels=labels,
        )
        model = GaugeMetricFamily(
            "tideflow_model_metric",
            "Latest value of an online model's prequential metric (tideflow.ml.evaluate).",
            labels=["flow", "step", "metric"],
        )
        for s in steps:
            st = latest.get(s.step_id)
            if st is None:
                continue
            lv = [flow, s.step_id, s.kind]
            counts = list(getattr(st, "latency", ()))
            if s.kind not in ("source",) and len(counts) == len(LATENCY_BUCKETS) + 1:
                latency.add_metric(lv, _cumulative(counts, LATENCY_BUCKETS), st.latency_sum)
            busy.add_metric(lv, getattr(st, "busy_s", 0.0))
            if s.kind == "source":
                blocked.add_metric(lv, getattr(st, "blocked_s", 0.0))
            value = getattr(st, "metric_value", None)
            if value is not None:
                model.add_metric([flow, s.step_id, st.metric or ""], value)
        yield latency
        yield busy
        yield blocked
        if model.samples:
            yield model

    def _checkpoints(self, flow: str) -> Iterator[Metric]:
        with self.state._lock:
            last = self.state.last_checkpoint
            counts = dict(self.state.checkpoints)
            buckets = list(self.state.checkpoint_buckets)
            total = self.state.checkpoint_seconds
        hist = HistogramMetricFamily(
            "tideflow_checkpoint_duration_seconds",
            "Seconds from a checkpoint's start to its manifest being written.",
            labels=["flow"],
        )
        hist.add_metric([flow], _cumulative(buckets, CHECKPOINT_BUCKETS), total)
        yield hist
        done = CounterMetricFamily(
            "tideflow_checkpoints", "Checkpoints by outcome.", labels=["flow", "outcome"]
        )
        for outcome in ("written", "failed"):
            done.add_metric([flow, outcome], counts[outcome])
        yield done
        if last is not None and last.written:
            yield _gauge(
                "tideflow_last_checkpoint_id",
                "Id of the newest checkpoint written.",
                flow,
                last.checkpoint_id,
            )
            yield _gauge(
                "tideflow_last_checkpoint_age_seconds",
                "Seconds since the newest checkpoint was written.",
                flow,
                max(0.0, time.time() - last.at),
            )


def _cumulative(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` label, cumulative count) from per-bucket counts."""
    out, running = [], 0
    for bound, c in zip((*bounds, float("inf")), counts, strict=True):
        running += c
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return out


def _gauge(name: str, doc: str, flow: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["flow"])
    g.add_metric([flow], value)
    return g


class RunMetrics:
    """The Prometheus registry of one run: counters from the live state, SQL timings.

    Examples
    --------
    >>> from prometheus_client import generate_latest
    >>> from tideflow.runtime import StepInfo, StepStats
    >>> st = LiveState()
    >>> st.on_start("job", [StepInfo("src", "source", ())], 1)
    >>> st.on_stats({"src": StepStats(rows_out=7)}, 1.0)
    >>> text = generate_latest(RunMetrics(st).registry).decode()
    >>> 'tideflow_records_out_total{flow="job",kind="source",step="src"} 7.0' in text
    True
    """

    def __init__(self, state: LiveState) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StateCollector(state))
        self.sql_queries = Counter(
            "tideflow_sql_queries",
            "Dashboard SQL queries by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.sql_seconds = Histogram(
            "tideflow_sql_query_seconds",
            "Time of dashboard SQL queries that ran.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
            registry=self.registry,
        )
