"""Cost of checkpointing: throughput with/without checkpoints, checkpoint size/duration, recovery.

    python bench/checkpoints.py [--rows 60_000_000] [--keys 1_000_000] [--workers 1]

A generator emits ``rows`` records over ``keys`` distinct keys; a keyed aggregation keeps a
running sum and count per key (so the final state holds ``keys`` keys); results go to a null
sink. Runs once without checkpoints and once with a checkpoint every ``--interval`` seconds,
then measures a restart from the last checkpoint (load + restore; the input is exhausted).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
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


def make_flow(rows: int, keys: int) -> tf.Dataflow:
    def fn(start: int, n: int) -> pl.DataFrame:
        i = np.arange(start, start + n, dtype=np.int64)
        return pl.DataFrame({"k": (i * 7919) % keys, "v": i % 100})

    flow = tf.Dataflow("ckbench")
    (
        flow.source(generator.generate(fn, count=rows), name="gen")
        .key_by("k")
        .agg(pl.col("v").sum().alias("s"), pl.len().alias("n"), emit="final", name="sums")
        .sink(_Null(), name="null")
    )
    return flow


class _Times(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=60_000_000)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--interval", type=float, default=10.0)
    a = p.parse_args()
    h = _Times()
    logging.getLogger("tideflow").addHandler(h)
    logging.getLogger("tideflow").setLevel(logging.INFO)
    base = Path(tempfile.mkdtemp())
    out: dict[str, object] = {"rows": a.rows, "keys": a.keys, "workers": a.workers}
    t = time.perf_counter()
    tf.run(make_flow(a.rows, a.keys), workers=a.workers, dead_letter_path=base / "dl.jsonl")
    plain = time.perf_counter() - t
    out["no_checkpoints_s"] = round(plain, 2)
    out["no_checkpoints_rows_per_s"] = round(a.rows / plain)
    ck = base / "ck"
    h.lines.clear()
    t = time.perf_counter()
    tf.run(
        make_flow(a.rows, a.keys),
        workers=a.workers,
        dead_letter_path=base / "dl.jsonl",
        checkpoint_dir=ck,
        checkpoint_interval=timedelta(seconds=a.interval),
    )
    with_ck = time.perf_counter() - t
    durations = [
        float(m.group(1))
        for line in h.lines
        if (m := re.search(r"written .* in ([0-9.]+) s", line))
    ]
    out["checkpoints_s"] = round(with_ck, 2)
    out["checkpoints_rows_per_s"] = round(a.rows / with_ck)
    out["checkpoints_taken"] = len(durations)
    out["checkpoint_durations_s"] = durations
    last = max(ck.glob("chk-*"))
    out["last_checkpoint_bytes"] = sum(f.stat().st_size for f in last.iterdir())
    h.lines.clear()
    t = time.perf_counter()
    tf.run(
        make_flow(a.rows, a.keys),
        workers=a.workers,
        dead_letter_path=base / "dl.jsonl",
        checkpoint_dir=ck,
        checkpoint_interval=timedelta(seconds=a.interval),
    )
    out["restart_total_s"] = round(time.perf_counter() - t, 2)
    out["resume_log"] = [line for line in h.lines if "resuming" in line]
    print(json.dumps(out, indent=1))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
