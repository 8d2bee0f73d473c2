"""Follow a growing directory of JSON-lines logs and count events per level and service.

    tideflow run examples/follow_log.py -- --dir LOGDIR [--output counts.jsonl]

Every log line is a JSON object with at least ``level`` and ``service``; lines that are not
valid JSON or lack those fields go to the dead letters. New files and lines appended to
existing ones are picked up as they arrive; the updated counts are printed live. The job runs
until Ctrl-C, which stops it cleanly (the output file is flushed and closed).
"""

import argparse
from datetime import timedelta

import polars as pl

import tideflow as tf
from tideflow.connectors import files, stdio

parser = argparse.ArgumentParser(prog="follow_log", description=__doc__.splitlines()[0])
parser.add_argument("--dir", required=True, help="the log directory to follow")
parser.add_argument("--output", help="also write every count update to this JSON-lines file")
parser.add_argument("--poll-ms", type=int, default=200, help="how often to look for new data")
args = parser.parse_args()

flow = tf.Dataflow("follow_log")
logs = flow.source(
    files.follow_jsonl(
        args.dir,
        schema={"level": pl.String(), "service": pl.String()},
        poll_interval=timedelta(milliseconds=args.poll_ms),
    ),
    name="logs",
)
counts = (
    logs.with_columns(pl.col("level").str.to_uppercase())
    .key_by("level", "service")
    .agg(pl.len().alias("events"), emit="updates", name="count")
)
counts.sink(stdio.sink_stdout("jsonl"), name="print")
if args.output:
    counts.sink(files.sink_jsonl(args.output), name="write")
