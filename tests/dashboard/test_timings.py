"""Batch latency, step time, backpressure, checkpoints and model metrics: counters and /metrics."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from dash_helpers import counting_flow, free_port, http
from dash_helpers import metric_samples as _metrics
from dash_helpers import wait_until as _wait

import tideflow as tf
from tideflow.dashboard import Dashboard, DashboardSettings
from tideflow.ml import evaluate, linear_model, metrics, preprocessing
from tideflow.runtime import LATENCY_BUCKETS
from tideflow.state._store import CheckpointStore
from tideflow.testing import PAUSE, CollectSink, TestingSource


def _labels(flow: str, step: str, kind: str) -> tuple[tuple[str, str], ...]:
    return (("flow", flow), ("kind", kind), ("step", step))


def _le(labels: tuple[tuple[str, str], ...], le: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((*labels, ("le", le))))


def test_latency_histogram_in_metrics_moves_and_counts_every_sink_batch(running: Any) -> None:
    with Dashboard(DashboardSettings(port=0)) as dash:
        running(counting_flow("lat", events=6_000, rate=3000), [dash])
        sink = _labels("lat", "lat.keys_live", "sink")
        count = ("tideflow_batch_latency_seconds_count", sink)
        _wait(lambda: _metrics(dash.url).get(count, 0) > 0)
        first = _metrics(dash.url)
        _wait(lambda: _metrics(dash.url)[count] > first[count])
        _wait(lambda: http(dash.url + "api/state")[1].find(b'"finished"') >= 0, 30)
        m = _metrics(dash.url)
        # Every batch a sink wrote is one observation; buckets are cumulative up to +Inf.
        assert m[count] == m[("tideflow_batches_total", sink)]
        buckets = [
            m[("tideflow_batch_latency_seconds_bucket", _le(sink, repr(b)))]
            for b in LATENCY_BUCKETS
        ]
        inf = m[("tideflow_batch_latency_seconds_bucket", _le(sink, "+Inf"))]
        assert buckets == sorted(buckets) and inf == m[count]
        assert m[("tideflow_batch_latency_seconds_sum", sink)] > 0
        agg = _labels("lat", "lat.per_key", "agg")
        assert m[("tideflow_step_busy_seconds_total", agg)] > 0
        assert (
            m[("tideflow_backpressure_seconds_total", _labels("lat", "lat.numbers", "source"))] == 0
        )
        assert all(name.startswith("tideflow_") for name, _ in m)


def _slow(batch: pl.DataFrame) -> pl.DataFrame:
    time.sleep(0.03)
    return batch


def test_latency_includes_upstream_time_and_busy_time_is_per_step() -> None:
    flow = tf.Dataflow("slow")
    rows = [{"x": i} for i in range(100)]
    src = flow.source(TestingSource(rows, batch_size=10), name="src")
    before = src.with_columns(y=pl.col("x") * 2, name="before")
    before.map_batches(_slow, name="sleep").sink(CollectSink(), name="out")
    result = tf.run(flow, batch_size=10)
    out, sleep, pre = (result.steps[f"slow.{k}"] for k in ("out", "sleep", "before"))
    # The sink saw every batch after a 30 ms step: no latency below 25 ms.
    low = sum(c for b, c in zip(LATENCY_BUCKETS, out.latency, strict=False) if b <= 0.025)
    assert sum(out.latency) == out.batches == 10 and low == 0
    assert out.latency_sum >= 10 * 0.03
    # The sleeping step's own time holds its sleeps; the step before it does not include them.
    assert sleep.busy_s >= 10 * 0.03
    assert pre.busy_s < sleep.busy_s / 2


@pytest.mark.parametrize("workers", [1, 2])
def test_checkpoint_metrics(workers: int, tmp_path: Path) -> None:
    flow = tf.Dataflow(f"ck{workers}")
    items: list[Any] = []
    for i in range(40):
        items += [{"k": str(i % 3), "v": i}, PAUSE, PAUSE]
    # Each batch takes at least 30 ms, so the run lasts well past two checkpoint intervals
    # whatever the machine's speed (the pauses alone made it as short as 100 ms).
    flow.source(TestingSource(items), name="src").map_batches(_slow, name="slow").key_by("k").agg(
        pl.col("v").sum().alias("s"), name="sums"
    ).sink(CollectSink(), name="out")
    with Dashboard(DashboardSettings(port=free_port())) as dash:
        tf.run(
            flow,
            workers=workers,
            observers=[dash],
            checkpoint_dir=tmp_path / "ck",
            checkpoint_interval=timedelta(milliseconds=100),
        )
        m = _metrics(dash.url)
        snap = dash.snapshot()
    store_ids = CheckpointStore(tmp_path / "ck", keep=3).ids()
    name = f"ck{workers}"
    written = m[("tideflow_checkpoints_total", (("flow", name), ("outcome", "written")))]
    assert written >= 2 and written == snap["checkpoint"]["written"]
    assert m[("tideflow_checkpoint_duration_seconds_count", (("flow", name),))] == written
    assert m[("tideflow_last_checkpoint_id", (("flow", name),))] == store_ids[-1]
    assert m[("tideflow_last_checkpoint_age_seconds", (("flow", name),))] >= 0
    assert snap["checkpoint"]["id"] == store_ids[-1] and snap["checkpoint"]["status"] == "written"


def test_backpressure_is_counted_on_sources() -> None:
    flow = tf.Dataflow("bp")
    rows = [{"k": str(i % 50), "v": i} for i in range(6000)]
    flow.source(TestingSource(rows, batch_size=5), name="src").key_by("k").agg(
        pl.len().alias("n"), emit="updates", name="counts"
    ).map_batches(_slow_small, name="slow").sink(CollectSink(), name="out")
    result = tf.run(flow, workers=2, batch_size=5)
    assert result.steps["bp.src"].blocked_s > 0
    assert result.steps["bp.slow"].blocked_s == 0


def _slow_small(batch: pl.DataFrame) -> pl.DataFrame:
    time.sleep(0.004)
    return batch


@pytest.mark.parametrize("workers", [1, 2])
def test_model_metric_is_the_last_evaluated_value(workers: int) -> None:
    flow = tf.Dataflow(f"ml{workers}")
    rows = [{"x": float(i * 7 % 10), "y": i * 7 % 10 >= 5} for i in range(3000)]
    out = CollectSink()
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    evaluate(
        flow.source(TestingSource(rows, batch_size=100)),
        model,
        metrics.Accuracy(),
        target="y",
        name="quality",
    ).sink(out)
    with Dashboard(DashboardSettings(port=0)) as dash:
        result = tf.run(flow, workers=workers, observers=[dash])
        m = _metrics(dash.url)
        snap = dash.snapshot()
    emitted = out.frame().sort("n")
    st = result.steps[f"ml{workers}.quality"]
    assert st.metric == "Accuracy" and st.metric_value == emitted["value"][-1]
    (model_row,) = snap["models"]
    assert model_row["mode"] == "evaluate" and model_row["records"] == 3000
    assert model_row["model"] == type(model).__name__
    assert model_row["value"] == pytest.approx(emitted["value"][-1])
    labels = (("flow", f"ml{workers}"), ("metric", "Accuracy"), ("step", f"ml{workers}.quality"))
    assert m[("tideflow_model_metric", labels)] == pytest.approx(emitted["value"][-1])
