"""Kafka -> +1 -> Kafka: read integers from one topic, add one, write them to another.

    scripts/services start kafka          # prints the bootstrap address, e.g. 127.0.0.1:19092
    tideflow run examples/kafka_increment.py -- --bootstrap 127.0.0.1:19092 \\
        --input-topic numbers --output-topic numbers-plus-one [--bounded]

Each message of the input topic is one integer as UTF-8 text (``"41"``); the output message
has the same key and the integer plus one (``"42"``). Messages that are not integers go to the
dead letters (``kafka_increment.dead-letters.jsonl``) with their topic/partition/offset. With
``--bounded`` the job reads up to the end the input topic had when it started and then ends;
without it, it follows the topic until stopped (Ctrl-C flushes and exits). Partitions are split
over the workers (``--workers N`` before ``--``); the sink waits for the broker to acknowledge
every record before the job reports success.
"""

import argparse
import os

import polars as pl

import tideflow as tf
from tideflow.connectors import kafka

parser = argparse.ArgumentParser(prog="kafka_increment", description=__doc__.splitlines()[0])
parser.add_argument(
    "--bootstrap",
    default=os.environ.get("TIDEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
    help="Kafka bootstrap address (env TIDEFLOW_KAFKA_BOOTSTRAP; default %(default)s)",
)
parser.add_argument("--input-topic", required=True, help="topic of integers to read")
parser.add_argument("--output-topic", required=True, help="topic to write the results to")
parser.add_argument(
    "--bounded",
    action="store_true",
    help="stop at the end offsets the input topic had at the start (default: follow it)",
)
parser.add_argument("--group-id", default="tideflow-kafka-increment", help="consumer group")
args = parser.parse_args()

read = kafka.scan_kafka if args.bounded else kafka.follow_kafka
flow = tf.Dataflow("kafka_increment")
numbers = (
    flow.source(
        read(args.input_topic, bootstrap=args.bootstrap, group_id=args.group_id, format="text"),
        name="read",
    )
    .with_columns(n=pl.col("value").str.strip_chars().cast(pl.Int64, strict=False), name="parse")
    .validate({"value is not an integer": pl.col("n").is_not_null()}, name="check")
)
plus_one = numbers.select("key", (pl.col("n") + 1).cast(pl.String).alias("value"), name="increment")
plus_one.sink(
    kafka.sink_kafka(args.output_topic, bootstrap=args.bootstrap, key="key", value="value"),
    name="write",
)

if __name__ == "__main__":
    result = tf.run(flow, workers=1)
    raise SystemExit(0 if result.completed else 130)
