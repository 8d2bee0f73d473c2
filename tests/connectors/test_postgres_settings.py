"""PostgreSQL connector settings and type mapping (no server needed)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors import postgres
from tideflow.connectors._postgres_sink import _copy_frame
from tideflow.connectors._postgres_source import decode_position, encode_position


def test_settings_are_checked() -> None:
    with pytest.raises(tf.ConfigError, match="needs key="):
        postgres.sink_postgres("postgresql://x/db", "t", mode="upsert")
    with pytest.raises(tf.ConfigError, match="unknown mode='merge'"):
        postgres.sink_postgres("postgresql://x/db", "t", mode="merge")  # type: ignore[arg-type]
    with pytest.raises(tf.ConfigError, match="positive timedelta"):
        postgres.follow_postgres(
            "postgresql://x/db", "t", cursor_column="id", poll_interval=dt.timedelta(0)
        )


def test_passwords_never_shown() -> None:
    assert "s3cret" not in postgres.safe_dsn("postgresql://u:s3cret@h/db")
    assert "s3cret" not in postgres.safe_dsn("host=h password='s3cret' dbname=db")


def test_table_or_query() -> None:
    assert postgres.scan_postgres("x", "with a as (select 1) select * from a").query.startswith(
        "with"
    )
    assert postgres.scan_postgres("x", "s.t").query == 'SELECT * FROM "s"."t"'


def test_copy_text_of_awkward_types() -> None:
    df = pl.DataFrame(
        {
            "b": [b"\x00\xff"],
            "t": [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)],
            "l": [[1, 2]],
            "s": [{"x": 1}],
        }
    )
    out = _copy_frame(df)
    assert out.row(0) == ("\\x00ff", "2024-01-02 03:04:05.000000+00:00", "[1, 2]", '{"x":1}')
    assert [postgres.pg_type(t) for t in df.schema.values()] == [
        "bytea",
        "timestamptz",
        "jsonb",
        "jsonb",
    ]


def test_positions_round_trip_through_json() -> None:
    import json

    for value in (7, "k", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.date(2024, 1, 1)):
        assert decode_position(json.loads(json.dumps(encode_position(value)))) == value
