import math
from collections import defaultdict

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow.api._aggs import parse_aggs
from tideflow.runtime._keyed import AggState
from tideflow.testing import CollectSink, TestingSource

AGGS = (
    pl.len().alias("n"),
    pl.col("v").count().alias("nn"),
    pl.col("v").sum().alias("total"),
    pl.col("v").min().alias("lo"),
    pl.col("v").max().alias("hi"),
    pl.col("v").mean().alias("avg"),
    pl.col("v").n_unique().alias("distinct"),
    pl.col("v").top_k(3).alias("top"),
)


def reference(rows):
    """Plain-Python aggregation per key."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["k"]].append(r["v"])
    out = {}
    for k, vs in groups.items():
        vals = [v for v in vs if v is not None]
        out[k] = {
            "n": len(vs),
            "nn": len(vals),
            "total": sum(vals),
            "lo": min(vals) if vals else None,
            "hi": max(vals) if vals else None,
            "avg": sum(vals) / len(vals) if vals else None,
            "distinct": len(set(vs)),
            "top": sorted(vals, reverse=True)[:3],
        }
    return out


def as_dict(frame):
    return {r["k"]: {c: r[c] for c in frame.columns if c != "k"} for r in frame.to_dicts()}


def assert_same(got, want):
    assert set(got) == set(want)
    for k in want:
        for c, v in want[k].items():
            if c == "avg" and v is not None:
                assert math.isclose(got[k][c], v, rel_tol=1e-9), (k, c)
            else:
                assert got[k][c] == v, (k, c, got[k][c], v)


rows_st = st.lists(
    st.fixed_dictionaries(
        {"k": st.sampled_from(["a", "b", "c", "d", "e"]), "v": st.none() | st.integers(-1000, 1000)}
    ),
    max_size=200,
)


def batches_of(rows, sizes):
    out, i = [], 0
    for s in sizes:
        if i >= len(rows):
            break
        out.append(rows[i : i + s])
        i += s
    if i < len(rows):
        out.append(rows[i:])
    return [pl.DataFrame(b, schema={"k": pl.String, "v": pl.Int64}) for b in out if b]


@settings(max_examples=150, deadline=None)
@given(rows=rows_st, sizes=st.lists(st.integers(1, 50), max_size=20), workers=st.integers(1, 4))
def test_incremental_aggregation_equals_reference(rows, sizes, workers):
    """Batches split at random and keys hash-partitioned over N workers give the reference."""
    specs = tuple(parse_aggs(AGGS, "t"))
    states = [AggState(("k",), specs) for _ in range(workers)]
    for batch in batches_of(rows, sizes):
        part = batch.with_columns(w=(pl.col("k").hash(seed=7) % workers)).partition_by(
            "w", as_dict=True, include_key=False
        )
        for (w,), b in part.items():
            states[w].update(b)
    frames = [s.all_values() for s in states if len(s.index)]
    got = as_dict(pl.concat(frames)) if frames else {}
    assert_same(got, reference(rows))


@settings(max_examples=60, deadline=None)
@given(rows=rows_st, cut=st.integers(0, 200))
def test_snapshot_restore_midway_gives_the_same_result(rows, cut):
    specs = tuple(parse_aggs(AGGS, "t"))
    first, second = rows[:cut], rows[cut:]
    a = AggState(("k",), specs)
    for b in batches_of(first, [7] * 40):
        a.update(b)
    b_state = AggState(("k",), specs)
    b_state.restore(a.snapshot())
    for b in batches_of(second, [5] * 50):
        b_state.update(b)
    got = as_dict(b_state.all_values()) if len(b_state.index) else {}
    assert_same(got, reference(rows))


def test_keyed_agg_end_to_end_final_and_updates(workers):
    rows = [{"k": "abcde"[i % 5], "v": i} for i in range(500)]
    flow = tf.Dataflow("agg")
    src = flow.source(TestingSource(rows, batch_size=50))
    final, updates = CollectSink(), CollectSink()
    src.key_by("k").agg(*AGGS, name="final").sink(final)
    src.key_by("k").agg(pl.len().alias("n"), emit="updates", name="updates").sink(updates)
    tf.run(flow, workers=workers, batch_size=50)
    assert_same(as_dict(final.frame()), reference(rows))
    upd = updates.frame()
    # Updates: each key's count grows to its total; the last update per key is the total.
    assert upd.group_by("k").agg(pl.col("n").max()).sort("k")["n"].to_list() == [100] * 5
    assert upd.height > 5


def test_multi_column_keys(workers):
    rows = [{"a": i % 2, "b": "xy"[i % 3 == 0], "v": 1.5} for i in range(60)]
    flow = tf.Dataflow("multi")
    out = CollectSink()
    flow.source(TestingSource(rows, batch_size=7)).key_by("a", "b").agg(
        pl.col("v").sum().alias("s")
    ).sink(out)
    tf.run(flow, workers=workers)
    want = defaultdict(float)
    for r in rows:
        want[(r["a"], r["b"])] += r["v"]
    got = {(r["a"], r["b"]): r["s"] for r in out.rows()}
    assert got == dict(want)


def test_key_by_expression(workers):
    flow = tf.Dataflow("expr")
    out = CollectSink()
    rows = [{"word": w} for w in ["Apple", "apple", "APPLE", "pear"]]
    flow.source(TestingSource(rows)).key_by(pl.col("word").str.to_lowercase().alias("w")).agg(
        pl.len().alias("n")
    ).sink(out)
    tf.run(flow, workers=workers)
    assert sorted(out.frame().select("w", "n").rows()) == [("apple", 3), ("pear", 1)]


def test_stateful_map_keeps_explicit_state(workers):
    rows = [{"card": "c1", "amount": 10}, {"card": "c2", "amount": 5}, {"card": "c1", "amount": 30}]

    def running(state, rec):
        state = {"n": state["n"] + 1, "total": state["total"] + rec["amount"]}
        return state, {"card": rec["card"], "n": state["n"], "total": state["total"]}

    flow = tf.Dataflow("sm")
    out = CollectSink()
    flow.source(TestingSource(rows, batch_size=1)).key_by("card").stateful_map(
        running, init=lambda: {"n": 0, "total": 0}
    ).sink(out)
    tf.run(flow, workers=workers)
    assert sorted(out.frame().rows()) == [("c1", 1, 10), ("c1", 2, 40), ("c2", 1, 5)]


def test_reduce_final(workers):
    rows = [{"k": "a", "v": 1}, {"k": "b", "v": 2}, {"k": "a", "v": 3}]
    flow = tf.Dataflow("red")
    out = CollectSink()
    flow.source(TestingSource(rows, batch_size=1)).key_by("k").reduce(
        lambda acc, r: {"k": r["k"], "v": acc["v"] + r["v"]}, emit="final"
    ).sink(out)
    tf.run(flow, workers=workers)
    assert sorted(out.frame().rows()) == [("a", 4), ("b", 2)]


def test_stateful_map_state_must_be_plain_data():
    from tideflow.api._dataflow import StatefulMapOp  # noqa: F401
    from tideflow.runtime._operators import StatefulMapOperator

    flow = tf.Dataflow("snap")
    s = (
        flow.source(TestingSource([{"k": 1}]))
        .key_by("k")
        .stateful_map(lambda st, r: (object(), None), init=dict)
    )

    class Ctx:
        worker_index, worker_count = 0, 1

        def emit(self, b, port="out"):
            pass

        def dead(self, b):
            pass

    op = StatefulMapOperator(s.node, Ctx())
    op.on_batch(0, pl.DataFrame({"k": [1]}))
    with pytest.raises(tf.StateError, match="not plain data"):
        op.snapshot()


@settings(max_examples=100, deadline=None)
@given(rows=rows_st, sizes=st.lists(st.integers(1, 50), max_size=20), workers=st.integers(1, 4))
def test_combiner_partials_merged_across_workers_equal_reference(rows, sizes, workers):
    """Per-batch partials (the combiner), shuffled by key and merged, give the reference."""
    combinable = tuple(e for e in AGGS if e.meta.output_name() not in ("distinct", "top"))
    specs = tuple(parse_aggs(combinable, "t"))
    states = [AggState(("k",), specs) for _ in range(workers)]
    assert all(s.combinable for s in states)
    for batch in batches_of(rows, sizes):
        partial = batch.group_by("k").agg(states[0].partial_exprs())
        part = partial.with_columns(w=(pl.col("k").hash(seed=7) % workers)).partition_by(
            "w", as_dict=True, include_key=False
        )
        for (w,), b in part.items():
            states[w].merge(b)
    frames = [s.all_values() for s in states if len(s.index)]
    got = as_dict(pl.concat(frames)) if frames else {}
    want = {
        k: {c: v for c, v in d.items() if c not in ("distinct", "top")}
        for k, d in reference(rows).items()
    }
    assert_same(got, want)
