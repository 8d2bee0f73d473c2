"""Throughput of the Kafka and PostgreSQL connectors next to the client libraries' own loops.

    python scripts/services.d/bench_connectors.py --bootstrap 127.0.0.1:19092 \\
        --dsn postgresql://tideflow@127.0.0.1:15432/tideflow [--rows 1000000]

Start the services first (scripts/services start kafka|postgres). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import runpy
import sys
import time
import uuid
from pathlib import Path

import polars as pl

import tideflow as tf
from tideflow.connectors import kafka, postgres
from tideflow.connectors._base import SinkContext, SourceContext

ROOT = Path(__file__).resolve().parents[2]


def report(what: str, rows: int, seconds: float) -> None:
    print(f"{what:<58} {rows:>9} rows {seconds:7.2f} s {rows / seconds:>12,.0f} rows/s", flush=True)


def new_topic(bootstrap: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep it alive until the result
    fs = admin.create_topics([NewTopic(name, partitions, 1)])
    for f in fs.values():
        f.result(30)
    return name


def kafka_benches(bootstrap: str, n: int) -> None:
    from confluent_kafka import Consumer, Producer

    values = [str(i).encode() for i in range(n)]
    # 1. confluent-kafka's own produce loop, one partition
    raw_topic = new_topic(bootstrap, 1)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    t = time.perf_counter()
    for v in values:
        while True:
            try:
                p.produce(raw_topic, v)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)
    report("confluent-kafka produce loop (1 partition)", n, time.perf_counter() - t)
    # 2. confluent-kafka's own consume loop: librdkafka's default fetch sizes, then the source's
    for label, extra in (
        ("default fetch sizes", {}),
        ("8 MB/32 MB fetches", {"max.partition.fetch.bytes": 8 << 20, "fetch.max.bytes": 32 << 20}),
    ):
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"b-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **extra,
            }
        )
        c.subscribe([raw_topic])
        got = 0
        t = time.perf_counter()
        while got < n:
            for m in c.consume(100_000, 1.0):
                if m.error() is None:
                    m.value()
                    got += 1
        report(f"confluent-kafka consume loop (1 partition, {label})", n, time.perf_counter() - t)
        c.close()
    # 3. sink_kafka, 65,536-row batches
    topic = new_topic(bootstrap, 1)
    frame = pl.DataFrame({"value": pl.Series(values, dtype=pl.Binary).cast(pl.String)})
    w = kafka.sink_kafka(topic, bootstrap=bootstrap, value="value").build(SinkContext("b", 0, 1))
    t = time.perf_counter()
    for chunk in frame.iter_slices(65_536):
        w.write(chunk)
    w.close()
    report("tideflow sink_kafka (1 partition, value column)", n, time.perf_counter() - t)
    # 4. scan_kafka, text values
    r = kafka.scan_kafka(topic, bootstrap=bootstrap, format="text").build(
        SourceContext("b", 0, 1, 65_536)
    )
    rows = 0
    t = time.perf_counter()
    while not r.finished:
        b = r.poll()
        if b is not None:
            rows += b.data.height
    report("tideflow scan_kafka (1 partition, text)", rows, time.perf_counter() - t)
    r.close()
    # 5. scan_kafka, JSON with a schema
    jtopic = new_topic(bootstrap, 1)
    jframe = pl.DataFrame(
        {"card": [f"c{i % 1000}" for i in range(n)], "amount": [i * 0.5 for i in range(n)]}
    )
    w = kafka.sink_kafka(jtopic, bootstrap=bootstrap).build(SinkContext("b", 0, 1))
    t = time.perf_counter()
    for chunk in jframe.iter_slices(65_536):
        w.write(chunk)
    w.close()
    report("tideflow sink_kafka (1 partition, rows as JSON)", n, time.perf_counter() - t)
    r = kafka.scan_kafka(
        jtopic, bootstrap=bootstrap, schema={"card": pl.String, "amount": pl.Float64}
    ).build(SourceContext("b", 0, 1, 65_536))
    rows = 0
    t = time.perf_counter()
    while not r.finished:
        b = r.poll()
        if b is not None:
            rows += b.data.height
    report("tideflow scan_kafka (1 partition, JSON + schema)", rows, time.perf_counter() - t)
    r.close()
    # 6. examples/kafka_increment.py, bounded, 1 and 4 partitions
    for partitions, workers in ((1, 1), (4, 2), (4, 4)):
        src = new_topic(bootstrap, partitions)
        dst = new_topic(bootstrap, partitions)
        p = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 20,
                "batch.num.messages": 100_000,
                "queue.buffering.max.messages": 2_000_000,
            }
        )
        for i, v in enumerate(values):
            while True:
                try:
                    p.produce(src, v, key=b"%d" % (i % 100))
                    break
                except BufferError:
                    p.poll(0.05)
        p.flush(120)
        argv = sys.argv
        sys.argv = [
            "kafka_increment",
            "--bootstrap",
            bootstrap,
            "--input-topic",
            src,
            "--output-topic",
            dst,
            "--bounded",
            "--group-id",
            f"b-{uuid.uuid4().hex}",
        ]
        try:
            ns = runpy.run_path(str(ROOT / "examples" / "kafka_increment.py"), run_name="__bench__")
        finally:
            sys.argv = argv
        t = time.perf_counter()
        result = tf.run(ns["flow"], workers=workers)
        assert result.completed
        report(
            f"kafka_increment end to end ({partitions} partition(s), {workers} worker(s))",
            n,
            time.perf_counter() - t,
        )


def postgres_benches(dsn: str, n: int) -> None:
    import psycopg

    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    frame = pl.DataFrame(
        {
            "id": pl.int_range(0, n, eager=True),
            "card": [f"c{i % 1000}" for i in range(n)],
            "amount": [i * 0.25 for i in range(n)],
        }
    ).with_columns(ts=pl.lit(now) + pl.duration(seconds=pl.col("id")))
    ddl = "(id bigint, card text, amount double precision, ts timestamptz)"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in ("b_raw", "b_sink", "b_up"):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.execute(f"CREATE TABLE b_raw {ddl}")
        conn.execute(f"CREATE TABLE b_sink {ddl}")
        conn.execute(
            "CREATE TABLE b_up "
            "(id bigint PRIMARY KEY, card text, amount double precision, ts timestamptz)"
        )
    rows = frame.rows()
    # psycopg's own COPY loop (write_row per row), batches of 65,536 in a transaction each
    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        for start in range(0, n, 65_536):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy("COPY b_raw (id, card, amount, ts) FROM STDIN") as copy,
            ):
                for row in rows[start : start + 65_536]:
                    copy.write_row(row)
        report("psycopg COPY write_row loop", n, time.perf_counter() - t)
    w = postgres.sink_postgres(dsn, "b_sink").build(SinkContext("b", 0, 1))
    t = time.perf_counter()
    for chunk in frame.iter_slices(65_536):
        w.write(chunk)
    w.close()
    report("tideflow sink_postgres insert (COPY csv)", n, time.perf_counter() - t)
    w = postgres.sink_postgres(dsn, "b_up", mode="upsert", key="id").build(SinkContext("b", 0, 1))
    t = time.perf_counter()
    for chunk in frame.iter_slices(65_536):
        w.write(chunk)
    for chunk in frame.iter_slices(65_536):  # second pass: every row is an update
        w.write(chunk)
    w.close()
    report(
        "tideflow sink_postgres upsert (half inserts, half updates)", 2 * n, time.perf_counter() - t
    )
    r = postgres.scan_postgres(dsn, "b_sink").build(SourceContext("b", 0, 1, 65_536))
    got = 0
    t = time.perf_counter()
    while not r.finished:
        b = r.poll()
        if b is not None:
            got += b.data.height
    report("tideflow scan_postgres (server-side cursor)", got, time.perf_counter() - t)
    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        with conn.cursor(name="raw") as cur:
            cur.itersize = 65_536
            cur.execute("SELECT * FROM b_sink")
            got = sum(1 for _ in cur)
        report("psycopg server-side cursor iteration", got, time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap")
    ap.add_argument("--dsn")
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    if args.bootstrap:
        kafka_benches(args.bootstrap, args.rows)
    if args.dsn:
        postgres_benches(args.dsn, args.rows)


if __name__ == "__main__":
    main()
