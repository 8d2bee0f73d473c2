"""Live state, live sink, run recording and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import tideflow as tf
from tideflow._errors import ConfigError
from tideflow.cli import main
from tideflow.connectors import live
from tideflow.dashboard import LiveState, Panel, RunRecorder, read_run, write_report
from tideflow.runtime import StepInfo, StepStats
from tideflow.testing import TestingSource


def test_rates_from_history() -> None:
    st = LiveState()
    st.on_start("j", [StepInfo("s", "source", ()), StepInfo("k", "sink", (("s", "out"),))], 1)
    for t in range(5):
        st.on_stats({"s": StepStats(rows_out=100 * t), "k": StepStats(rows_in=50 * t)}, float(t))
    snap = st.snapshot()
    assert snap["totals"]["records_in"] == 400 and snap["totals"]["records_out"] == 200
    assert snap["totals"]["rate_in"] == pytest.approx(100.0)
    assert snap["steps"][1]["rate_in"] == pytest.approx(50.0)
    assert snap["steps"][0]["watermark"] is None  # n/a until the engine reports watermarks
    json.dumps(snap, allow_nan=False)


def test_keyed_live_table_keeps_latest_per_key_and_bounds_rows() -> None:
    st = LiveState()
    published: list[pl.DataFrame] = []
    from tideflow.connectors._base import SinkContext

    ctx = SinkContext("x", 0, 1, publish=lambda t, rows: published.append(rows))
    w = live.sink_live("per_key", key="k", keep=2).build(ctx)
    w.write(pl.DataFrame({"k": ["a", "b", "a"], "n": [1, 1, 2]}))
    w.write(pl.DataFrame({"k": ["c"], "n": [1]}))
    for rows in published:
        st.on_rows("per_key", rows)
    frame = st.frames()["per_key"]
    assert frame.columns == ["k", "n"]
    assert frame.rows() == [("a", 2), ("c", 1)]
    assert st.snapshot()["tables"]["per_key"]["total"] == 3


def test_live_sink_rejects_bad_topic() -> None:
    flow = tf.Dataflow("bad_topic")
    with pytest.raises(ConfigError, match="'no spaces' must be a plain name"):
        flow.source(TestingSource([{"a": 1}])).sink(live.sink_live("no spaces"))


def test_panel_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs x= and y="):
        Panel("p", "SELECT 1", kind="line")
    with pytest.raises(ConfigError, match="kind must be one of"):
        Panel("p", "SELECT 1", kind="pie")  # type: ignore[arg-type]


def _record(tmp_path: Path, workers: int) -> Path:
    rows = [{"k": f"k{i % 3}", "v": i} for i in range(300)]
    flow = tf.Dataflow("rec")
    src = flow.source(TestingSource(rows, batch_size=20), name="src")
    src.key_by("k").agg(pl.len().alias("n"), emit="updates", name="count").sink(
        live.sink_live("counts", key="k"), name="counts_live"
    )
    run_dir = tmp_path / "run"
    tf.run(flow, workers=workers, observers=[RunRecorder(run_dir, interval=0.0)])
    return run_dir


def test_recorder_and_report(tmp_path: Path, workers: int) -> None:
    run_dir = _record(tmp_path, workers)
    log = read_run(run_dir)
    assert log.flow == "rec" and log.completed is True and log.records_in == 300
    assert log.workers == workers
    cols, rows, _ = log.tables["counts"]
    assert cols == ["k", "n"] and sorted(rows) == [["k0", 100], ["k1", 100], ["k2", 100]]
    lines = [json.loads(x) for x in (run_dir / "run.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "finish"
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Run report: rec" in text and "<svg" in text and "300" in text
    # Latency counts are recorded: every batch written by the live sink, once.
    assert sum(log.latency[-1][1]["rec.counts_live"]) == lines[-1]["steps"]["rec.counts_live"][3]
    assert "Batch latency from a micro-batch leaving its source" in text
    assert "<script" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_report_of_a_directory_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds no run\.jsonl"):
        write_report(tmp_path, tmp_path / "r.html")


def test_engine_counters_for_event_time_fill_their_slots() -> None:
    """When the engine's counters carry a watermark and late counts, they show and are exported."""
    import dataclasses
    import time

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tideflow.dashboard._metrics import RunMetrics

    @dataclasses.dataclass
    class EventTimeStats(StepStats):
        watermark: int | None = None
        late: int = 0

    st = LiveState()
    st.on_start("j", [StepInfo("w", "window", ())], 1)
    wm = int(time.time() * 1000) - 30_000
    st.on_stats({"w": EventTimeStats(rows_in=5, watermark=wm, late=3)}, 1.0)
    step = st.snapshot()["steps"][0]
    assert step["late"] == 3 and step["watermark"].endswith("+00:00")
    assert 29 <= step["watermark_lag_s"] <= 40
    assert st.snapshot()["totals"]["late"] == 3
    text = generate_latest(RunMetrics(st).registry).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["tideflow_late_records_total"] == 3
    assert 29 <= samples["tideflow_watermark_lag_seconds"] <= 40
