"""Aligned windows on small batches: the combiner's NumPy partials and the windows' accumulators
(``runtime/_smallagg.py``) against a brute-force reference, with small and large batches mixed
(the switch between the paths inside one window), nulls and late records, with 1 and 2
workers, and across a crash and a resume."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.time.test_window_top import _late, _us, _window, assign, crash_and_resume

import tideflow as tf
from tideflow.runtime import _smallagg, _windowing
from tideflow.testing import CollectSink, TestingSource

T0 = 1_700_000_000_000_000  # µs, a multiple of every window size below
Record = tuple[int, int, int | None]
COLUMNS = ["k", "window_start", "window_end", "n", "s", "c", "lo", "hi"]
TIME = pl.Datetime("us", "UTC")
SCHEMA = pl.Schema(
    zip(
        COLUMNS,
        [pl.Int64, TIME, TIME, pl.Int64, pl.Int32, pl.Int64, pl.Int32, pl.Int32],
        strict=True,
    )
)


def reference(
    batches: list[list[Record]], size: int, hop: int, delay: int, top: str | None
) -> tuple[set[tuple[Any, ...]], list[Record]]:
    """Records assigned to windows as :func:`assign` does; per key and window: count, sum,
    non-null count, min, max; with ``top``, only the keys of each window carrying the
    largest ``top`` (nulls never win)."""
    wins, late = assign(batches, size, hop, delay)
    rows: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for (ws, k), vs in wins.items():
        known = [v for v in vs if v is not None]
        lo, hi = (min(known), max(known)) if known else (None, None)
        rows[ws].append((k, ws, ws + size, len(vs), sum(known), len(known), lo, hi))
    out: set[tuple[Any, ...]] = set()
    for group in rows.values():
        if top is None:
            out.update(group)
            continue
        at = COLUMNS.index(top)
        known = [r[at] for r in group if r[at] is not None]  # nulls never win
        if known:
            out.update(r for r in group if r[at] == max(known))
    return out, late


def _frames(batches: list[list[Record]]) -> list[pl.DataFrame]:
    schema = {"k": pl.Int64, "t": pl.Int64, "v": pl.Int32}
    return [
        pl.DataFrame(
            {"k": [r[0] for r in b], "t": [T0 + r[1] for r in b], "v": [r[2] for r in b]},
            schema=schema,
        )
        for b in batches
        if b
    ]


def _flow(
    items: list[Any], window: Any, delay: int, top: str | None, out: CollectSink, late: CollectSink
) -> tf.Dataflow:
    flow = tf.Dataflow("small")
    w = (
        flow.source(TestingSource(items, batch_size=1), name="src")
        .event_time("t", unit="us", delay=timedelta(microseconds=delay), idle=None)
        .key_by("k")
        .window(window)
        .agg(
            pl.len().alias("n"),
            pl.col("v").sum().alias("s"),
            pl.col("v").count().alias("c"),
            pl.col("v").min().alias("lo"),
            pl.col("v").max().alias("hi"),
            max_per_window=top,
            name="win",
        )
    )
    w.results.sink(out, name="out")
    w.late.sink(late, name="late")
    return flow


def _got(*sinks: CollectSink) -> set[tuple[Any, ...]]:
    """Distinct result rows; a key's result in a window written twice (before a crash and
    after the resume) must be the same both times."""
    seen: dict[tuple[int, int], tuple[Any, ...]] = {}
    for sink in sinks:
        frame = sink.frame()
        if not frame.height:
            continue
        assert frame.columns == COLUMNS
        assert frame.schema == SCHEMA
        for r in frame.with_columns(_us("window_start"), _us("window_end")).rows():
            assert seen.setdefault((r[1], r[0]), r) == r, f"key {r[0]} in window {r[1]} differs"
    return set(seen.values())


def run(
    batches: list[list[Record]], window: Any, delay: int, top: str | None, workers: int = 1
) -> Any:
    out, late = CollectSink(), CollectSink()
    tf.run(_flow(_frames(batches), window, delay, top, out, late), workers=workers, batch_size=1)
    return _got(out), _late(late)


record = st.tuples(st.integers(0, 5), st.integers(0, 100), st.none() | st.integers(-(2**20), 2**20))
# Up to 3 rows is "small" below: batches of 1-8 rows mix both paths within windows.
batches_st = st.lists(st.lists(record, min_size=1, max_size=8), min_size=1, max_size=10)
shapes = st.sampled_from([(10, 10), (20, 5), (30, 10), (25, 10)])
tops = st.sampled_from([None, "n", "s", "hi"])


@settings(max_examples=120, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 30),
    shape=shapes,
    top=tops,
    nulls=st.booleans(),
    small=st.sampled_from([0, 2, 3, 512]),
)
def test_small_and_large_batches_equal_reference(
    batches: list[list[Record]],
    delay: int,
    shape: tuple[int, int],
    top: str | None,
    nulls: bool,
    small: int,
) -> None:
    if not nulls:
        batches = [[(k, t, 0 if v is None else v) for k, t, v in b] for b in batches]
    size, hop = shape
    want, want_late = reference(batches, size, hop, delay, top)
    # The threshold of both small paths lowered, so that hypothesis' short batches take
    # either; 0 turns them off (the columnar path alone).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_windowing, "SMALL_AGG_ROWS", small)
        assert run(batches, _window(size, hop), delay, top) == (want, want_late)


def _many(n: int, seed: int, late: bool) -> list[list[Record]]:
    """In time order: mostly batches of a few rows over a few keys, every tenth one large
    over many keys (its partials exceed the small paths' threshold), and, with ``late``, a
    late record now and then; a null value now and then."""
    rnd = random.Random(seed)
    batches, t = [], 0
    for i in range(n):
        large = i % 10 == 5
        batch: list[Record] = []
        for _ in range(rnd.randrange(600, 900) if large else rnd.randrange(1, 6)):
            t += rnd.randrange(0, 3) if not large or rnd.random() < 0.01 else 0
            back = late and rnd.random() < 0.03
            k = rnd.randrange(2000) if large else rnd.randrange(12)
            v = None if rnd.random() < 0.01 else rnd.randrange(-50, 50)
            batch.append((k, max(0, t - 40) if back else t, v))
        batches.append(batch)
    return batches


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("shape", [(20, 4), (16, 16)])
def test_mixed_batch_sizes_equal_reference(workers: int, shape: tuple[int, int]) -> None:
    batches = _many(160, seed=workers, late=workers == 1)  # with 2 workers: in time order
    size, hop = shape
    for top in (None, "n"):
        want, want_late = reference(batches, size, hop, 0, top)
        assert len({r[1] for r in want}) > 20
        assert run(batches, _window(size, hop), 0, top, workers=workers) == (want, want_late)


def test_small_batches_take_the_accumulators(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small paths do run here (so the tests above test them): the combiner's NumPy
    partials and every window fired from its accumulator alone."""
    calls = {"partials": 0, "acc": 0, "columnar": 0}
    partials, fire = _smallagg.SmallPartials.partials, _windowing.AlignedWindowOperator._fire
    finals = _smallagg.WindowAccumulator.finals

    def counted(name: str, fn: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            calls[name] += 1
            return fn(*args)

        return wrapper

    monkeypatch.setattr(_smallagg.SmallPartials, "partials", counted("partials", partials))
    monkeypatch.setattr(_smallagg.WindowAccumulator, "finals", counted("acc", finals))
    monkeypatch.setattr(_windowing.AlignedWindowOperator, "_fire", counted("columnar", fire))
    batches = [[(i % 3, i, i)] for i in range(60)]
    want, _ = reference(batches, 20, 4, 0, "n")
    assert run(batches, _window(20, 4), 0, "n") == (want, [])
    assert calls["partials"] == 60 and calls["acc"] > 10 and calls["columnar"] == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_small_batches_resume_like_an_uninterrupted_run(workers: int, tmp_path: Path) -> None:
    batches = [b for b in _many(300, seed=11, late=False) if len(b) < 10]  # small ones only
    want, _ = reference(batches, 20, 4, 0, None)
    window = _window(20, 4)
    crashed, resumed = crash_and_resume(
        _frames(batches),
        lambda items, out: _flow(items, window, 0, None, out, CollectSink()),
        workers,
        tmp_path / "ck",
    )
    windows_after = {r[1] for r in _got(resumed)}
    assert 0 < len(windows_after) < len({r[1] for r in want})  # it resumed mid-stream
    assert _got(crashed, resumed) == want
