"""PostgreSQL connector settings and type mapping (no server needed)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors import kafka, postgres
from tideflow.connectors._base import Sink
from tideflow.connectors._postgres_sink import _copy_frame
from tideflow.connectors._postgres_source import decode_position, encode_position
from tideflow.testing import TestingSource


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


def test_delivery_settings_are_checked() -> None:
    with pytest.raises(tf.ConfigError, match="unknown delivery='twice'"):
        postgres.sink_postgres("postgresql://x/db", "t", delivery="twice")  # type: ignore[arg-type]
    with pytest.raises(tf.ConfigError, match="progress_table= applies only with"):
        postgres.sink_postgres("postgresql://x/db", "t", progress_table="p")
    with pytest.raises(tf.ConfigError, match="other than the output table"):
        postgres.sink_postgres(
            "postgresql://x/db", "t", delivery="exactly-once", progress_table="t"
        )
    eo = postgres.sink_postgres("postgresql://x/db", "t", delivery="exactly-once")
    assert eo.progress() == "tideflow_sink_progress"


@pytest.mark.parametrize(
    "sink",
    [
        postgres.sink_postgres("postgresql://x/db", "t", delivery="exactly-once"),
        postgres.sink_postgres("postgresql://x/db", "t", delivery="at-most-once"),
        kafka.sink_kafka("t", bootstrap="127.0.0.1:1", delivery="exactly-once"),
    ],
)
def test_checkpoint_committed_sinks_on_a_stream_need_checkpoints(sink: Sink) -> None:
    """Rows are written when a checkpoint completes: a stream without checkpoints would never
    write anything, so the run refuses to start (before connecting anywhere)."""
    flow = tf.Dataflow("never_ends")
    flow.source(TestingSource([{"x": 1}], bounded=False), name="read").sink(sink, name="out")
    with pytest.raises(tf.ConfigError, match=r"step 'never_ends\.out'.*pass checkpoint_dir="):
        tf.run(flow)
