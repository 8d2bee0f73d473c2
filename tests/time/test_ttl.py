"""Time-to-live for keyed state: expiry with a fake clock, fresh starts, bounded key counts.

The columnar states are also checked against a dict reference under random interleavings of
updates and compactions (ids are reused densely after a compaction).
"""

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow._errors import ConfigError
from tideflow.api._aggs import parse_aggs
from tideflow.runtime._keyed import AggState, KeyedTable, KeyIndex
from tideflow.runtime._ttl import TTLAggOperator
from tideflow.testing import CollectSink, FakeClock, TestingSource

# -- the states under compaction -----------------------------------------------------------------
ops_st = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.lists(st.tuples(st.integers(0, 6), st.integers(-5, 5)), min_size=1, max_size=6),
        ),
        st.tuples(st.just("drop"), st.sets(st.integers(0, 6))),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops_st)
def test_agg_state_compaction_equals_a_dict(ops):
    specs = tuple(
        parse_aggs(
            (
                pl.len().alias("n"),
                pl.col("v").sum().alias("s"),
                pl.col("v").max().alias("hi"),
                pl.col("v").n_unique().alias("u"),
                pl.col("v").top_k(2).alias("top"),
            ),
            "t",
        )
    )
    state = AggState(("k",), specs)
    ref: dict[int, list[int]] = {}
    for op, arg in ops:
        if op == "add":
            state.update(pl.DataFrame({"k": [k for k, _ in arg], "v": [v for _, v in arg]}))
            for k, v in arg:
                ref.setdefault(k, []).append(v)
        else:
            n = len(state.index)
            keys = state.index.frame()["k"].to_list() if n else []
            keep = np.array([k not in arg for k in keys], dtype=np.bool_)
            kept = state.compact(keep)
            assert len(kept) == len(state.index) == int(keep.sum())
            for k in arg:
                ref.pop(k, None)
    got = {}
    if len(state.index):
        for r in state.all_values().iter_rows(named=True):
            got[r["k"]] = (r["n"], r["s"], r["hi"], r["u"], r["top"])
    want = {
        k: (len(vs), sum(vs), max(vs), len(set(vs)), sorted(vs, reverse=True)[:2])
        for k, vs in ref.items()
    }
    assert got == want


@settings(max_examples=40, deadline=None)
@given(ops=ops_st)
def test_keyed_table_compaction_equals_a_dict(ops):
    table = KeyedTable(("k",), {"x": pl.Int64()})
    ref: dict[int, int] = {}
    for op, arg in ops:
        if op == "add":
            rows = dict(arg)  # last value per key
            table.put(pl.DataFrame({"k": list(rows), "x": list(rows.values())}))
            ref.update(rows)
        else:
            n = len(table.index)
            keys = table.index.frame()["k"].to_list() if n else []
            table.compact(np.array([k not in arg for k in keys], dtype=np.bool_))
            for k in arg:
                ref.pop(k, None)
    got = table.get(pl.DataFrame({"k": list(range(7))}))
    assert dict(got.rows()) == ref
    assert len(table.index) == len(ref) + (7 - len(ref))  # get() registered the asked keys


def test_key_index_reuses_dense_ids_after_compaction():
    index = KeyIndex(("k",))
    index.lookup(pl.DataFrame({"k": ["a", "b", "c"]}))
    kept = index.compact(np.array([True, False, True]))
    assert kept.tolist() == [0, 2]
    ids, new = index.lookup(pl.DataFrame({"k": ["c", "d", "a"]}))
    assert ids.tolist() == [1, 2, 0] and new == 1
    assert index.frame()["k"].to_list() == ["a", "c", "d"]


# -- operators in a dataflow ---------------------------------------------------------------------
def _run(stream_fn, items, clock):
    flow = tf.Dataflow("ttl")
    out = CollectSink()
    stream_fn(flow.source(TestingSource(items)).key_by("k")).sink(out)
    tf.run(flow, batch_size=1, clock=clock)
    return out.frame()


def test_agg_keys_expire_and_start_fresh():
    clock = FakeClock(1_000.0)
    items = [
        pl.DataFrame({"k": ["a", "b"], "v": [1, 10]}),
        clock.advance_marker(30),
        pl.DataFrame({"k": ["a"], "v": [2]}),  # a touched at 1030
        clock.advance_marker(40),  # b (last 1000) expired at 1070; a (1030) not
        pl.DataFrame({"k": ["a", "b"], "v": [3, 20]}),
    ]
    got = _run(
        lambda ks: ks.agg(pl.col("v").sum().alias("s"), emit="updates", ttl=timedelta(seconds=60)),
        items,
        clock,
    )
    assert sorted(got.rows()) == [("a", 1), ("a", 3), ("a", 6), ("b", 10), ("b", 20)]


