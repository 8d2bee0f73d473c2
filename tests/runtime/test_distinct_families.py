"""Keyed ``n_unique`` by rows: columns that are null or equal to another share its set.

``pl.when(cond).then(col).n_unique()`` (distinct values of a subset of the rows) next to
``pl.col(col).n_unique()``: an aggregation that emits at the end keeps one set of (key, value,
flags) for the family, and its counts are taken from it. Checked against brute force over
batches, workers, snapshots, rescaling, and members that stop following their base.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.recovery._abort import abort_and_resume

import tideflow as tf
from tideflow.api._aggs import parse_aggs
from tideflow.runtime import _distinct
from tideflow.runtime._keyed import AggState
from tideflow.state import CheckpointStore
from tideflow.state._resume import _rescale
from tideflow.testing import CollectSink, TestingSource

VALUES = {
    "small": (st.integers(-5, 5), pl.Int64),
    "huge": (st.integers(-(2**63), 2**63 - 1), pl.Int64),
    "spread": (st.sampled_from([-(2**62), -1, 0, 7, 2**40, 2**62]), pl.Int64),
    "text": (st.text(alphabet="ab", max_size=2), pl.String),
}
#: n_unique of the base ``v``, of three subsets of its rows (``m1``-``m3``), of a column that
#: follows ``v`` in the first rows only (``odd``), and of an unrelated one (``w``).
NAMES = ["nv", "n1", "n2", "n3", "nodd", "nw", "n"]
AGGS = (
    pl.col("v").n_unique().alias("nv"),
    pl.col("m1").n_unique().alias("n1"),
    pl.col("m2").n_unique().alias("n2"),
    pl.col("m3").n_unique().alias("n3"),
    pl.col("odd").n_unique().alias("nodd"),
    pl.col("w").n_unique().alias("nw"),
    pl.len().alias("n"),
)


@st.composite
def table(draw: st.DrawFn) -> pl.DataFrame:
    """Rows of key ``k``, base ``v`` and its subsets; ``odd`` breaks away after ``brk``."""
    kind = draw(st.sampled_from(sorted(VALUES)))
    value, dtype = VALUES[kind]
    many = draw(st.booleans())
    n = draw(st.integers(0, 120))
    keys = draw(st.lists(st.integers(0, 300 if many else 2), min_size=n, max_size=n))
    vals = draw(st.lists(st.none() | value, min_size=n, max_size=n))
    masks = draw(st.lists(st.integers(0, 15), min_size=n, max_size=n))
    brk = draw(st.integers(0, n))
    others = draw(st.lists(st.none() | value, min_size=n, max_size=n))
    rows = {
        "k": keys,
        "v": vals,
        "m1": [v if m & 1 else None for v, m in zip(vals, masks, strict=True)],
        "m2": [v if m & 2 else None for v, m in zip(vals, masks, strict=True)],
        "m3": [v if (m & 3) == 0 else None for v, m in zip(vals, masks, strict=True)],
        "odd": [
            (v if m & 8 else None) if i < brk else o
            for i, (v, m, o) in enumerate(zip(vals, masks, others, strict=True))
        ],
        "w": others,
    }
    schema = {"k": pl.Int64, **dict.fromkeys(["v", "m1", "m2", "m3", "odd", "w"], dtype)}
    return pl.DataFrame(rows, schema=schema)


def reference(frame: pl.DataFrame) -> dict[Any, tuple[int, ...]]:
    """Distinct values (null counted once) per key, by brute force."""
    sets: dict[Any, list[set[Any]]] = defaultdict(lambda: [set() for _ in range(6)])
    lens: dict[Any, int] = defaultdict(int)
    for row in frame.iter_rows():
        k, vals = row[0], row[1:]
        for s, v in zip(sets[k], vals, strict=True):
            s.add(v)
        lens[k] += 1
    return {k: (*(len(s) for s in ss), lens[k]) for k, ss in sets.items()}


def as_dict(frame: pl.DataFrame) -> dict[Any, tuple[int, ...]]:
    return {r[0]: tuple(r[1:]) for r in frame.select("k", *NAMES).rows()}


def _through_store(state: AggState, specs: tuple[Any, ...], deferred: bool) -> AggState:
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d)
        store.write(1, [{"t.stats": state.snapshot()}])
        cp = store.latest()
        assert cp is not None
        again = AggState(("k",), specs, deferred=deferred)
        again.restore(cp.parts[0]["t.stats"])
    return again


@settings(max_examples=150, deadline=None)
@given(
    frame=table(),
    size=st.integers(1, 40),
    workers=st.integers(1, 3),
    cut=st.integers(0, 120),
    pending=st.sampled_from([0, 7, 1 << 20]),
    deferred=st.booleans(),
)
def test_families_count_like_brute_force_over_workers_and_restores(
    frame: pl.DataFrame, size: int, workers: int, cut: int, pending: int, deferred: bool
) -> None:
    """Batches over workers, every state snapshot through a store and restored at ``cut``."""
    specs = tuple(parse_aggs(AGGS, "t"))
    states = [AggState(("k",), specs, deferred=deferred) for _ in range(workers)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_distinct, "PENDING_MIN", pending)
        restored = False
        for start in range(0, frame.height, size):
            if start >= cut and not restored:
                states = [_through_store(s, specs, deferred) for s in states]
                restored = True
            batch = frame[start : start + size]
            part = batch.with_columns(__w=pl.col("k").hash(seed=7) % workers)
            for (w,), b in part.partition_by("__w", as_dict=True, include_key=False).items():
                keys, ids = states[w].update(b)
                assert keys.height == len(ids) == len(set(ids.tolist()))
        if deferred and frame.height and cut > 0:  # m1-m3 joined v's set on the first batch
            first = next(s for s in states if len(s.index))
            assert first._flag_bits.get("nv", 0) >= 3
        frames = [s.all_values() for s in states if len(s.index)]
    got = as_dict(pl.concat(frames)) if frames else {}
    assert got == reference(frame)


@settings(max_examples=60, deadline=None)
@given(frame=table(), before=st.integers(1, 3), after=st.integers(1, 3), v4=st.booleans())
def test_family_snapshots_rescale_and_version_4_restores(
    frame: pl.DataFrame, before: int, after: int, v4: bool
) -> None:
    """Half the rows over ``before`` workers, split by key hash over ``after``, the rest on.

    With ``v4`` the snapshots are rewritten in the previous layout (one entry per
    ``n_unique``, no families: states that emit per batch keep one set each).
    """
    specs = tuple(parse_aggs(AGGS, "t"))
    half = frame.height // 2
    old = [AggState(("k",), specs, deferred=not v4) for _ in range(before)]
    part = frame[:half].with_columns(__w=pl.col("k").hash(seed=7) % before)
    for (w,), b in part.partition_by("__w", as_dict=True, include_key=False).items():
        old[w].update(b)
    snaps = [s.snapshot() for s in old]
    if v4:
        for snap in snaps:
            assert all(e["flag_bits"] == 0 for e in snap["pairs"].values())
            snap["version"] = 4
            snap["pairs"] = {
                name: {k: v for k, v in e.items() if k not in ("members", "flag_bits")}
                for name, e in snap["pairs"].items()
            }
    new = []
    for w in range(after):
        state = AggState(("k",), specs, deferred=True)
        state.restore(_rescale("t.stats", "agg", ["k"], snaps, w, after))
        new.append(state)
    if v4 and before == after == 1:  # the snapshot as it is, without rescaling
        new[0].restore(snaps[0])
    part = frame[half:].with_columns(__w=pl.col("k").hash(seed=7) % after)
    for (w,), b in part.partition_by("__w", as_dict=True, include_key=False).items():
        new[w].update(b)
    frames = [s.all_values() for s in new if len(s.index)]
    got = pl.concat(frames) if frames else pl.DataFrame()
    if got.height:
        assert got.select("k").is_duplicated().sum() == 0
    assert (as_dict(got) if got.height else {}) == reference(frame)


def test_key_expiry_keeps_the_families_of_the_kept_keys() -> None:
    """``compact`` (a ttl sweep) with flags in the key ids: the kept keys' counts stay."""
    rng = np.random.default_rng(11)
    rows = _rows(rng, 3000)
    specs = tuple(parse_aggs(AGGS, "t"))
    state = AggState(("k",), specs, deferred=True)
    state.update(rows[:2000])
    assert state._flag_bits["nv"] >= 3
    keep = np.ones(len(state.index), dtype=np.bool_)
    keep[::3] = False
    dropped = set(state.index.frame().get_column("k").to_numpy()[~keep].tolist())
    state.compact(keep)
    state.update(rows[2000:])
    rest = rows[:2000].filter(~pl.col("k").is_in(sorted(dropped)))
    assert as_dict(state.all_values()) == reference(pl.concat([rest, rows[2000:]]))


