"""Throughput of sink_kafka: exactly-once (transactions per checkpoint) vs at-least-once.

    scripts/services start kafka
    python bench/kafka_sink.py [--rows 1_000_000] [--bootstrap 127.0.0.1:19092] [--partitions 4]

A generator emits ``rows`` small records (key ``k<0..999>``, value an integer as text, about
10 bytes per message) into a Kafka topic, 1 worker. Each configuration writes to a new topic;
the time is the whole run: until every record is acknowledged (at-least-once) or committed
(exactly-once), wall clock and CPU of this process. Configurations: at-least-once without checkpoints, and both guarantees with a
checkpoint every 1 s and every 10 s. The records read back with read_committed are counted.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from typing import Any

import numpy as np
import polars as pl
from _sink_runs import timed_run  # bench/ is the script's directory

import tideflow as tf
from tideflow.connectors import generator, kafka


def make_flow(rows: int, topic: str, bootstrap: str, delivery: str, txn: str) -> tf.Dataflow:
    def fn(start: int, n: int) -> pl.DataFrame:
        i = np.arange(start, start + n, dtype=np.int64)
        return pl.DataFrame({"k": pl.Series(i % 1000).cast(pl.String), "v": i}).with_columns(
            pl.lit("k") + pl.col("k"), pl.col("v").cast(pl.String)
        )

    flow = tf.Dataflow("kafka_sink_bench")
    flow.source(generator.generate(fn, count=rows), name="gen").sink(
        kafka.sink_kafka(
            topic,
            bootstrap=bootstrap,
            key="k",
            value="v",
            delivery=delivery,  # type: ignore[arg-type]
            transactional_id=txn if delivery == "exactly-once" else None,
        ),
        name="write",
    )
    return flow


def new_topic(bootstrap: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    name = f"bench-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(timeout=30)
    return name


def count_committed(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
        }
    )
    parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
    high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    todo = {p for p in parts if high[p]}
    c.assign([TopicPartition(topic, p, 0) for p in todo])
    n = 0
    while todo:
        n += sum(1 for m in c.consume(100_000, 0.5) if m.error() is None)
        for tp in c.position([TopicPartition(topic, p) for p in todo]):
            if tp.offset >= high[tp.partition]:
                todo.discard(tp.partition)
    c.close()
    return n


def one(a: argparse.Namespace, delivery: str, interval: float | None) -> dict[str, Any]:
    topic = new_topic(a.bootstrap, a.partitions)
    flow = make_flow(a.rows, topic, a.bootstrap, delivery, f"bench-{uuid.uuid4().hex[:8]}")
    out = {"delivery": delivery, **timed_run(flow, a.rows, interval)}
    out["records_per_s"] = out.pop("per_s")
    out["read_committed"] = count_committed(a.bootstrap, topic)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--bootstrap", default="127.0.0.1:19092")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = [("at-least-once", None)]
    for interval in (1.0, 10.0):
        runs += [("at-least-once", interval), ("exactly-once", interval)]
    results = [one(a, d, i) for _ in range(a.repeat) for d, i in runs]
    print(json.dumps({"rows": a.rows, "partitions": a.partitions, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
