"""Watermarks tracked per part of an input (``event_time(..., per=...)``), such as Kafka partitions."""

from collections import Counter
from datetime import timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow import windows
from tideflow.testing import CollectSink, TestingSource

T0 = 1_700_000_000_000_000
SIZE = 1_000


@st.composite
def partitioned(draw: st.DrawFn) -> list[pl.DataFrame]:
    """Several parts, each in time order, read in batches interleaved at random.

    The first batch holds the first record of every part (a Kafka consumer sees all its
    partitions from the start); a part first seen later could not hold the watermark back.
    """
    parts = draw(st.integers(2, 4))
    queues = []
    for p in range(parts):
        steps = draw(st.lists(st.integers(0, 400), min_size=1, max_size=30))
        times, t = [], 0
        for s in steps:
            t += s
            times.append(t)
        queues.append([(p, t) for t in times])
    first = [q.pop(0) for q in queues]
    batches = [
        pl.DataFrame(
            {"part": [c[0] for c in first], "t": [T0 + c[1] for c in first]},
            schema={"part": pl.Int32, "t": pl.Int64},
        )
    ]
    while any(queues):
        p = draw(st.sampled_from([i for i, q in enumerate(queues) if q]))
        n = draw(st.integers(1, 5))
        chunk, queues[p] = queues[p][:n], queues[p][n:]
        batches.append(
            pl.DataFrame(
                {"part": [c[0] for c in chunk], "t": [T0 + c[1] for c in chunk]},
                schema={"part": pl.Int32, "t": pl.Int64},
            )
        )
    return batches


def run(batches: list[pl.DataFrame], per: str | None, workers: int = 1) -> tuple[Counter, int]:
    flow = tf.Dataflow("per")
    out, late = CollectSink(), CollectSink()
    timed = flow.source(TestingSource(batches, batch_size=1)).event_time(
        "t", unit="us", delay=timedelta(0), per=per
    )
    w = (
        timed.key_by("part")
        .window(windows.tumbling(timedelta(microseconds=SIZE)))
        .agg(pl.len().alias("n"))
    )
    w.results.sink(out)
    w.late.sink(late)
    tf.run(flow, workers=workers, batch_size=1)
    got = Counter()
    for r in out.frame().iter_rows(named=True):
        got[(r["part"], int(r["window_start"].timestamp() * 1_000_000) - T0)] += r["n"]
    return got, late.frame().height


def reference(batches: list[pl.DataFrame]) -> Counter:
    want = Counter()
    for b in batches:
        for p, t in b.iter_rows():
            want[(p, (t - T0) // SIZE * SIZE)] += 1
    return want


def _frame(part: list[int], t: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"part": part, "t": [T0 + x for x in t]}, schema={"part": pl.Int32, "t": pl.Int64}
    )


# Both parts start together; then part 0 is read far ahead of part 1.
BATCHES = [_frame([0, 1], [0, 100]), _frame([0, 0], [5_000, 9_000]), _frame([1, 1], [200, 3_000])]


@settings(max_examples=40, deadline=None)
@given(partitioned())
def test_parts_read_at_different_paces_are_never_late(batches: list[pl.DataFrame]) -> None:
    got, late = run(batches, per="part")
    assert late == 0
    assert got == reference(batches)


def test_one_watermark_for_the_whole_input_makes_a_slow_part_late() -> None:
    # Part 0 is read far ahead of part 1: one watermark over both drops part 1's records.
    batches = BATCHES
    _, late = run(batches, per=None)
    assert late == 2
    got, late = run(batches, per="part")
    assert late == 0
    assert got == reference(batches)


@pytest.mark.parametrize("workers", [2])
def test_per_part_watermarks_with_workers(workers: int) -> None:
    batches = BATCHES
    got, late = run(batches, per="part", workers=workers)
    assert late == 0
    assert got == reference(batches)


def test_per_column_must_exist() -> None:
    flow = tf.Dataflow("per")
    src = flow.source(TestingSource([], schema={"t": pl.Int64}))
    with pytest.raises(tf.ConfigError, match="no column 'partition' to track watermarks per"):
        src.event_time("t", unit="us", per="partition")
