"""Sliding windows keep the combiner's partials once per pane: same results as copying them into
every window, with 1 and 2 workers, and across a crash and a resume (panes fold into the
checkpointed window partials)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow import windows
from tideflow.runtime import _windowing
from tideflow.state import CheckpointStore
from tideflow.testing import ABORT, PAUSE, CollectSink, TestingSource

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def _rows(steps: list[int], keys: list[int], values: list[int]) -> list[dict[str, Any]]:
    """In-order records: each step moves time on by that many milliseconds."""
    out, t = [], 0
    for step, k, v in zip(steps, keys, values, strict=False):
        t += step
        out.append({"k": k, "ts": T0 + t * MS, "v": v})
    return out


def _reference(rows: list[dict[str, Any]], size: int, hop: int) -> set[tuple[Any, ...]]:
    """Per key and window (epoch-aligned, half-open) with a record: count and sum."""
    acc: dict[tuple[int, int], list[int]] = defaultdict(list)
    for r in rows:
        t = (r["ts"] - T0) // MS + int(T0.timestamp() * 1000)
        first = (t // hop) * hop
        for ws in range(first, t - size, -hop):
            if ws <= t < ws + size:
                acc[(r["k"], ws)].append(r["v"])
    return {(k, ws, len(vs), sum(vs)) for (k, ws), vs in acc.items()}


def _flow(items: list[Any], size: int, hop: int, out: CollectSink) -> tf.Dataflow:
    flow = tf.Dataflow("panes")
    (
        flow.source(TestingSource(items, batch_size=3), name="src")
        .event_time("ts", idle=None)
        .key_by("k")
        .window(windows.sliding(size * MS, hop * MS))
        .agg(pl.len().alias("n"), pl.col("v").sum().alias("s"), name="counts")
        .results.sink(out, name="out")
    )
    return flow


def _got(*sinks: CollectSink) -> set[tuple[Any, ...]]:
    """Distinct result rows; a window written twice (before a crash, after the resume) must
    carry the same values both times."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for sink in sinks:
        frame = sink.frame()
        if not frame.height:
            continue
        frame = frame.with_columns(pl.col("window_start").dt.epoch("ms"))
        for k, ws, n, s in frame.select("k", "window_start", "n", "s").iter_rows():
            assert seen.setdefault((k, ws), (n, s)) == (n, s), f"window {k, ws} differs"
    return {(k, ws, n, s) for (k, ws), (n, s) in seen.items()}


@pytest.fixture
def pane_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records whether each batch of combiner partials went into panes (in this process).

    Small batches' partials go to the windows' accumulators instead (tested in
    ``test_window_small.py``): their threshold is 0 here, so that these batches of three rows
    take the panes."""
    monkeypatch.setattr(_windowing, "SMALL_AGG_ROWS", 0)
    calls: list[bool] = []
    real = _windowing.AlignedWindowOperator._on_pane_partials

    def spy(self: Any, batch: pl.DataFrame) -> bool:
        took = real(self, batch)
        calls.append(took)
        return took

    monkeypatch.setattr(_windowing.AlignedWindowOperator, "_on_pane_partials", spy)
    return calls


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(st.integers(0, 7), min_size=1, max_size=60),
    keys=st.lists(st.integers(0, 3), min_size=60, max_size=60),
    values=st.lists(st.integers(-5, 9), min_size=60, max_size=60),
    size_hop=st.sampled_from([(10, 2), (6, 4), (9, 3), (4, 4)]),
)
def test_sliding_windows_from_panes_equal_reference(
    steps: list[int], keys: list[int], values: list[int], size_hop: tuple[int, int]
) -> None:
    size, hop = size_hop
    rows = _rows(steps, keys, values)
    out = CollectSink()
    tf.run(_flow(rows, size, hop, out), batch_size=3)
    assert _got(out) == _reference(rows, size, hop)


def test_panes_are_used_and_two_workers_give_the_same_windows(pane_calls: list[bool]) -> None:
    rows = _rows([1, 0, 3, 2] * 40, [0, 1, 2, 3, 1] * 32, list(range(160)))
    one, two = CollectSink(), CollectSink()
    tf.run(_flow(rows, 10, 2, one), batch_size=3)
    assert pane_calls and all(pane_calls)  # every batch of partials went into panes
    tf.run(_flow(rows, 10, 2, two), workers=2, batch_size=3)
    assert _got(one) == _got(two) == _reference(rows, 10, 2)


def test_sliding_windows_resume_mid_stream_like_an_uninterrupted_run(
    tmp_path: Path, pane_calls: list[bool]
) -> None:
    rows = _rows([1, 2, 0, 1, 3] * 60, [0, 1, 2, 3] * 75, [i % 11 for i in range(300)])
    reference = _reference(rows, 10, 2)
    ck, crashed = tmp_path / "ck", CollectSink()
    with pytest.raises(tf.JobError, match="ABORT"):
        tf.run(
            _flow([*rows[:200], ABORT, *rows[200:]], 10, 2, crashed),
            batch_size=3,
            checkpoint_dir=ck,
            checkpoint_interval=timedelta(milliseconds=1),
        )
    assert pane_calls and all(pane_calls)
    cp = CheckpointStore(ck).latest()
    assert cp is not None
    saved = cp.parts[0]["panes.counts"]
    assert saved["pending"] is not None  # open windows' partials, folded from the panes
    resumed = CollectSink()
    tf.run(
        _flow([*rows[:200], PAUSE, *rows[200:]], 10, 2, resumed),  # batched as with the ABORT
        batch_size=3,
        checkpoint_dir=ck,
        checkpoint_interval=timedelta(seconds=60),
    )
    assert resumed.frame().height < len(reference)  # it resumed mid-stream
    assert _got(crashed, resumed) == reference
