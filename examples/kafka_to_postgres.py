"""JSON events from Kafka -> 1-minute tumbling totals per key -> upserted into PostgreSQL.

    scripts/services start kafka        # prints the bootstrap address
    scripts/services start postgres     # prints the DSN
    tideflow run examples/kafka_to_postgres.py -- --bootstrap 127.0.0.1:19092 \\
        --topic payments --dsn postgresql://tideflow@127.0.0.1:15432/tideflow [--bounded]

Each message is a JSON object ``{"card": "c1", "amount": 12.5, "ts": 1700000000000}`` (``ts``
in epoch milliseconds is the event time; without it the Kafka record's timestamp is used).
Per card and minute ``[window_start, window_end)`` the job keeps the number of events, their
total and largest amount, and upserts them into the table (``minute_totals`` by default,
created with the primary key ``(card, window_start)``): each micro-batch updates the windows
it touched, so the table is always current and ends exactly at the totals of all events.
Messages that are not such objects go to the dead letters with their topic/partition/offset.
"""

import argparse
import os

import polars as pl

import tideflow as tf
from tideflow.connectors import kafka, postgres

parser = argparse.ArgumentParser(prog="kafka_to_postgres", description=__doc__.splitlines()[0])
parser.add_argument(
    "--bootstrap",
    default=os.environ.get("TIDEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
    help="Kafka bootstrap address (env TIDEFLOW_KAFKA_BOOTSTRAP; default %(default)s)",
)
parser.add_argument("--topic", required=True, help="topic of JSON events")
parser.add_argument(
    "--dsn",
    default=os.environ.get(
        "TIDEFLOW_POSTGRES_DSN", "postgresql://tideflow@127.0.0.1:15432/tideflow"
    ),
    help="PostgreSQL DSN (env TIDEFLOW_POSTGRES_DSN; default %(default)s)",
)
parser.add_argument("--table", default="minute_totals", help="table to upsert into")
parser.add_argument("--bounded", action="store_true", help="stop at the topic's end at the start")
parser.add_argument("--group-id", default="tideflow-kafka-to-postgres", help="consumer group")
args = parser.parse_args()

read = kafka.scan_kafka if args.bounded else kafka.follow_kafka
schema = {"card": pl.String, "amount": pl.Float64, "ts": pl.Int64}
flow = tf.Dataflow("kafka_to_postgres")
events = (
    flow.source(
        read(args.topic, bootstrap=args.bootstrap, group_id=args.group_id, schema=schema),
        name="read",
    )
    .validate(
        {
            "card is missing": pl.col("card").is_not_null(),
            "amount is missing": pl.col("amount").is_not_null(),
        },
        name="check",
    )
    .with_columns(
        window_start=pl.coalesce(
            pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC"), pl.col("timestamp")
        ).dt.truncate("1m"),
        name="window",
    )
)
totals = events.key_by("card", "window_start").agg(
    pl.len().alias("events"),
    pl.col("amount").sum().alias("total"),
    pl.col("amount").max().alias("max_amount"),
    emit="updates",
    name="per_minute",
)
totals.with_columns(window_end=pl.col("window_start") + pl.duration(minutes=1), name="end").sink(
    postgres.sink_postgres(
        args.dsn, args.table, mode="upsert", key=["card", "window_start"], create=True
    ),
    name="store",
)

if __name__ == "__main__":
    result = tf.run(flow, workers=1)
    raise SystemExit(0 if result.completed else 130)
