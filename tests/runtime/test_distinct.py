"""Keyed ``n_unique``: the columnar distinct state against brute-force references."""

from __future__ import annotations

import io
import json
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
from tideflow._errors import StateError
from tideflow.api._aggs import parse_aggs
from tideflow.runtime import _distinct, _keyed
from tideflow.runtime._distinct import DistinctPairs
from tideflow.runtime._keyed import AggState
from tideflow.state import CheckpointStore, SnapshotChunk
from tideflow.testing import CollectSink, TestingSource

# Values of each kind; "wide" integers span the whole int64 range (the dictionary path).
VALUES = {
    "small": st.integers(-50, 50),
    "wide": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(allow_nan=False, width=64).map(lambda f: f + 0.0),
    "text": st.text(alphabet="abc", max_size=3),
    "flag": st.booleans(),
}
DTYPES = {
    "small": pl.Int64,
    "wide": pl.Int64,
    "float": pl.Float64,
    "text": pl.String,
    "flag": pl.Boolean,
}


@st.composite
def pair_batches(draw: st.DrawFn) -> tuple[str, list[list[tuple[int, Any]]]]:
    kind = draw(st.sampled_from(sorted(VALUES)))
    value = st.none() | VALUES[kind]
    pair = st.tuples(st.integers(0, 30), value)
    return kind, draw(st.lists(st.lists(pair, max_size=40), max_size=12))


@settings(max_examples=200, deadline=None)
@given(case=pair_batches())
def test_distinct_pairs_report_exactly_the_new_pairs(
    case: tuple[str, list[list[tuple[int, Any]]]],
) -> None:
    kind, batches = case
    state, seen = DistinctPairs(), set()
    for batch in batches:
        ids = np.array([k for k, _ in batch], dtype=np.int64)
        values = pl.Series("v", [v for _, v in batch], dtype=DTYPES[kind])
        fresh = state.add(ids, values)
        want = []
        for pair in batch:
            if pair not in seen:
                seen.add(pair)
                want.append(pair[0])
        assert sorted(fresh.tolist()) == sorted(want)
    _check_frames(state, seen)


@settings(max_examples=200, deadline=None)
@given(case=pair_batches(), bound=st.integers(0, 60), restore_at=st.integers(0, 12))
def test_deferred_pairs_report_each_new_pair_once(
    case: tuple[str, list[list[tuple[int, Any]]]], bound: int, restore_at: int
) -> None:
    """Deferred: the key ids returned by ``add`` and ``settle`` count every pair once.

    ``bound`` (the pending codes' limit) makes some batches settle all pending codes inside
    ``add``; the encoding may widen or switch to the dictionary while codes are pending. At
    ``restore_at`` the settled state is written as a frame and loaded into a new set.
    """
    kind, batches = case
    state, seen = DistinctPairs(deferred=True), set()
    counted: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_distinct, "PENDING_MIN", bound)
        for n, batch in enumerate(batches):
            if n == restore_at:
                counted += state.settle().tolist()
                again = DistinctPairs(deferred=True)
                again.load(state.frame())
                state = again
            ids = np.array([k for k, _ in batch], dtype=np.int64)
            values = pl.Series("v", [v for _, v in batch], dtype=DTYPES[kind])
            counted += state.add(ids, values).tolist()
            seen.update(batch)
        counted += state.settle().tolist()
    assert sorted(counted) == sorted(k for k, _ in seen)
    assert not state.pending and not len(state.settle())
    _check_frames(state, seen)


def _check_frames(state: DistinctPairs, seen: set[tuple[int, Any]]) -> None:
    frame = state.frame()
    assert sorted(frame.iter_rows(), key=repr) == sorted(seen, key=repr)
    again = DistinctPairs()
    again.load(frame)  # a restore from the frame holds the same pairs
    assert sorted(again.frame().iter_rows(), key=repr) == sorted(seen, key=repr)


