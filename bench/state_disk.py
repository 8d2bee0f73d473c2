"""Memory vs on-disk keyed state through the engine: throughput, peak RSS, checkpoint cost.

    python bench/state_disk.py --keys 1000000 --rows 3000000 [--cache-keys 250000]

A generator emits ``rows`` records with keys drawn uniformly from ``keys`` (micro-batches of
``--batch`` rows); ``key_by("k").agg(sum, count, max)`` keeps one row of state per key; results
go to a null sink at the end. Each backend runs in its own process (so its peak RSS is its
own), with a checkpoint every ``--interval`` seconds, then a restart from the last checkpoint
is timed (load, verify, restore; the input is already consumed).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

import tideflow as tf
from tideflow.connectors import generator
from tideflow.connectors._base import Sink, SinkContext, SinkWriter


class _Null(Sink):
    def build(self, ctx: SinkContext) -> SinkWriter:
        return _NullWriter()


class _NullWriter(SinkWriter):
    def write(self, batch: pl.DataFrame) -> None:
        pass

    def close(self) -> None:
        pass


def make_window_flow(
    rows: int, keys: int, windows: int, state: tf.MemoryState | tf.DiskState
) -> tf.Dataflow:
    """1-minute tumbling windows; the input spans ``windows`` minutes of event time."""
    from tideflow import windows as w

    per_ms = rows / (windows * 60_000)

    def fn(start: int, n: int) -> pl.DataFrame:
        rng = np.random.default_rng(start)
        t = (np.arange(start, start + n) / per_ms).astype(np.int64)
        return pl.DataFrame({"k": rng.integers(0, keys, n), "v": rng.integers(0, 100, n), "t": t})

    flow = tf.Dataflow("windowbench")
    res = (
        flow.source(generator.generate(fn, count=rows), name="gen")
        .event_time("t", unit="ms", delay=timedelta(seconds=1))
        .key_by("k")
        .window(w.tumbling(timedelta(minutes=1)))
        .agg(
            pl.col("v").sum().alias("s"),
            pl.len().alias("n"),
            pl.col("v").max().alias("top"),
            state=state,
            name="sums",
        )
    )
    res.results.sink(_Null(), name="null")
    return flow


def make_flow(
    rows: int, keys: int, state: tf.MemoryState | tf.DiskState, zipf: float = 0.0
) -> tf.Dataflow:
    def fn(start: int, n: int) -> pl.DataFrame:
        rng = np.random.default_rng(start)
        if zipf:  # skewed: key rank r drawn with probability ~ 1/r^zipf (then scattered)
            k = (rng.zipf(zipf, n) - 1) % keys
            k = (k * 2_654_435_761) % keys
        else:
            k = rng.integers(0, keys, n)
        return pl.DataFrame({"k": k, "v": rng.integers(0, 100, n)})

    flow = tf.Dataflow("statebench")
    (
        flow.source(generator.generate(fn, count=rows), name="gen")
        .key_by("k")
        .agg(
            pl.col("v").sum().alias("s"),
            pl.len().alias("n"),
            pl.col("v").max().alias("top"),
            emit="final",
            state=state,
            name="sums",
        )
        .sink(_Null(), name="null")
    )
    return flow


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def one(a: argparse.Namespace) -> dict[str, object]:
    h = _Log()
    logging.getLogger("tideflow").addHandler(h)
    logging.getLogger("tideflow").setLevel(logging.INFO)
    base = Path(tempfile.mkdtemp(prefix="tf-statebench-"))
    state: tf.MemoryState | tf.DiskState = (
        tf.DiskState(base / "state", cache_keys=a.cache_keys)
        if a.backend == "disk"
        else tf.MemoryState()
    )
    ck = base / "ck"
    kw = {
        "batch_size": a.batch,
        "dead_letter_path": base / "dl.jsonl",
        "checkpoint_dir": ck,
        "checkpoint_interval": timedelta(seconds=a.interval),
    }

    def build() -> tf.Dataflow:
        if a.windows:
            return make_window_flow(a.rows, a.keys, a.windows, state)
        return make_flow(a.rows, a.keys, state, a.zipf)

    t, c = time.perf_counter(), time.process_time()
    tf.run(build(), **kw)  # type: ignore[arg-type]
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    durations = [
        float(m.group(1))
        for line in h.lines
        if (m := re.search(r"written .* in ([0-9.]+) s", line))
    ]
    last = max(ck.glob("chk-*"))
    size = sum(f.stat().st_size for f in last.iterdir())
    h.lines.clear()
    t = time.perf_counter()
    tf.run(build(), **kw)  # type: ignore[arg-type]
    restart = time.perf_counter() - t
    shutil.rmtree(base, ignore_errors=True)
    return {
        "backend": a.backend,
        "step": f"window agg, {a.windows} one-minute windows" if a.windows else "agg",
        "keys_drawn": f"zipf {a.zipf}" if a.zipf else "uniform",
        "keys": a.keys,
        "rows": a.rows,
        "batch": a.batch,
        "cache_keys": a.cache_keys if a.backend == "disk" else None,
        "seconds": round(secs, 2),
        "rows_per_s": round(a.rows / secs),
        "cpu_seconds": round(cpu, 2),
        "rows_per_cpu_s": round(a.rows / cpu),
        "peak_rss_mb": round(rss),
        "checkpoints": len(durations),
        "checkpoint_s": durations,
        "last_checkpoint_mb": round(size / 2**20, 1),
        "restart_s": round(restart, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backends", nargs="*", default=["memory", "disk"])
    p.add_argument("--rows", type=int, default=3_000_000)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--cache-keys", type=int, default=250_000)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--windows", type=int, default=0, help="window agg over N minutes instead")
    p.add_argument("--zipf", type=float, default=0.0, help="skewed keys (Zipf exponent > 1)")
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="append results (JSON lines) to this file")
    a = p.parse_args()
    if a.backend:
        print(json.dumps(one(a)))
        return
    for b in a.backends:
        cmd = [sys.executable, __file__, f"--backend={b}", f"--rows={a.rows}", f"--keys={a.keys}"]
        cmd += [f"--batch={a.batch}", f"--cache-keys={a.cache_keys}", f"--interval={a.interval}"]
        cmd += [f"--windows={a.windows}", f"--zipf={a.zipf}"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            print(f"{b}: failed\n{res.stderr[-3000:]}", file=sys.stderr)
            continue
        line = res.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        if a.json:
            with a.json.open("a") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()
