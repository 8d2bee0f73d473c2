"""Throughput of sink_postgres(mode="insert"): exactly-once vs at-least-once vs at-most-once.

    scripts/services start postgres
    python bench/postgres_sink.py [--rows 1_000_000] [--dsn DSN] [--repeat 3]

A generator emits ``rows`` records ``(id bigint, card text, amount double, ts timestamptz)``
into a new PostgreSQL table, 1 worker, batches of 65,536 rows. The time is the whole run, until
every row is committed, wall clock (``per_s``: rows per second) and CPU of this process (the
server's CPU is not included).
Configurations, alternating within each repeat so that a busy machine slows them alike:
at-least-once without checkpoints, then at-least-once, exactly-once and at-most-once with a
checkpoint every 1 s and every 10 s, and exactly-once without checkpoints (one transaction).
The rows in the table are counted after each run (each must hold ``rows``). Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from _sink_runs import timed_run  # bench/ is the script's directory

import tideflow as tf
from tideflow.connectors import generator, postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_flow(rows: int, dsn: str, table: str, delivery: str) -> tf.Dataflow:
    def fn(start: int, n: int) -> pl.DataFrame:
        i = np.arange(start, start + n, dtype=np.int64)
        return pl.DataFrame(
            {
                "id": i,
                "card": pl.Series(i % 1000).cast(pl.String),
                "amount": (i % 9973) / 4.0,
                "ts": pl.Series(i * 1000, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            }
        ).with_columns(pl.lit("c") + pl.col("card"), pl.col("ts").dt.offset_by("1d"))

    flow = tf.Dataflow("postgres_sink_bench")
    flow.source(generator.generate(fn, count=rows), name="gen").sink(
        postgres.sink_postgres(dsn, table, create=True, delivery=delivery),  # type: ignore[arg-type]
        name="write",
    )
    return flow


def _sql(dsn: str, sql: str) -> Any:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchone() if cur.description else None


def one(a: argparse.Namespace, delivery: str, interval: float | None) -> dict[str, Any]:
    table = f"bench_{uuid.uuid4().hex[:10]}"
    out = {
        "delivery": delivery,
        **timed_run(make_flow(a.rows, a.dsn, table, delivery), a.rows, interval),
    }
    out["rows_in_table"] = _sql(a.dsn, f"SELECT count(*) FROM {table}")[0]
    _sql(a.dsn, f"DROP TABLE {table}")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dsn", default="postgresql://tideflow@127.0.0.1:15432/tideflow")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs: list[tuple[str, float | None]] = [("at-least-once", None)]
    for interval in (1.0, 10.0):
        runs += [(d, interval) for d in ("at-least-once", "exactly-once", "at-most-once")]
    runs.append(("exactly-once", None))
    results = [one(a, d, i) for _ in range(a.repeat) for d, i in runs]
    print(json.dumps({"rows": a.rows, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
