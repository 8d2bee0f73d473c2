"""Kafka -> per-card 1-minute event-time totals -> Kafka, exactly once across crashes.

    scripts/services start kafka        # prints the bootstrap address
    tideflow run examples/kafka_card_totals.py --checkpoint-dir ck --checkpoint-interval 5 \\
        -- --bootstrap 127.0.0.1:19092 --input-topic payments --output-topic card-totals

Each input message is a JSON object ``{"card": "c1", "amount": 12, "ts": 1700000000000}``
(``ts``: event time in epoch milliseconds), out of order by up to 10 s. Per card and 1-minute
tumbling window the job writes one message (key: the card) ``{"card", "window_start",
"window_end", "total", "count"}`` (window bounds as ISO-8601 UTC strings) once the watermark
passes the window's end. With ``--delivery exactly-once`` (the default) the results go into
Kafka transactions committed with the job's checkpoints: consumers reading with
``isolation.level=read_committed`` see every result once, also when the job is killed and
started again with the same checkpoint directory. Without a checkpoint directory the results of
a ``--bounded`` run are committed at its end.
"""

import argparse
import os
from datetime import timedelta

import polars as pl

import tideflow as tf
from tideflow import windows
from tideflow.connectors import kafka

parser = argparse.ArgumentParser(prog="kafka_card_totals", description=__doc__.splitlines()[0])
parser.add_argument(
    "--bootstrap",
    default=os.environ.get("TIDEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
    help="Kafka bootstrap address (env TIDEFLOW_KAFKA_BOOTSTRAP; default %(default)s)",
)
parser.add_argument("--input-topic", required=True, help="topic of JSON card events")
parser.add_argument("--output-topic", required=True, help="topic for the per-minute totals")
parser.add_argument("--bounded", action="store_true", help="stop at the input's end at the start")
parser.add_argument("--group-id", default="tideflow-kafka-card-totals", help="consumer group")
parser.add_argument(
    "--delivery",
    choices=["exactly-once", "at-least-once"],
    default="exactly-once",
    help="output guarantee (default %(default)s)",
)
parser.add_argument(
    "--transactional-id",
    default=None,
    help="prefix of the producers' transactional.id (default tideflow-<step id>)",
)
args = parser.parse_args()

ISO = "%Y-%m-%dT%H:%M:%SZ"
read = kafka.scan_kafka if args.bounded else kafka.follow_kafka
schema = {"card": pl.String, "amount": pl.Int64, "ts": pl.Int64}

flow = tf.Dataflow("kafka_card_totals")
events = flow.source(
    read(args.input_topic, bootstrap=args.bootstrap, group_id=args.group_id, schema=schema),
    name="read",
).event_time("ts", unit="ms", delay=timedelta(seconds=10))
totals = (
    events.key_by("card")
    .window(windows.tumbling(timedelta(minutes=1)))
    .agg(pl.col("amount").sum().alias("total"), pl.len().alias("count"), name="totals")
)
totals.results.select(
    "card",
    pl.col("window_start").dt.strftime(ISO),
    pl.col("window_end").dt.strftime(ISO),
    pl.col("total").cast(pl.Int64),
    pl.col("count").cast(pl.Int64),
).sink(
    kafka.sink_kafka(
        args.output_topic,
        bootstrap=args.bootstrap,
        key="card",
        delivery=args.delivery,
        transactional_id=args.transactional_id if args.delivery == "exactly-once" else None,
    ),
    name="write",
)

if __name__ == "__main__":
    result = tf.run(flow, workers=1)
    raise SystemExit(0 if result.completed else 130)
