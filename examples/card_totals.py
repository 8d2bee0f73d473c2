"""Per-card 1-minute spend totals, exactly once, resumable after a crash.

    tideflow run examples/card_totals.py -- --input DIR --output DIR \\
        --checkpoint-dir DIR --checkpoint-interval SECONDS

Input: a directory of JSON-lines files, read in file-name order, each record
``{"card": str, "amount": int, "ts": ISO-8601 UTC string}``, out of order by up to 10 s.
Output: per card and 1-minute event-time tumbling window, rows
``{"card", "window_start", "window_end", "total", "count"}`` (window bounds as ISO-8601 UTC
strings) in ``part-*.jsonl`` files in the output directory. Files are made visible (renamed
from ``*.jsonl.pending``) only by a completed checkpoint. Run again with the same checkpoint
directory after a crash and the job resumes; once the input is exhausted the job ends, and the
``.jsonl`` files together hold every result exactly once.
"""

import argparse
from datetime import timedelta

import polars as pl

import tideflow as tf
from tideflow import windows
from tideflow.connectors import files
from tideflow.state import CheckpointSettings

parser = argparse.ArgumentParser(prog="card_totals", description=__doc__.splitlines()[0])
parser.add_argument("--input", required=True, help="directory of JSON-lines files")
parser.add_argument("--output", required=True, help="directory for the result files")
parser.add_argument("--checkpoint-dir", required=True, help="where checkpoints go")
parser.add_argument("--checkpoint-interval", type=float, default=10.0, help="seconds")
args = parser.parse_args()

ISO = "%Y-%m-%dT%H:%M:%SZ"

checkpoints = CheckpointSettings(
    args.checkpoint_dir, interval=timedelta(seconds=args.checkpoint_interval)
)

flow = tf.Dataflow("card_totals")
tx = flow.source(
    files.scan_jsonl(args.input, schema={"card": pl.String, "amount": pl.Int64, "ts": pl.String}),
    name="transactions",
).event_time("ts", delay=timedelta(seconds=10))
totals = (
    tx.key_by("card")
    .window(windows.tumbling(timedelta(minutes=1)))
    .agg(pl.col("amount").sum().alias("total"), pl.len().alias("count"), name="totals")
)
totals.results.select(
    "card",
    pl.col("window_start").dt.strftime(ISO),
    pl.col("window_end").dt.strftime(ISO),
    pl.col("total").cast(pl.Int64),
    pl.col("count").cast(pl.Int64),
).sink(files.sink_jsonl_parts(args.output), name="write_totals")
