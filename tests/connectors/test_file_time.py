"""Event time from the source: a file's modification time as a column."""

import os
from datetime import UTC, datetime, timedelta

import polars as pl

import tideflow as tf
from tideflow import windows
from tideflow.connectors import files
from tideflow.testing import CollectSink


def test_scan_and_follow_add_the_file_modification_time(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"k": "x"}\n{"k": "x"}\n')
    b.write_text('{"k": "x"}\n')
    t_a = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    t_b = datetime(2026, 1, 1, 0, 0, 15, tzinfo=UTC)
    os.utime(a, (t_a.timestamp(), t_a.timestamp()))
    os.utime(b, (t_b.timestamp(), t_b.timestamp()))
    flow = tf.Dataflow("mtime")
    out = CollectSink()
    src = flow.source(files.scan_jsonl(str(tmp_path), file_time="modified"))
    src.event_time("modified").key_by("k").window(windows.tumbling(timedelta(seconds=10))).agg(
        pl.len().alias("n")
    ).results.sink(out)
    tf.run(flow)
    got = sorted((r["window_start"], r["n"]) for r in out.rows())
    assert got == [
        (datetime(2026, 1, 1, tzinfo=UTC), 2),
        (datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC), 1),
    ]

    from tideflow.connectors._base import SourceContext

    reader = files.follow_text(str(tmp_path), file_time="modified").build(
        SourceContext("f", 0, 1, 100)
    )
    batch = None
    for _ in range(50):
        batch = reader.poll()
        if batch is not None:
            break
    assert batch is not None
    assert batch.data.schema["modified"] == pl.Datetime("us", "UTC")
    assert set(batch.data["modified"].to_list()) <= {t_a, t_b}
