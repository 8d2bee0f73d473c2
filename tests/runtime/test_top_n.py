"""Keyed top-N against a brute-force reference: stable sorts of each key's records so far."""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow._errors import ConfigError, StateError
from tideflow.runtime._operators import TopNOperator
from tideflow.state import CheckpointStore, load_savepoint, write_savepoint
from tideflow.state._resume import resume_for
from tideflow.testing import CollectSink, TestingSource

SCHEMA = {"k": pl.String(), "a": pl.Int64(), "b": pl.Int64(), "id": pl.Int64()}

record = st.tuples(st.sampled_from(["x", "y", "z"]), st.integers(0, 4), st.integers(0, 2))
batches_st = st.lists(st.lists(record, min_size=1, max_size=6), min_size=1, max_size=6)
orders = st.sampled_from([(False, False), (True, False), (True, True), (False, True)])


def numbered(batches: list[list[tuple[str, int, int]]]) -> list[list[dict[str, Any]]]:
    out, i = [], 0
    for batch in batches:
        recs = []
        for k, a, b in batch:
            recs.append({"k": k, "a": a, "b": b, "id": i})
            i += 1
        out.append(recs)
    return out


def order_key(desc: tuple[bool, bool]) -> Any:
    def key(r: dict[str, Any]) -> tuple[int, int]:
        return (-r["a"] if desc[0] else r["a"], -r["b"] if desc[1] else r["b"])

    return key


def ref_top(recs: list[dict[str, Any]], n: int, desc: tuple[bool, bool]) -> list[tuple[Any, ...]]:
    ranked = sorted(recs, key=order_key(desc))[:n]  # stable: ties keep arrival order
    return [(r["k"], r["a"], r["b"], r["id"], i + 1) for i, r in enumerate(ranked)]


def reference(batches, n, desc, emit):
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    updates = []
    for batch in batches:
        for r in batch:
            seen[r["k"]].append(r)
        for k in sorted({r["k"] for r in batch}):
            updates.append(ref_top(seen[k], n, desc))
    if emit == "updates":
        return sorted(row for u in updates for row in u)
    return sorted(row for k in seen for row in ref_top(seen[k], n, desc))


def run_top(batches, n, desc, emit, workers=1):
    flow = tf.Dataflow("top")
    items = [pl.DataFrame(b, schema=SCHEMA) for b in batches]
    out = CollectSink()
    flow.source(TestingSource(items, batch_size=1, schema=SCHEMA)).key_by("k").top_n(
        n, by=["a", "b"], descending=list(desc), rank="rank", emit=emit
    ).sink(out)
    tf.run(flow, workers=workers, batch_size=1)
    frame = out.frame()
    if frame.height == 0:
        return []
    assert frame.columns == ["k", "a", "b", "id", "rank"]
    return sorted(frame.rows())


@settings(max_examples=60, deadline=None)
@given(
    batches=batches_st,
    n=st.integers(1, 3),
    desc=orders,
    emit=st.sampled_from(["updates", "final"]),
)
def test_top_n_equals_reference(batches, n, desc, emit):
    recs = numbered(batches)
    assert run_top(recs, n, desc, emit) == reference(recs, n, desc, emit)


@pytest.mark.parametrize("emit", ["updates", "final"])
def test_top_n_with_two_workers(emit):
    import random

    rnd = random.Random(3)
    # No ties (b is unique): with two workers, arrival order at the step is not source order.
    batches = [
        [(rnd.choice("abcdefg"), rnd.randrange(9), 7 * i + j) for j in range(7)] for i in range(15)
    ]
    recs = numbered(batches)
    got = run_top(recs, 2, (True, False), emit, workers=2)
    if emit == "updates":  # batches may be cut differently: compare the last update per key
        assert set(reference(recs, 2, (True, False), "final")) <= set(got)
    else:
        assert got == reference(recs, 2, (True, False), "final")


def test_top_n_folds_appended_rows_and_stays_bounded():
    TopNOperator.FOLD_ROWS, saved = 8, TopNOperator.FOLD_ROWS
    try:
        recs = numbered([[("x", i % 5, 0), ("y", i % 3, 1)] for i in range(40)])
        assert run_top(recs, 2, (True, True), "final") == reference(recs, 2, (True, True), "final")
    finally:
        TopNOperator.FOLD_ROWS = saved


class _Ctx:
    worker_index, worker_count = 0, 1

    def __init__(self) -> None:
        self.out: list[pl.DataFrame] = []

    def emit(self, batch: pl.DataFrame, port: str = "out") -> None:
        self.out.append(batch)


@pytest.mark.parametrize("fold", [4, 1000])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_top_n_state_survives_a_checkpoint_on_another_worker_count(m, fold, monkeypatch):
    # Through a savepoint (its own copies of the chunks), with the checkpoints deleted; with
    # fold=4 the state is a folded chunk and pending chunks, with 1000 pending chunks only.
    monkeypatch.setattr(TopNOperator, "FOLD_ROWS", fold)
    flow = tf.Dataflow("top_cp")
    src = flow.source(TestingSource([], schema=SCHEMA))
    node = src.key_by("k").top_n(1, by="a", descending=True, emit="final").node
    recs = numbered([[(k, a, 0) for k in "abcde" for a in (3, 1, 4)]])[0]
    before, after = pl.DataFrame(recs[:8], schema=SCHEMA), pl.DataFrame(recs[8:], schema=SCHEMA)
    op = TopNOperator(node, _Ctx(), "final")  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(Path(d) / "ck")
        for i in range(0, 8, 3):
            op.on_batch(0, before[i : i + 3])
            chk = store.write(i + 1, [{node.step_id: op.snapshot()}], {"flow": "t"})
        sp = write_savepoint(chk, Path(d) / "sp")
        shutil.rmtree(store.path)
        cp, _ = load_savepoint(sp)
    got = []
    for w in range(m):
        new = TopNOperator(node, _Ctx(), "final")  # type: ignore[arg-type]
        new.restore(resume_for(cp, [node], w, m)[node.step_id])
        h = pl.col("k").hash(seed=7) % m
        new.on_batch(0, after.filter(h == w) if m > 1 else after)
        new.on_end()
        got += [r for f in new.ctx.out for r in f.rows()]  # type: ignore[attr-defined]
    want = reference([recs], 1, (True, False), "final")
    assert sorted((k, a, b, i, 1) for k, a, b, i in got) == want
    with pytest.raises(StateError, match="top_n"):
        new.restore({"version": 9})


def test_top_n_checks_its_settings():
    flow = tf.Dataflow("bad")
    keyed = flow.source(TestingSource([], schema=SCHEMA)).key_by("k")
    with pytest.raises(ConfigError, match="n >= 1"):
        keyed.top_n(0, by="a")
    with pytest.raises(ConfigError, match="no column"):
        keyed.top_n(1, by="nope")
    with pytest.raises(ConfigError, match="descending flag"):
        keyed.top_n(1, by=["a", "b"], descending=[True])
    with pytest.raises(ConfigError, match="already a column"):
        keyed.top_n(1, by="a", rank="b")
