"""examples/sensors.py: windowed results equal a batch computation over the same readings."""

import json
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/sensors.py"


def load_generator(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["sensors.py", *args])
    return runpy.run_path(str(EXAMPLE), run_name="__tideflow__")["readings"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bounded_run_equals_batch_reference(tmp_path, monkeypatch, workers):
    args = ["--events", "30000", "--rate", "0", "--start", "1700000000"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tideflow.cli",
            "run",
            str(EXAMPLE),
            "--workers",
            workers,
            "--no-progress",
            "--",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    means = pl.DataFrame([r for r in rows if "mean_temp" in r])
    data = load_generator(monkeypatch, *args)(0, 30000).filter(pl.col("sensor").is_not_null())
    want = (
        data.with_columns(ws=(pl.col("ts") // 10_000_000) * 10_000_000)
        .group_by("sensor", "ws")
        .agg(pl.col("temp").mean().round(2).alias("mean_temp"), pl.len().alias("readings"))
    )
    got = means.with_columns(
        ws=pl.col("window_start").str.to_datetime(time_zone="UTC").dt.epoch("us")
    ).select("sensor", "ws", "mean_temp", "readings")
    assert got.height == want.height
    assert got.sort("sensor", "ws").equals(want.select(got.columns).sort("sensor", "ws"))
    sessions = [r for r in rows if r.get("kind") == "session"]
    assert sum(r["readings"] for r in sessions) == data.height
    assert not [r for r in rows if r.get("kind") == "late"]  # one bounded batch: nothing late


def test_live_run_counts_late_readings(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tideflow.cli",
            "run",
            str(EXAMPLE),
            "--workers",
            "1",
            "--no-progress",
            "--max-delay-ms",
            "20",
            "--",
            "--rate",
            "4000",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    import time

    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    late = [r["late_readings"] for r in rows if r.get("kind") == "late"]
    assert late and late == sorted(late) and late[-1] > 0
    assert any("mean_temp" in r for r in rows)