def test_stateful_map_and_transform_states_expire():
    clock = FakeClock(0.0)
    items = [
        pl.DataFrame({"k": ["a", "b"], "v": [1, 1]}),
        clock.advance_marker(5),
        pl.DataFrame({"k": ["a"], "v": [1]}),
        clock.advance_marker(6),  # b idle 11 s >= ttl 10 s; a idle 6 s
        pl.DataFrame({"k": ["a", "b"], "v": [1, 1]}),
    ]

    def count(state, rec):
        n = state + rec["v"]
        return n, {"k": rec["k"], "n": n}

    got = _run(
        lambda ks: ks.stateful_map(count, init=lambda: 0, ttl=timedelta(seconds=10)),
        items,
        clock,
    )
    assert sorted(got.rows()) == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 1)]

    def total(batch, state):
        df = batch.join(state, on="k", how="left").with_columns(
            n=pl.col("v").cum_sum().over("k") + pl.col("n").fill_null(0)
        )
        return df.select("k", "n"), df.group_by("k").agg(pl.col("n").last())

    clock2 = FakeClock(0.0)
    items2 = [
        it if isinstance(it, pl.DataFrame) else clock2.advance_marker(it.seconds) for it in items
    ]
    got2 = _run(
        lambda ks: ks.transform(total, state={"n": pl.Int64()}, ttl=timedelta(seconds=10)),
        items2,
        clock2,
    )
    assert sorted(got2.rows()) == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 1)]


def test_unbounded_key_space_stays_bounded():
    clock = FakeClock(0.0)
    items: list = []
    for step in range(30):  # 50 new keys every 10 s; with a 25 s TTL about 150 stay
        items.append(pl.DataFrame({"k": [f"{step}-{i}" for i in range(50)], "v": [1] * 50}))
        items.append(clock.advance_marker(10))
    sizes: list[int] = []
    orig = TTLAggOperator.on_batch

    def spy(self, index, batch):
        orig(self, index, batch)
        sizes.append(len(self.state.index))

    TTLAggOperator.on_batch = spy
    try:
        got = _run(
            lambda ks: ks.agg(pl.len().alias("n"), emit="updates", ttl=timedelta(seconds=25)),
            items,
            clock,
        )
    finally:
        TTLAggOperator.on_batch = orig
    assert got.height == 1500 and got["n"].max() == 1
    assert len(sizes) == 30 and max(sizes) <= 150
    assert sizes[-1] <= 150 and sizes[5] >= 100  # it does keep the recent keys


def test_on_tick_sweeps_without_data():
    clock = FakeClock(0.0)

    class Ctx:
        worker_index, worker_count = 0, 1

        def emit(self, batch, port="out"):
            pass

        def now(self):
            return clock()

    from tideflow.api._dataflow import AggOp
    from tideflow.api._graph import Node

    spec = AggOp(
        ("k",), tuple(parse_aggs((pl.len().alias("n"),), "t")), "updates", ttl=timedelta(seconds=5)
    )
    op = TTLAggOperator(Node(0, "t.agg", "agg", [], spec), Ctx(), "updates")
    op.on_batch(0, pl.DataFrame({"k": ["a", "b"]}))
    clock.advance(3)
    op.on_batch(0, pl.DataFrame({"k": ["b"]}))
    clock.advance(2.5)
    op.on_tick()
    assert op.state.index.frame()["k"].to_list() == ["b"]
    clock.advance(10)
    op.on_tick()
    assert len(op.state.index) == 0 and op.expiry.expired_total == 2


def test_ttl_must_be_positive():
    flow = tf.Dataflow("bad")
    ks = flow.source(TestingSource([], schema={"k": pl.String(), "v": pl.Int64()})).key_by("k")
    with pytest.raises(ConfigError, match="ttl must be a positive timedelta"):
        ks.agg(pl.len(), ttl=timedelta(0))
    with pytest.raises(ConfigError, match="ttl"):
        ks.stateful_map(lambda s, r: (s, None), init=dict, ttl=timedelta(seconds=-1))
