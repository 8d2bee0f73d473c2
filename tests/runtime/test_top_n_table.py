"""``top_n(..., emit="final")`` on its NumPy table against brute force, through every kind of slot.

One integer key column starts with direct addresses (the key values); keys far apart move the
slots to dense ids of the codes, a null key to a key index; a batch whose order column holds a
null (or floats) moves the kept rows to the general store. After any of these, at any batch,
with folds of a few rows (merges, removals, compactions of the wide rows) and a restore from a
snapshot, the emitted rows must be each key's first ``n`` rows by the order columns (ties in
arrival order, nulls last), ranked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.runtime.test_top_n import _Ctx

import tideflow as tf
from tideflow.runtime import _toptable
from tideflow.runtime._operators import TopNOperator
from tideflow.runtime._toptable import TopTable
from tideflow.state import CheckpointStore
from tideflow.state._resume import resume_for
from tideflow.testing import TestingSource

SCHEMA = {"k": pl.Int64(), "a": pl.Int64(), "b": pl.Int64(), "id": pl.Int64()}

small_keys = st.integers(0, 6)
far_keys = st.sampled_from([10**12, 10**12 + 1, 7 * 10**15])
keys_st = st.one_of(small_keys, small_keys, far_keys, st.none())
record = st.tuples(keys_st, st.one_of(st.integers(0, 4), st.none()), st.integers(0, 2))


def _op(n: int, desc: tuple[bool, bool], schema: dict[str, Any] = SCHEMA) -> TopNOperator:
    flow = tf.Dataflow("tbl")
    src = flow.source(TestingSource([], schema=schema))
    node = src.key_by("k").top_n(n, by=["a", "b"], descending=list(desc), rank="r").node
    return TopNOperator(node, _Ctx(), "final")  # type: ignore[arg-type]


def _reference(recs: list[dict[str, Any]], n: int, desc: tuple[bool, bool]) -> list[Any]:
    """Each key's rows sorted stably by (a, b) with nulls last, the first ``n``, ranked."""
    by_key: dict[Any, list[dict[str, Any]]] = {}
    for r in recs:
        by_key.setdefault(r["k"], []).append(r)

    def part(v: Any, d: bool) -> tuple[int, int]:
        return (1, 0) if v is None else (0, -v if d else v)

    out = []
    for rows in by_key.values():
        ranked = sorted(rows, key=lambda r: (part(r["a"], desc[0]), part(r["b"], desc[1])))
        out += [(r["k"], r["a"], r["b"], r["id"], i + 1) for i, r in enumerate(ranked[:n])]
    return sorted(out, key=repr)


def _emitted(op: TopNOperator) -> list[Any]:
    frames = op.ctx.out  # type: ignore[attr-defined]
    if not frames:
        return []
    rows = pl.concat(frames, how="vertical_relaxed").select("k", "a", "b", "id", "r").rows()
    return sorted(rows, key=repr)


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(record, min_size=1, max_size=8), min_size=1, max_size=10),
    n=st.sampled_from([1, 2, 3, 5]),
    desc=st.sampled_from([(True, False), (False, True), (True, True)]),
    fold=st.sampled_from([1, 4, 1000]),
    restore_at=st.integers(-1, 9),
    sparse=st.booleans(),
)
def test_top_n_table_equals_brute_force(
    batches: list[list[tuple[Any, Any, int]]],
    n: int,
    desc: tuple[bool, bool],
    fold: int,
    restore_at: int,
    sparse: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    saved, saved_bytes = TopNOperator.FOLD_ROWS, _toptable.SPARSE_BYTES
    TopNOperator.FOLD_ROWS = fold
    if sparse:  # any table with fewer than a quarter of its entries filled leaves
        _toptable.SPARSE_BYTES = 0
    try:
        op, recs, i = _op(n, desc), [], 0
        store = CheckpointStore(tmp_path_factory.mktemp("tbl"))
        for b, batch in enumerate(batches):
            rows = [{"k": k, "a": a, "b": v, "id": i + j} for j, (k, a, v) in enumerate(batch)]
            i += len(rows)
            recs += rows
            op.on_batch(0, pl.DataFrame(rows, schema=SCHEMA))
            if b == restore_at:
                store.write(b + 1, [{op.node.step_id: op.snapshot()}])
                cp = store.latest()
                assert cp is not None
                op = _op(n, desc)
                op.restore(resume_for(cp, [op.node], 0, 1)[op.node.step_id])
        op.on_end()
        assert _emitted(op) == _reference(recs, n, desc)
    finally:
        TopNOperator.FOLD_ROWS, _toptable.SPARSE_BYTES = saved, saved_bytes


def _batch(keys: list[Any], a: list[Any], start: int) -> pl.DataFrame:
    ids = list(range(start, start + len(keys)))
    return pl.DataFrame({"k": keys, "a": a, "b": [0] * len(keys), "id": ids}, schema=SCHEMA)


def test_the_table_goes_through_every_kind_of_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TopNOperator, "FOLD_ROWS", 1)
    op = _op(2, (True, False))
    steps = [
        ([1, 1, 1, 2, 3], [5, 7, 6, 1, 1], "direct"),  # key 1: 7 and 6 kept
        ([1, 2, 2, 2], [9, 0, 3, 3], "direct"),  # 9 enters key 1; key 2: 3, 3 (first), 1
        ([1, 10**12, 3], [6, 4, 8], "codes"),  # 6 ties key 1's 7? no: 9, 7 stay
        ([None, 1, None], [1, 8, 2], "index"),  # key 1: 9, 8
        ([10**12, None, 2], [5, 3, 4], "index"),
    ]
    recs: list[dict[str, Any]] = []
    for keys, a, kind in steps:
        batch = _batch(keys, a, len(recs))
        recs += batch.rows(named=True)
        op.on_batch(0, batch)
        assert isinstance(op.table, TopTable) and op.table.kind == kind
    assert op.table.rows.size > op.table.rows.height  # displaced rows were removed
    last = _batch([3, 2], [None, 9], len(recs))
    recs += last.rows(named=True)
    op.on_batch(0, last)  # a null order value: the rows move to the general store
    assert op.table is None and op.rows.height
    op.on_end()
    assert _emitted(op) == _reference(recs, 2, (True, False))


def test_a_sparse_table_leaves_for_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TopNOperator, "FOLD_ROWS", 1)
    monkeypatch.setattr(_toptable, "SPARSE_BYTES", 1024)
    op = _op(5, (True, False))
    first = _batch(list(range(0, 300, 3)), [1] * 100, 0)  # one row per key: 1/5 filled
    op.on_batch(0, first)
    assert op.table is not None and op.table.sparse()
    second = _batch([0, 3, 600], [2, 0, 4], 100)
    op.on_batch(0, second)
    assert op.table is None and not op.table_ok
    op.on_end()
    recs = first.rows(named=True) + second.rows(named=True)
    assert _emitted(op) == _reference(recs, 5, (True, False))


@settings(max_examples=50, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.integers(-(2**62), 2**62), max_size=40, unique=True), min_size=1, max_size=30
    )
)
def test_code_ids_number_codes_as_a_dict_does(batches: list[list[int]]) -> None:
    """Dense ids of exact codes (sorted runs merged geometrically) against a dict."""
    ids, want = _toptable._CodeIds(), {}
    for batch in batches:
        for code in batch:
            want.setdefault(code, len(want))
        got = ids.lookup(np.array(batch, dtype=np.int64))
        assert got.tolist() == [want[c] for c in batch]
    assert all(bool((r[1:] > r[:-1]).all()) for r in ids.runs)
