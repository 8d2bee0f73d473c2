"""examples/kafka_to_postgres.py end to end with the real broker and database."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import polars as pl
import pytest

from .test_kafka_connectors import new_topic, produce_raw
from .test_kafka_increment import run_example
from .test_postgres_connectors import query

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("workers", [1, 2])
def test_minute_totals_upserted(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path, workers: int
) -> None:
    rng = random.Random(workers)
    topic = new_topic(kafka_bootstrap, partitions=3)
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    events = [
        {
            "card": f"c{rng.randrange(7)}",
            "amount": rng.randrange(1, 1000) / 4,
            "ts": t0 + rng.randrange(0, 4 * 60_000),
        }
        for _ in range(3000)
    ]
    records = [(e["card"].encode(), json.dumps(e).encode()) for e in events]
    records.insert(100, (None, b'{"card": "c1", "amount": "lots"}'))
    produce_raw(kafka_bootstrap, topic, records)
    table = f"totals_{uuid.uuid4().hex[:8]}"
    job = run_example(
        tmp_path,
        kafka_bootstrap,
        topic,
        "",
        "--bounded",
        workers=workers,
        script=ROOT / "examples" / "kafka_to_postgres.py",
        options=["--topic", topic, "--dsn", postgres_dsn, "--table", table],
    )
    _, err = job.communicate(timeout=180)
    assert job.returncode == 0, err
    assert "1 dead letters" in err
    got = pl.DataFrame(
        query(
            postgres_dsn,
            "SELECT card, window_start, window_end, events, total, max_amount "
            f"FROM {table} ORDER BY 1, 2",
        ),
        schema=["card", "window_start", "window_end", "events", "total", "max_amount"],
        orient="row",
    )
    want = (
        pl.DataFrame(events)
        .with_columns(
            window_start=pl.from_epoch("ts", time_unit="ms")
            .dt.replace_time_zone("UTC")
            .dt.truncate("1m")
        )
        .group_by("card", "window_start")
        .agg(
            pl.len().alias("events"),
            pl.col("amount").sum().alias("total"),
            pl.col("amount").max().alias("max_amount"),
        )
        .sort("card", "window_start")
    )
    assert got.height == want.height
    assert got["events"].to_list() == want["events"].to_list()
    assert got["total"].to_list() == pytest.approx(want["total"].to_list())
    assert got["max_amount"].to_list() == want["max_amount"].to_list()
    assert [w.timestamp() for w in got["window_start"]] == [
        w.timestamp() for w in want["window_start"]
    ]
    assert all(
        (e - s).total_seconds() == 60
        for s, e in zip(got["window_start"], got["window_end"], strict=True)
    )
