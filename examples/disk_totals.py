"""Per-card totals and per-card 1-minute totals with state on disk, exactly once.

    tideflow run examples/disk_totals.py --state disk --state-dir S --state-cache-keys N \\
        -- --input DIR --output DIR --checkpoint-dir DIR --checkpoint-interval SECONDS \\
        --window-state DIR

Input as for ``card_totals.py`` (JSON-lines files of ``{"card", "amount", "ts"}``). The keyed
aggregation (every card's total and count, written when the input ends to ``OUTPUT/totals``)
takes the run's state backend, here the command-line options: with ``--state disk`` only the
most recent ``N`` cards stay in memory, the rest live in SQLite. The 1-minute windows
(``OUTPUT/windows``) spill to files under ``--window-state`` by their own ``state=``. Used by
the crash test ``tests/recovery/test_crash_disk_state.py``.
"""

import argparse
import os
from datetime import timedelta

import polars as pl

import tideflow as tf
from tideflow import windows
from tideflow.connectors import files
from tideflow.state import CheckpointSettings

parser = argparse.ArgumentParser(prog="disk_totals")
parser.add_argument("--input", required=True)
parser.add_argument("--output", required=True)
parser.add_argument("--checkpoint-dir", required=True)
parser.add_argument("--checkpoint-interval", type=float, default=10.0)
parser.add_argument("--window-state", required=True)
args = parser.parse_args()

checkpoints = CheckpointSettings(
    args.checkpoint_dir, interval=timedelta(seconds=args.checkpoint_interval)
)
ISO = "%Y-%m-%dT%H:%M:%SZ"
for sub in ("totals", "windows"):
    os.makedirs(os.path.join(args.output, sub), exist_ok=True)

flow = tf.Dataflow("disk_totals")
tx = flow.source(
    files.scan_jsonl(args.input, schema={"card": pl.String, "amount": pl.Int64, "ts": pl.String}),
    name="transactions",
)
tx.key_by("card").agg(
    pl.col("amount").sum().alias("total"), pl.len().alias("count"), emit="final", name="totals"
).sink(files.sink_jsonl_parts(args.output + "/totals"), name="write_totals")
per_minute = (
    tx.event_time("ts", delay=timedelta(seconds=10))
    .key_by("card")
    .window(windows.tumbling(timedelta(minutes=1)))
    .agg(
        pl.col("amount").sum().alias("total"),
        pl.len().alias("count"),
        state=tf.DiskState(args.window_state, cache_keys=1000),
        name="per_minute",
    )
)
per_minute.results.select("card", pl.col("window_start").dt.strftime(ISO), "total", "count").sink(
    files.sink_jsonl_parts(args.output + "/windows"), name="write_windows"
)