# -- the aggregation, split over batches and workers ---------------------------------------------
ROW = st.fixed_dictionaries(
    {
        "k": st.sampled_from(["a", "b", "c", None]),
        "j": st.integers(0, 2),
        "i": st.none() | st.integers(-(2**40), 2**40),
        "s": st.none() | st.text(alphabet="xyz", max_size=2),
        "f": st.none() | st.sampled_from([0.5, 1.5, -2.0, 1e300]),
    }
)
SCHEMA = {"k": pl.String, "j": pl.Int64, "i": pl.Int64, "s": pl.String, "f": pl.Float64}
AGGS = (
    pl.col("i").n_unique().alias("ni"),
    pl.col("s").n_unique().alias("ns"),
    pl.col("f").n_unique().alias("nf"),
    pl.len().alias("n"),
)


def reference(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """Distinct values per (k, j), by brute force."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["k"], r["j"])].append(r)
    return {
        key: (
            len({r["i"] for r in rs}),
            len({r["s"] for r in rs}),
            len({r["f"] for r in rs}),
            len(rs),
        )
        for key, rs in groups.items()
    }


def as_dict(frame: pl.DataFrame) -> dict[tuple[Any, ...], tuple[int, ...]]:
    return {(r[0], r[1]): tuple(r[2:]) for r in frame.select("k", "j", *_names()).rows()}


def _names() -> list[str]:
    return ["ni", "ns", "nf", "n"]


def _chunks(rows: list[dict[str, Any]], size: int) -> list[pl.DataFrame]:
    return [
        pl.DataFrame(rows[i : i + size], schema=SCHEMA) for i in range(0, len(rows), max(size, 1))
    ]


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(ROW, max_size=150),
    size=st.integers(1, 40),
    workers=st.integers(1, 3),
    cut=st.integers(0, 150),
    group=st.integers(0, 4),
    deferred=st.sampled_from([None, 0, 5, 40]),
)
def test_n_unique_state_equals_reference_over_workers_and_restores(
    rows: list[dict[str, Any]],
    size: int,
    workers: int,
    cut: int,
    group: int,
    deferred: int | None,
) -> None:
    """Batches hash-partitioned over workers, a snapshot midway restored: same counts.

    With ``group`` 0 each worker folds in raw rows; otherwise each batch is first reduced to
    one row per key (its distinct values as lists: the combiner before the exchange) and the
    partials of ``group`` batches are handed over together (so keys repeat). ``deferred``
    (not None) is the pending bound of deferred pair sets (an aggregation emitting at the end).
    """
    with pytest.MonkeyPatch.context() as mp:
        if deferred is not None:
            mp.setattr(_distinct, "PENDING_MIN", deferred)
        _fold_over_workers(rows, size, workers, cut, group, deferred=deferred is not None)


def _fold_over_workers(
    rows: list[dict[str, Any]], size: int, workers: int, cut: int, group: int, *, deferred: bool
) -> None:
    specs = tuple(parse_aggs(AGGS, "t"))
    states = [AggState(("k", "j"), specs, deferred=deferred) for _ in range(workers)]
    assert states[0].combinable
    batches = _chunks(rows, size)
    if group:
        exprs = states[0].partial_exprs()
        parts = [b.group_by("k", "j").agg(exprs) for b in batches]
        batches = [pl.concat(parts[i : i + group]) for i in range(0, len(parts), group)]
    restored = False
    for n, batch in enumerate(batches):
        if n * size * max(group, 1) >= cut and not restored:
            for w in range(workers):  # snapshot and restore every worker's state midway
                fresh = AggState(("k", "j"), specs, deferred=deferred)
                fresh.restore(states[w].snapshot())
                states[w] = fresh
            restored = True
        part = batch.with_columns(w=pl.struct("k", "j").hash(seed=7) % workers)
        for (w,), b in part.partition_by("w", as_dict=True, include_key=False).items():
            keys, ids = states[w].merge(b) if group else states[w].update(b)
            assert keys.height == len(ids) == len(set(ids.tolist()))  # each key once
    frames = [s.all_values() for s in states if len(s.index)]
    got = as_dict(pl.concat(frames)) if frames else {}
    assert got == reference(rows)


def test_n_unique_dataflow_matches_reference(workers: int) -> None:
    rng = np.random.default_rng(3)
    rows = [
        {
            "k": ["a", "b", "c", None][int(rng.integers(4))],
            "j": int(rng.integers(3)),
            "i": int(rng.integers(-(2**62), 2**62)) if i % 7 else int(rng.integers(100)),
            "s": None if i % 11 == 0 else f"s{int(rng.integers(300))}",
            "f": float(rng.integers(40)) / 4,
        }
        for i in range(3000)
    ]
    flow = tf.Dataflow("distinct")
    out = CollectSink()
    flow.source(TestingSource(rows, batch_size=128, schema=SCHEMA)).key_by("k", "j").agg(
        *AGGS
    ).sink(out)
    tf.run(flow, workers=workers, batch_size=128)
    assert as_dict(out.frame()) == reference(rows)


# -- recovery ---------------------------------------------------------------------------------
def _rows(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    return [
        {
            "k": f"k{int(rng.integers(6))}",
            "j": int(rng.integers(2)),
            "i": int(rng.integers(500)),
            "s": f"v{int(rng.integers(200))}",
            "f": float(rng.integers(60)),
        }
        for _ in range(n)
    ]


def _flow(items: list[Any], out: CollectSink) -> tf.Dataflow:
    flow = tf.Dataflow("distinct_rec")
    src = flow.source(TestingSource(items, batch_size=50, schema=SCHEMA), name="src")
    src.key_by("k", "j").agg(*AGGS, name="stats").sink(out)
    return flow


def test_n_unique_recovers_after_abort(workers: int, tmp_path: Path) -> None:
    """Abort mid-stream, resume: the result of the uninterrupted run."""
    rows = _rows(4000)
    plain, cp, resumed = abort_and_resume(_flow, rows, 2200, workers, tmp_path / "ck")
    snaps = [p["distinct_rec.stats"] for p in cp.parts]
    assert all(s["version"] == 5 for s in snaps)
    # the distinct pairs are in the checkpoint, as chunks of the shared store
    chunks = [c for s in snaps for entry in s["pairs"].values() for c in entry["codes"]]
    assert chunks and all(isinstance(c, SnapshotChunk) for c in chunks)
    assert as_dict(resumed.frame()) == as_dict(plain.frame()) == reference(rows)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (2, 3), (1, 2)])
def test_n_unique_state_rescales(before: int, after: int) -> None:
    """Snapshots of N workers' states split by key hash over M workers: same counts."""
    from tideflow.state._resume import _rescale

    rows = _rows(1500)
    specs = tuple(parse_aggs(AGGS, "t"))
    frame = pl.DataFrame(rows, schema=SCHEMA)
    old = [AggState(("k", "j"), specs) for _ in range(before)]
    part = frame[:900].with_columns(w=pl.struct("k", "j").hash(seed=7) % before)
    for (w,), b in part.partition_by("w", as_dict=True, include_key=False).items():
        old[w].update(b)
    with tempfile.TemporaryDirectory() as d:  # through a checkpoint: chunks read back
        store = CheckpointStore(d)
        store.write(1, [{"t.stats": s.snapshot()} for s in old])
        cp = store.latest()
        assert cp is not None
        snaps = [part["t.stats"] for part in cp.parts]
        new = []  # restored while the checkpoint is there (chunks are read from their files)
        for w in range(after):
            state = AggState(("k", "j"), specs)
            state.restore(_rescale("t.stats", "agg", ["k", "j"], snaps, w, after))
            new.append(state)
    part = frame[900:].with_columns(w=pl.struct("k", "j").hash(seed=7) % after)
    for (w,), b in part.partition_by("w", as_dict=True, include_key=False).items():
        new[w].update(b)
    got = pl.concat([s.all_values() for s in new if len(s.index)])
    assert got.select("k", "j").is_duplicated().sum() == 0  # each key on one worker
    assert as_dict(got) == reference(rows)


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _half_state(
    rows: list[dict[str, Any]],
) -> tuple[tuple[Any, ...], pl.DataFrame, pl.DataFrame, AggState, dict[str, Any]]:
    """Specs, both halves of ``rows``, the state of the first half and its snapshot.

    The snapshot has the older layouts' ``table`` (one IPC table) instead of ``rows``.
    """
    specs = tuple(parse_aggs(AGGS, "t"))
    half = len(rows) // 2
    first, rest = pl.DataFrame(rows[:half], schema=SCHEMA), pl.DataFrame(rows[half:], schema=SCHEMA)
    state = AggState(("k", "j"), specs)
    state.update(first)
    snap = state.snapshot()
    table = _keyed.table_of_rows(snap.pop("rows"))
    return specs, first, rest, state, {**snap, "table": _ipc(table)}


def test_version_1_snapshot_with_python_pairs_still_restores() -> None:
    """Snapshots of the earlier set-of-tuples state (version 1) load into the new state."""
    rows = _rows(600)
    specs, first, rest, _state, snap = _half_state(rows)
    # The version-1 layout: pairs as unnamed (key..., value) rows built from Python tuples.
    old_pairs = {}
    for s in specs:
        if s.kind == "n_unique":
            tuples = {tuple(t) for t in first.select("k", "j", s.column).iter_rows()}
            old_pairs[s.name] = _ipc(pl.DataFrame([list(t) for t in tuples], orient="row"))
    restored = AggState(("k", "j"), specs)
    restored.restore({**snap, "version": 1, "pairs": old_pairs})
    restored.update(rest)
    assert as_dict(restored.all_values()) == reference(rows)


def test_unknown_snapshot_version_says_what_to_do() -> None:
    state = AggState(("k",), tuple(parse_aggs(AGGS, "t")))
    with pytest.raises(StateError, match=r"version 9 is not supported.*start without it"):
        state.restore({"version": 9})


# -- incremental snapshots: chunks of the new pairs ------------------------------------------
def _pairs_of(rows: list[dict[str, Any]]) -> dict[str, set[tuple[Any, ...]]]:
    """The distinct (k, j, value) pairs of each n_unique aggregate, by brute force."""
    return {
        name: {(r["k"], r["j"], r[col]) for r in rows}
        for name, col in (("ni", "i"), ("ns", "s"), ("nf", "f"))
    }


def _chunk_rows(state: AggState, entry: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The (k, j, value) rows that a snapshot's chunks of one aggregate hold (repeats kept)."""
    frame = _keyed.decode_pairs(entry).frame()
    if not frame.height:
        return []
    return state._with_keys(frame.rename({"value": "__value"})).rows()


def _named_chunks(store: CheckpointStore) -> set[str]:
    names = set()
    for cid in store.ids():
        manifest = json.loads((store.path / f"chk-{cid:08d}" / "MANIFEST.json").read_bytes())
        for entry in manifest["parts"].values():
            names.update(c["name"] for c in entry.get("chunks", []))
    return names


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(ROW, max_size=200),
    size=st.integers(1, 40),
    marks=st.sets(st.integers(0, 15), max_size=6),
    keep=st.integers(1, 3),
    deferred=st.booleans(),
)
def test_snapshots_write_each_pair_once_and_restore_through_a_store(
    rows: list[dict[str, Any]], size: int, marks: set[int], keep: int, deferred: bool
) -> None:
    """Each snapshot adds chunks of the new pairs and changed keys; resumes refer to the old ones.

    At every mark the state is checkpointed into a store (older checkpoints pruned), read
    back and restored, and the run goes on from the restored state: the chunks together hold
    every pair seen so far exactly once, the table's newest chunk holds the keys changed since
    the previous snapshot, a checkpoint writes at most one new chunk file per aggregate and one
    for the table, the store keeps exactly the chunk files its checkpoints name, and the final
    counts equal the brute-force reference. A ``deferred`` state (emitting at the end) has
    pairs pending at the marks.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_distinct, "PENDING_MIN", 30)
        _snapshot_through_store(rows, size, marks, keep, deferred=deferred)


def _snapshot_through_store(
    rows: list[dict[str, Any]], size: int, marks: set[int], keep: int, *, deferred: bool
) -> None:
    specs = tuple(parse_aggs(AGGS, "t"))
    state = AggState(("k", "j"), specs, deferred=deferred)
    start = 0  # the first row after the previous snapshot
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d, keep=keep)
        for n, batch in enumerate(_chunks(rows, size)):
            state.update(batch)
            if n not in marks:
                continue
            snap = state.snapshot()
            assert snap["version"] == 5
            seen = _pairs_of(rows[: (n + 1) * size])
            for name, entry in snap["pairs"].items():
                held = _chunk_rows(state, entry)
                assert len(held) == len(seen[name])  # no pair written twice
                assert set(held) == seen[name]
            # the table: a chunk of the keys changed since the previous snapshot (all keys
            # at the first), and the last row of each key is its state
            newest = pl.read_ipc(io.BytesIO(snap["rows"][-1].read()))
            since = rows[start : (n + 1) * size]
            assert set(newest.select("k", "j").rows()) == {(r["k"], r["j"]) for r in since}
            whole = state._table_rows(np.arange(len(state.index))).drop("__id")
            assert _keyed.table_of_rows(snap["rows"]).equals(whole)
            start = (n + 1) * size
            before = set(_named_chunks(store))
            store.write(n + 1, [{"t.stats": snap}])
            # per aggregate a chunk of codes and one of dictionary values, and the table's
            assert len(_named_chunks(store) - before) <= 2 * len(snap["pairs"]) + 1
            assert {f.name for f in store.shared.iterdir()} == _named_chunks(store)
            cp = store.latest()
            assert cp is not None
            state = AggState(("k", "j"), specs, deferred=deferred)
            state.restore(cp.parts[0]["t.stats"])
    got = state.all_values()
    assert (as_dict(got) if got.height else {}) == reference(rows)


def test_many_snapshots_fold_their_newest_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the chunk limit the newest chunks become one; the pairs stay exactly once."""
    monkeypatch.setattr(_keyed, "_MAX_CHUNKS", 4)
    monkeypatch.setattr(_keyed, "_MERGE_CHUNKS", 2)
    rows = _rows(1200)
    specs = tuple(parse_aggs(AGGS, "t"))
    state = AggState(("k", "j"), specs)
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d, keep=2)
        for n, batch in enumerate(_chunks(rows, 60)):
            state.update(batch)
            snap = state.snapshot()
            seen = _pairs_of(rows[: (n + 1) * 60])
            assert len(snap["rows"]) <= 4
            for name, entry in snap["pairs"].items():
                assert len(entry["codes"]) <= 4 and len(entry["values"]) <= 4
                held = _chunk_rows(state, entry)
                assert len(held) == len(seen[name]) and set(held) == seen[name]
            store.write(n + 1, [{"t.stats": snap}])
            assert {f.name for f in store.shared.iterdir()} == _named_chunks(store)
        cp = store.latest()
        assert cp is not None
        restored = AggState(("k", "j"), specs)
        restored.restore(cp.parts[0]["t.stats"])
    assert as_dict(restored.all_values()) == reference(rows)


