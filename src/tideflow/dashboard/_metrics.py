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
``tideflow_workers``                 gauge   flow: worker processes
``tideflow_run_seconds``             gauge   flow: seconds since the run started
``tideflow_run_running``             gauge   flow: 1 while running, 0 once ended
``tideflow_sql_queries_total``       counter outcome (ok, refused, failed): dashboard SQL
``tideflow_sql_query_seconds``       histo.  time of dashboard SQL queries that ran
==================================== ======= ===============================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tideflow.dashboard._state import LiveState, _watermark

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
