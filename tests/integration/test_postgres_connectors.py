"""PostgreSQL sink and sources against the real server started by scripts/services."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors import postgres
from tideflow.connectors._base import SinkContext, SourceContext, SourceReader

pytestmark = pytest.mark.postgres


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


def drain(reader: SourceReader, want: int | None = None, timeout: float = 20) -> pl.DataFrame:
    frames: list[pl.DataFrame] = []
    rows = 0
    deadline = time.monotonic() + timeout
    while not reader.finished and (want is None or rows < want):
        assert time.monotonic() < deadline, f"timed out with {rows} rows"
        got = reader.poll()
        if got is not None and got.data.height:
            frames.append(got.data)
            rows += got.data.height
    return pl.concat(frames) if frames else pl.DataFrame()


def test_insert_with_copy_keeps_values_exactly(postgres_dsn: str) -> None:
    t = table_name()
    df = pl.DataFrame(
        {
            "id": [1, 2, 3],
            "amount": [1.5, None, -2.25],
            "note": ['a,"quoted"\nline', "", None],
            "ok": [True, False, None],
            "at": [dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)] * 3,
            "raw": [b"\x00\x01", None, b"\xff"],
            "tags": [[1, 2], [], None],
        },
        schema_overrides={"at": pl.Datetime("ms", "UTC")},
    )
    w = postgres.sink_postgres(postgres_dsn, t, create=True).build(SinkContext("db", 0, 1))
    w.write(df)
    w.write(df.with_columns(pl.col("id") + 10))
    w.close()
    rows = query(postgres_dsn, f"SELECT id, amount, note, ok, at, raw, tags FROM {t} ORDER BY id")
    assert len(rows) == 6
    assert rows[0] == (
        1,
        1.5,
        'a,"quoted"\nline',
        True,
        dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC),
        b"\x00\x01",
        [1, 2],
    )
    assert rows[1][1:4] == (None, "", False)  # NULL and empty string stay distinct
    assert rows[2][2] is None and rows[2][6] is None
    types = dict(
        query(
            postgres_dsn,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
            t,
        )
    )
    assert types["id"] == "bigint" and types["at"] == "timestamp with time zone"


def test_upsert_last_write_wins_per_key(postgres_dsn: str) -> None:
    t = table_name()
    w = postgres.sink_postgres(postgres_dsn, t, mode="upsert", key="card", create=True).build(
        SinkContext("db", 0, 1)
    )
    w.write(pl.DataFrame({"card": ["a", "b", "a"], "total": [1, 2, 3]}))  # duplicate key in a batch
    w.write(pl.DataFrame({"card": ["b", "c"], "total": [20, 30]}))
    w.close()
    assert query(postgres_dsn, f"SELECT card, total FROM {t} ORDER BY card") == [
        ("a", 3),
        ("b", 20),
        ("c", 30),
    ]


def test_refused_write_names_the_table_and_keeps_earlier_batches(postgres_dsn: str) -> None:
    t = table_name()
    query(postgres_dsn, f"CREATE TABLE {t} (id bigint NOT NULL, v text)")
    w = postgres.sink_postgres(postgres_dsn, t).build(SinkContext("db", 0, 1))
    w.write(pl.DataFrame({"id": [1, 2], "v": ["x", "y"]}))
    with pytest.raises(
        tf.ConnectorError, match=rf"step 'db': writing to table '{t}' failed: .*not-null"
    ):
        w.write(pl.DataFrame({"id": [3, None], "v": ["z", "w"]}))
    w.close()
    assert query(postgres_dsn, f"SELECT id FROM {t} ORDER BY id") == [
        (1,),
        (2,),
    ]  # batch 2 rolled back


def test_upsert_without_a_unique_key_is_a_clear_error(postgres_dsn: str) -> None:
    t = table_name()
    query(postgres_dsn, f"CREATE TABLE {t} (k text, v int)")
    w = postgres.sink_postgres(postgres_dsn, t, mode="upsert", key="k").build(
        SinkContext("db", 0, 1)
    )
    with pytest.raises(tf.ConnectorError, match="no unique or exclusion constraint"):
        w.write(pl.DataFrame({"k": ["a"], "v": [1]}))
    w.close()
    with pytest.raises(tf.ConnectorError, match="does not exist"):
        postgres.sink_postgres(postgres_dsn, table_name()).build(SinkContext("db", 0, 1))


def test_scan_reads_a_table_and_a_query_in_batches(postgres_dsn: str) -> None:
    t = table_name()
    query(
        postgres_dsn,
        f"CREATE TABLE {t} AS SELECT g AS id, 'r' || g AS name FROM generate_series(1, 2500) g",
    )
    r = postgres.scan_postgres(postgres_dsn, t).build(SourceContext("scan", 0, 1, 1000))
    got = drain(r)
    assert sorted(got["id"]) == list(range(1, 2501))
    assert got.schema == pl.Schema({"id": pl.Int32(), "name": pl.String()})
    r.close()
    q = postgres.scan_postgres(postgres_dsn, f"SELECT id FROM {t} WHERE id <= 10 ORDER BY id")
    assert drain(q.build(SourceContext("scan", 0, 1, 4)))["id"].to_list() == list(range(1, 11))
    other = q.build(SourceContext("scan", 1, 2, 4))  # only worker 0 reads
    assert other.finished and other.poll() is None


def test_follow_polls_new_rows_in_order_and_resumes(postgres_dsn: str) -> None:
    t = table_name()
    query(postgres_dsn, f"CREATE TABLE {t} (seq bigint, v text)")
    query(
        postgres_dsn, f"INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (2, 'b2'), (2, 'b3'), (3, 'c')"
    )
    src = postgres.follow_postgres(
        postgres_dsn, t, cursor_column="seq", poll_interval=dt.timedelta(milliseconds=50)
    )
    r = src.build(SourceContext("poll", 0, 1, 2))  # batch of 2 cuts through the seq=2 rows
    first = drain(r, want=5)
    assert sorted(first["v"]) == ["a", "b", "b2", "b3", "c"]
    assert r.poll() is None  # nothing new
    query(postgres_dsn, f"INSERT INTO {t} VALUES (4, 'd'), (5, 'e')")
    more = drain(r, want=2)
    assert more["v"].to_list() == ["d", "e"]
    position = r.snapshot()
    r.close()
    assert position == {t: 5}
    query(postgres_dsn, f"INSERT INTO {t} VALUES (6, 'f')")
    again = src.build(SourceContext("poll", 0, 1, 100, position))
    assert drain(again, want=1)["v"].to_list() == ["f"]
    again.close()