def _rows(rng: np.random.Generator, n: int) -> pl.DataFrame:
    v = rng.integers(0, 400, n)
    price = rng.integers(0, 100, n)
    frame = pl.DataFrame({"k": rng.integers(0, 40, n), "v": v, "w": rng.integers(0, 30, n)})
    return frame.with_columns(
        m1=pl.when(pl.Series(price < 30)).then(pl.col("v")),
        m2=pl.when(pl.Series((price >= 30) & (price < 80))).then(pl.col("v")),
        m3=pl.when(pl.Series(price >= 80)).then(pl.col("v")),
        odd=pl.when(pl.Series(price % 2 == 0)).then(pl.col("v")),
    ).select("k", "v", "m1", "m2", "m3", "odd", "w")


def _flow(items: list[Any], out: CollectSink) -> tf.Dataflow:
    flow = tf.Dataflow("families")
    schema = {"k": pl.Int64, **dict.fromkeys(["v", "m1", "m2", "m3", "odd", "w"], pl.Int64)}
    src = flow.source(TestingSource(items, batch_size=50, schema=schema), name="src")
    src.key_by("k").agg(*AGGS, name="stats").sink(out)
    return flow


def test_family_dataflow_matches_reference(workers: int) -> None:
    rows = _rows(np.random.default_rng(2), 3000)
    out = CollectSink()
    tf.run(_flow(rows.to_dicts(), out), workers=workers, batch_size=50)
    assert as_dict(out.frame()) == reference(rows)


def test_families_recover_after_abort(workers: int, tmp_path: Path) -> None:
    """Abort mid-stream, resume from the checkpoint: the result of the uninterrupted run."""
    rows = _rows(np.random.default_rng(4), 4000)
    plain, cp, resumed = abort_and_resume(_flow, rows.to_dicts(), 2200, workers, tmp_path / "ck")
    snaps = [p["families.stats"] for p in cp.parts]
    assert all(s["version"] == 5 for s in snaps)
    assert any(e["flag_bits"] >= 3 for s in snaps for e in s["pairs"].values())
    assert as_dict(resumed.frame()) == as_dict(plain.frame()) == reference(rows)