def test_version_2_snapshot_still_restores() -> None:
    """The previous layout (pairs as one table with their key columns) loads and goes on."""
    rows = _rows(600)
    specs, _first, rest, state, snap = _half_state(rows)
    v2 = {
        **snap,
        "version": 2,
        "pairs": {name: _ipc(state._pair_frame(d)) for name, d in state._distinct.items()},
    }
    restored = AggState(("k", "j"), specs)
    restored.restore(v2)
    restored.update(rest)
    assert as_dict(restored.all_values()) == reference(rows)
    again = restored.snapshot()  # the first snapshot after it writes every pair, once
    seen = _pairs_of(rows)
    for name, entry in again["pairs"].items():
        held = _chunk_rows(restored, entry)
        assert len(held) == len(seen[name]) and set(held) == seen[name]


def test_damaged_pair_chunks_are_refused() -> None:
    specs = tuple(parse_aggs(AGGS, "t"))
    state = AggState(("k", "j"), specs)
    state.update(pl.DataFrame(_rows(50), schema=SCHEMA))
    snap = state.snapshot()
    entry = snap["pairs"]["ni"]
    bad = pl.DataFrame({"__code": [10_000 << entry["bits"]]})
    snap["pairs"]["ni"] = {**entry, "codes": [SnapshotChunk(_ipc(bad))]}
    with pytest.raises(StateError, match=r"'ni' name keys .* start without it"):
        AggState(("k", "j"), specs).restore(snap)
    text = snap["pairs"]["ns"]  # strings: codes of dictionary ids, here without the values
    assert text["dictionary"]
    snap["pairs"] = {**snap["pairs"], "ni": entry, "ns": {**text, "values": []}}
    with pytest.raises(StateError, match=r"dictionary of 0; the checkpoint is damaged"):
        AggState(("k", "j"), specs).restore(snap)


