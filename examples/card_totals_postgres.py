"""Per-card 1-minute spend totals appended to PostgreSQL, exactly once across crashes.

    scripts/services start postgres     # prints the DSN
    tideflow run examples/card_totals_postgres.py -- --input DIR \\
        --dsn postgresql://tideflow@127.0.0.1:15432/tideflow --table card_totals \\
        --checkpoint-dir DIR --checkpoint-interval SECONDS [--delivery exactly-once]

The input is that of ``examples/card_totals.py`` (JSON-lines files of ``{"card", "amount",
"ts"}``, out of order by up to 10 s). Every closed window is *appended* (``mode="insert"``) as
a row ``(card, window_start, window_end, total, count)``; the table is created when missing.
With ``--delivery exactly-once`` (the default) a checkpoint's rows are committed in one
transaction with the sink's progress row when the checkpoint completes: run the job again with
the same checkpoint directory after a crash and the table ends with every window exactly once.
``--delivery at-least-once`` writes rows as they come (a crash repeats the rows written after
the last checkpoint), ``--delivery at-most-once`` loses the rows of a checkpoint whose commit a
crash cut short.
"""

import argparse
from datetime import timedelta

import polars as pl

import tideflow as tf
from tideflow import windows
from tideflow.connectors import files, postgres
from tideflow.state import CheckpointSettings

parser = argparse.ArgumentParser(prog="card_totals_postgres", description=__doc__.splitlines()[0])
parser.add_argument("--input", required=True, help="directory of JSON-lines files")
parser.add_argument("--dsn", required=True, help="PostgreSQL DSN")
parser.add_argument("--table", default="card_totals", help="table the windows are appended to")
parser.add_argument("--checkpoint-dir", required=True, help="where checkpoints go")
parser.add_argument("--checkpoint-interval", type=float, default=10.0, help="seconds")
parser.add_argument(
    "--delivery",
    choices=["exactly-once", "at-least-once", "at-most-once"],
    default="exactly-once",
    help="the sink's guarantee after a crash (default %(default)s)",
)
args = parser.parse_args()

checkpoints = CheckpointSettings(
    args.checkpoint_dir, interval=timedelta(seconds=args.checkpoint_interval)
)

flow = tf.Dataflow("card_totals_postgres")
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
    "window_start",
    "window_end",
    pl.col("total").cast(pl.Int64),
    pl.col("count").cast(pl.Int64),
).sink(
    postgres.sink_postgres(args.dsn, args.table, create=True, delivery=args.delivery),
    name="store",
)
