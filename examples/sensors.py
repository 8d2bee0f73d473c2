"""Sensor monitoring in event time: out-of-order readings, 10-second means, device sessions.

    tideflow run examples/sensors.py -- [--rate 2000] [--events N] [--sensors 20]

An unbounded generator plays sensors that report temperatures. Readings arrive out of order
(up to 3 s), and about 1% arrive very late (40 s). The job prints, live:

- per sensor, the mean and count of each 10-second tumbling window, once the watermark
  (largest time seen minus 5 s) passes the window's end;
- per device (four sensors each), activity sessions that end after 5 s without readings;
- how many readings came too late for their window (they go to the late output).

With --events N the input is bounded: at its end every open window fires and the job ends.
"""

import argparse
import time
from datetime import timedelta

import numpy as np
import polars as pl

import tideflow as tf
from tideflow import windows
from tideflow.connectors import generator, stdio

parser = argparse.ArgumentParser(prog="sensors", description=__doc__.splitlines()[0])
parser.add_argument(
    "--rate", type=float, default=2000.0, help="readings per second (0: unthrottled)"
)
parser.add_argument("--events", type=int, default=None, help="stop after N readings")
parser.add_argument("--sensors", type=int, default=20)
parser.add_argument("--start", type=float, default=None, help="event time of reading 0 (epoch s)")
args = parser.parse_args()

START_US = int((args.start if args.start is not None else time.time()) * 1_000_000)
SENSORS = args.sensors
STEP_US = 10_000  # readings are 10 ms apart in event time


def readings(start: int, n: int) -> pl.DataFrame:
    """Readings start..start+n-1; each depends only on its index (a resumed job repeats them)."""
    i = np.arange(start, start + n, dtype=np.int64)
    rng = np.random.default_rng([start, n])
    sensor = i % SENSORS
    jitter = rng.integers(-3_000_000, 1, size=n)  # up to 3 s out of order
    late = rng.random(n) < 0.01
    ts = START_US + i * STEP_US + jitter - np.where(late, 40_000_000, 0)
    # Each device goes quiet for a while now and then: its readings pause for 8 s.
    device = sensor // 4
    quiet = ((i * STEP_US // 1_000_000 + device * 7) % 40) < 8
    temp = 20.0 + sensor * 0.5 + 3.0 * np.sin(i / 500.0) + rng.normal(0, 0.3, size=n)
    frame = pl.DataFrame({"sensor": sensor, "device": device, "ts": ts, "temp": np.round(temp, 2)})
    return frame.with_columns(
        pl.when(pl.Series(quiet)).then(None).otherwise(pl.col("sensor")).alias("sensor")
    ).with_columns(
        pl.format("s{}", "sensor").alias("sensor"), pl.format("d{}", "device").alias("device")
    )


flow = tf.Dataflow("sensors")
raw = flow.source(
    generator.generate(readings, count=args.events, rate=args.rate or None), name="readings"
)
# Quiet devices produce no readings: drop the placeholders (the generator keeps indices dense).
live = raw.filter(pl.col("sensor").is_not_null(), name="active").event_time(
    "ts", unit="us", delay=timedelta(seconds=5)
)

means = (
    live.key_by("sensor")
    .window(windows.tumbling(timedelta(seconds=10)))
    .agg(pl.col("temp").mean().alias("mean_temp"), pl.len().alias("readings"), name="means")
)
means.results.with_columns(pl.col("mean_temp").round(2)).sink(
    stdio.sink_stdout("jsonl"), name="print_means"
)

sessions = (
    live.key_by("device")
    .window(windows.session(timedelta(seconds=5)))
    .agg(pl.len().alias("readings"), name="sessions")
)
sessions.results.with_columns(
    seconds=(pl.col("window_end") - pl.col("window_start")).dt.total_seconds(),
    kind=pl.lit("session"),
).sink(stdio.sink_stdout("jsonl"), name="print_sessions")

late = (
    means.late.with_columns(kind=pl.lit("late"))
    .key_by("kind")
    .agg(pl.len().alias("late_readings"), emit="updates", name="late_count")
)
late.sink(stdio.sink_stdout("jsonl"), name="print_late")