def _version_3(state: AggState, snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` in the layout of version 3: pairs as chunks of (key id, value) rows."""
    pairs = {
        name: [SnapshotChunk(_ipc(d.frame().rename({"value": "__value"})))]
        for name, d in state._distinct.items()
    }
    return {**snap, "version": 3, "pairs": pairs}


def test_version_3_snapshot_restores_and_rescales() -> None:
    """Chunks of (key id, value) rows (version 3) load, go on, and split over workers."""
    from tideflow.state._resume import _rescale

    rows = _rows(900)
    specs = tuple(parse_aggs(AGGS, "t"))
    first, rest = pl.DataFrame(rows[:500], schema=SCHEMA), pl.DataFrame(rows[500:], schema=SCHEMA)
    state = AggState(("k", "j"), specs)
    state.update(first)
    v3 = _version_3(state, state.snapshot())
    restored = AggState(("k", "j"), specs)
    restored.restore(v3)
    restored.update(rest)
    assert as_dict(restored.all_values()) == reference(rows)
    again = restored.snapshot()  # written as version 4, every pair once
    assert again["version"] == 5
    for name, entry in again["pairs"].items():
        held = _chunk_rows(restored, entry)
        assert len(held) == len(_pairs_of(rows)[name]) and set(held) == _pairs_of(rows)[name]
    new = []
    for w in range(2):
        part = AggState(("k", "j"), specs)
        part.restore(_rescale("t.stats", "agg", ["k", "j"], [v3], w, 2))
        new.append(part)
    split = rest.with_columns(w=pl.struct("k", "j").hash(seed=7) % 2)
    for (w,), b in split.partition_by("w", as_dict=True, include_key=False).items():
        new[w].update(b)
    got = pl.concat([s.all_values() for s in new if len(s.index)])
    assert as_dict(got) == reference(rows)


@pytest.mark.parametrize("deferred", [False, True])
def test_int64_extremes_alone_and_with_nulls(deferred: bool) -> None:
    """A first batch of only the lowest int64 (a range starting there), then the highest."""
    state = DistinctPairs(deferred=deferred)
    lo, hi = -(2**63), 2**63 - 1
    got = state.add(np.array([0, 1, 1]), pl.Series([lo, None, lo], dtype=pl.Int64)).tolist()
    got += state.add(np.array([0, 1, 0]), pl.Series([hi, lo, lo], dtype=pl.Int64)).tolist()
    got += state.settle().tolist()
    assert sorted(got) == [0, 0, 1, 1]
    want = {(0, lo), (0, hi), (1, None), (1, lo)}
    assert sorted(state.frame().rows(), key=repr) == sorted(want, key=repr)
