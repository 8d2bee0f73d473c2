"""Join state in checkpoints: snapshot, store, restore (also on another worker count).

The join operators are driven directly, as the worker drives them: ``k`` copies, each getting
the rows whose key hashes to it (the exchange's partitioning) and the same watermarks. At a
random cut every copy is snapshotted, the snapshots go through the checkpoint store (JSON +
Arrow IPC on disk) and :func:`resume_for`, ``m`` fresh copies restore them and take the rest of
the input. Their output must equal that of one operator that never stopped.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow import windows
from tideflow._errors import StateError
from tideflow.api._graph import Node
from tideflow.runtime._joins import build_join_operator
from tideflow.state import CheckpointStore, SnapshotChunk
from tideflow.state._resume import resume_for
from tideflow.testing import FakeClock, TestingSource

T0 = 1_700_000_000_000_000  # µs
TIME = pl.Datetime("us", "UTC")
SCHEMA = {"k": pl.String(), "t": TIME, "v": pl.Int64()}
#: Keys as letters ("str": hashed codes), as integers 0-3 ("int": a compact range, the key
#: index by direct address) or those spread 2**40 apart ("sparse": its sorted segments).
SPREAD = {"int": 1, "sparse": 2**40}


class Ctx:
    """The operator context of one simulated worker: collects output and watermarks."""

    def __init__(self, clock: FakeClock) -> None:
        self.out: list[pl.DataFrame] = []
        self.late: list[pl.DataFrame] = []
        self.wms: list[int] = []
        self.clock = clock
        self.worker_index, self.worker_count = 0, 1

    def emit(self, batch: pl.DataFrame, port: str = "out") -> None:
        (self.out if port == "out" else self.late).append(batch)

    def dead(self, batch: pl.DataFrame) -> None:
        raise AssertionError("no dead letters expected")

    def publish(self, topic: str, rows: pl.DataFrame) -> None:
        pass

    def watermark(self, wm: int, idle: bool = False) -> None:
        self.wms.append(wm)

    def now(self) -> float:
        return self.clock()

    @property
    def current_watermark(self) -> int:
        return self.wms[-1] if self.wms else -(2**63)


def rows(frames: list[pl.DataFrame]) -> Counter[tuple[Any, ...]]:
    got: Counter[tuple[Any, ...]] = Counter()
    for f in frames:
        got.update(f.select(sorted(f.columns)).rows())
    return got


def table_of(value: Any) -> pl.DataFrame:
    """The rows of a join snapshot's table field: a list of chunks or IPC bytes (version 3),
    IPC bytes or None (version 2)."""
    parts = value if isinstance(value, list) else [value]
    frames = [
        pl.read_ipc(p.read() if isinstance(p, SnapshotChunk) else p) for p in parts if p is not None
    ]
    frames = [f for f in frames if f.width]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def share(frame: pl.DataFrame, keys: list[str], w: int, n: int) -> pl.DataFrame:
    if n == 1 or frame.height == 0:
        return frame
    h = pl.col(keys[0]).hash(seed=7) if len(keys) == 1 else pl.struct(keys).hash(seed=7)
    return frame.filter((h % n) == w)


class Cluster:
    """``n`` copies of one join operator, fed as the workers of a run would feed them."""

    def __init__(self, node: Node, n: int, clock: FakeClock, keys: list[str]) -> None:
        self.node, self.keys, self.clock = node, keys, clock
        self.ctxs = [Ctx(clock) for _ in range(n)]
        self.ops = [build_join_operator(node, c) for c in self.ctxs]  # type: ignore[arg-type]

    def batch(self, index: int, frame: pl.DataFrame) -> None:
        n = len(self.ops)
        for w, op in enumerate(self.ops):
            op.on_batch(index, share(frame, self.keys, w, n))

    def watermark(self, wm: int) -> None:
        for op in self.ops:
            op.on_watermark(wm, False)

    def input_end(self, index: int) -> None:
        for op in self.ops:
            op.on_input_end(index)  # type: ignore[attr-defined]

    def end(self) -> None:
        for op in self.ops:
            op.on_end()

    def rescaled(self, m: int) -> Cluster:
        """Checkpoint every copy through the store; ``m`` new copies resume from it."""
        parts = [{self.node.step_id: op.snapshot()} for op in self.ops]
        new = Cluster(self.node, m, self.clock, self.keys)
        with tempfile.TemporaryDirectory() as d:  # chunks are read from their files
            store = CheckpointStore(d)
            store.write(1, parts, {"flow": "t"})
            cp = store.latest()
            assert cp is not None
            for w, op in enumerate(new.ops):
                resume = resume_for(cp, [self.node], w, m)
                if self.node.step_id in resume:
                    op.restore(resume[self.node.step_id])
                for field in ("left", "right", "table", "pending"):  # only its own keys
                    held = table_of(op.snapshot().get(field))
                    if held.height:
                        assert share(held, self.keys, w, m).height == held.height, field
        new.before = [*getattr(self, "before", []), *self.ctxs]  # output before the cut
        return new

    def output(self, port: str = "out") -> Counter[tuple[Any, ...]]:
        frames = [f for c in [*getattr(self, "before", []), *self.ctxs] for f in getattr(c, port)]
        return rows(frames)


# -- windowed and interval joins -----------------------------------------------------------------
record = st.tuples(
    st.sampled_from(["L", "R"]), st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 60)
)
batches_st = st.lists(st.lists(record, min_size=1, max_size=6), min_size=2, max_size=8)


def two_sided(kind: str, how: str = "inner", keys: str = "str") -> Node:
    flow = tf.Dataflow("j")
    schema = SCHEMA if keys == "str" else {**SCHEMA, "k": pl.Int64()}
    s = flow.source(TestingSource([], schema=schema)).event_time("t")
    left, right = s.key_by("k"), s.key_by("k")
    if kind == "window":
        window = windows.sliding(timedelta(microseconds=20), timedelta(microseconds=10))
        out = left.join_window(right, window, how=how)  # type: ignore[arg-type]
    elif kind in ("regular", "regular_unique"):  # the key index; nothing is late
        unique = kind == "regular_unique"
        out = left.join_interval(right, lower=None, upper=None, left_unique=unique)
    elif kind == "close":  # each left record's interval ends at its own time
        out = left.join_interval(right, lower=timedelta(microseconds=-4), upper="t", emit="close")
    elif kind == "best":  # the same, keeping each left record's right record of largest v
        best = tf.BestMatch("v", descending=True)
        out = left.join_interval(
            right, lower=timedelta(microseconds=-4), upper="t", emit="close", best=best
        )
    elif kind == "best_open":  # no end: every left record closes at the end of input
        best = tf.BestMatch(["t", "v"], descending=[False, True])
        out = left.join_interval(
            right, lower=timedelta(microseconds=-4), upper=None, emit="close", best=best
        )
    else:
        out = left.join_interval(
            right, lower=timedelta(microseconds=-4), upper=timedelta(microseconds=7)
        )
    return out.results.node


def frames_of(
    batch: list[tuple[str, str, int]], start: int, keys: str = "str"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    def key(k: str) -> str | int:
        return k if keys == "str" else (ord(k) - ord("a")) * SPREAD[keys]

    def side(name: str) -> pl.DataFrame:
        recs = [(key(k), T0 + t, start + i) for i, (s, k, t) in enumerate(batch) if s == name]
        return pl.DataFrame(
            {"k": [r[0] for r in recs], "t": [r[1] for r in recs], "v": [r[2] for r in recs]},
            schema={"k": pl.String if keys == "str" else pl.Int64, "t": pl.Int64, "v": pl.Int64},
        ).with_columns(pl.col("t").cast(TIME))

    return side("L"), side("R")


def drive_two_sided(
    node: Node,
    batches: list[list[tuple[str, str, int]]],
    delay: int,
    plan: tuple[int, int, int],
    keys: str = "str",
) -> tuple[Cluster, Cluster]:
    """(uninterrupted single operator, k copies cut after batch ``cut`` and resumed as m)."""
    k, m, cut = plan
    clock = FakeClock()
    ref, run = Cluster(node, 1, clock, ["k"]), Cluster(node, k, clock, ["k"])
    wm, v = -(2**63), 0
    for i, batch in enumerate(batches):
        if i == cut:
            run = run.rescaled(m)
        left, right = frames_of(batch, v, keys)
        v += len(batch)
        wm = max(wm, T0 + max(t for _, _, t in batch) - delay)
        for c in (ref, run):
            c.batch(0, left)
            c.batch(1, right)
            c.watermark(wm)
    for c in (ref, run):
        c.end()
    return ref, run


plans = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda km: st.tuples(st.just(km[0]), st.just(km[1]), st.integers(1, 7))
)


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 20),
    how=st.sampled_from(["inner", "left", "full"]),
    plan=plans,
)
def test_window_join_resumes_like_an_uninterrupted_run(batches, delay, how, plan):
    ref, run = drive_two_sided(two_sided("window", how), batches, delay, plan)
    assert run.output() == ref.output()
    assert run.output("late") == ref.output("late")


def first_left_per_key(batches: list[list[tuple[str, str, int]]]) -> list[Any]:
    """The batches with only the first left record of each key (a primary key on the left)."""
    seen: set[str] = set()
    out = []
    for batch in batches:
        kept = [r for r in batch if r[0] == "R" or (r[1] not in seen and not seen.add(r[1]))]
        out.append(kept or [("R", "z", batch[0][2])])  # keep the batch (and its watermark)
    return out


@pytest.mark.parametrize(
    "kind", ["interval", "close", "regular", "regular_unique", "best", "best_open"]
)
@settings(max_examples=40, deadline=None)
@given(batches=batches_st, delay=st.integers(0, 20), plan=plans)
def test_interval_join_resumes_like_an_uninterrupted_run(kind, batches, delay, plan):
    if kind == "regular_unique":
        batches = first_left_per_key(batches)
    ref, run = drive_two_sided(two_sided(kind), batches, delay, plan)
    assert run.output() == ref.output()
    assert run.output("late") == ref.output("late")


@pytest.mark.parametrize("keys", ["int", "sparse"])
@pytest.mark.parametrize("kind", ["regular", "regular_unique"])
@settings(max_examples=30, deadline=None)
@given(batches=batches_st, plan=plans)
def test_regular_join_on_integer_keys_resumes_like_an_uninterrupted_run(kind, keys, batches, plan):
    # The key index by direct address (compact keys) and by sorted segments (spread keys):
    # cut, snapshot, restore on another number of copies, and the same output.
    if kind == "regular_unique":
        batches = first_left_per_key(batches)
    ref, run = drive_two_sided(two_sided(kind, keys=keys), batches, 0, plan, keys)
    assert run.output() == ref.output()
    if keys == "int":
        for op in [*ref.ops, *run.ops]:
            for side in op.sides:  # type: ignore[attr-defined]
                assert side.direct is not None or not side.height


def test_window_join_snapshot_holds_the_open_windows():
    node = two_sided("window", "full")
    op = build_join_operator(node, Ctx(FakeClock()))  # type: ignore[arg-type]
    left, right = frames_of([("L", "a", 3), ("R", "a", 4), ("L", "b", 25)], 0)
    op.on_batch(0, left)
    op.on_batch(1, right)
    op.on_watermark(T0 + 15, False)
    snap = op.snapshot()
    assert snap["version"] == 3 and snap["kind"] == "window_join" and snap["wm"] == T0 + 15
    held = table_of(snap["left"])
    assert sorted(held.select("k", "__ws").rows()) == [
        ("a", T0),
        ("b", T0 + 10),
        ("b", T0 + 20),
    ]  # ("a", T0 - 10) fired at the watermark
    assert table_of(snap["right"]).height == 1


def test_a_snapshot_of_another_join_kind_is_refused():
    node = two_sided("interval")
    op = build_join_operator(node, Ctx(FakeClock()))  # type: ignore[arg-type]
    other = build_join_operator(two_sided("window"), Ctx(FakeClock()))  # type: ignore[arg-type]
    with pytest.raises(StateError, match="cannot be restored into a interval_join"):
        op.restore(other.snapshot())


def test_best_match_state_is_one_row_per_open_left_record():
    node = two_sided("best")
    op = build_join_operator(node, Ctx(FakeClock()))  # type: ignore[arg-type]
    for i in range(5):  # one left record at t=10 meets right times in [6, 10]: 7..10, not 11
        left, right = frames_of([("R", "a", 7 + i)] + ([("L", "a", 10)] if i == 0 else []), i)
        op.on_batch(0, left)
        op.on_batch(1, right)
    snap = op.snapshot()
    assert snap["best"] == {"by": ["v"], "descending": [True]} and snap["pending"] == []
    held = table_of(snap["left"])
    assert held.height == 1 and held.get_column("v_right").to_list() == [3]
    assert held.get_column("__m").to_list() == [True]


def test_a_best_match_snapshot_is_refused_by_a_join_without_it_and_back():
    best = build_join_operator(two_sided("best"), Ctx(FakeClock()))  # type: ignore[arg-type]
    pairs = build_join_operator(two_sided("close"), Ctx(FakeClock()))  # type: ignore[arg-type]
    with pytest.raises(StateError, match=r"written with best=.*this join has best=None"):
        pairs.restore(best.snapshot())
    with pytest.raises(StateError, match="written with best=None"):
        best.restore(pairs.snapshot())


def test_a_summary_of_an_older_version_starts_empty(caplog: pytest.LogCaptureFixture) -> None:
    node = two_sided("window")
    op = build_join_operator(node, Ctx(FakeClock()))  # type: ignore[arg-type]
    op.restore({"version": 1, "wm": 5, "open": 3})
    assert op.buckets == {}  # type: ignore[attr-defined]
    assert "holds no join state" in caplog.text


# -- table joins ---------------------------------------------------------------------------------
table_ops = st.lists(
    st.tuples(st.sampled_from(["T", "E", "W"]), st.sampled_from(["a", "b", "c", "d", "e"])),
    min_size=2,
    max_size=25,
)


def table_node(mode: str, how: str) -> Node:
    flow = tf.Dataflow("t")
    events = flow.source(TestingSource([], schema={"k": pl.String(), "n": pl.Int64()}))
    table = flow.source(
        TestingSource([], schema={"k": pl.String(), "tier": pl.Int64()}, bounded=mode == "bounded"),
        name="table",
    )
    return events.join_table(table, on="k", how=how, mode=mode).node  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    ops=table_ops,
    mode=st.sampled_from(["bounded", "changelog"]),
    how=st.sampled_from(["left", "inner"]),
    plan=plans,
    table_end=st.integers(0, 25),
)
def test_table_join_resumes_like_an_uninterrupted_run(ops, mode, how, plan, table_end):
    k, m, cut = plan
    node = table_node(mode, how)
    clock = FakeClock()
    ref, run = Cluster(node, 1, clock, ["k"]), Cluster(node, k, clock, ["k"])
    # In bounded mode the table's rows all come before its end; stream rows may come earlier.
    if mode == "bounded":
        ops = [o for o in ops if o[0] == "T"] + [o for o in ops if o[0] != "T"]
        table_end = min(table_end, len(ops))
        table_end = max(table_end, sum(1 for o in ops if o[0] == "T"))
    for i, (op, key) in enumerate(ops):
        if i == cut:
            run = run.rescaled(m)
        if mode == "bounded" and i == table_end:
            for c in (ref, run):
                c.input_end(1)
        for c in (ref, run):
            if op == "T":
                c.batch(1, pl.DataFrame({"k": [key], "tier": [i]}))
            elif op == "E":
                c.batch(0, pl.DataFrame({"k": [key], "n": [i]}))
            else:
                c.watermark(T0 + i)
    for c in (ref, run):
        c.input_end(1)
        c.end()
    assert run.output() == ref.output()
    wms = [w for c in run.ctxs for w in c.wms]
    assert all(w <= T0 + len(ops) for w in wms)


# -- lookups -------------------------------------------------------------------------------------
def lookup_node(asked: list[str], ttl: timedelta | None, max_size: int | None) -> Node:
    def fetch(keys: pl.DataFrame) -> pl.DataFrame:
        asked.extend(keys["k"].to_list())
        found = keys.filter(pl.col("k") != "e")
        return found.with_columns(name=pl.format("name-{}", pl.col("k")))

    flow = tf.Dataflow("l")
    s = flow.source(TestingSource([], schema={"k": pl.String(), "n": pl.Int64()}))
    return s.lookup(fetch, on="k", ttl=ttl, max_size=max_size).node


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=5),
        min_size=2,
        max_size=10,
    ),
    bounds=st.sampled_from([(None, None), (timedelta(seconds=5), None), (None, 3)]),
    plan=plans,
)
def test_lookup_cache_survives_a_restart(batches, bounds, plan):
    k, m, cut = plan
    ttl, max_size = bounds
    asked_ref: list[str] = []
    asked_run: list[str] = []
    clock = FakeClock()
    ref = Cluster(lookup_node(asked_ref, ttl, max_size), 1, clock, ["k"])
    run = Cluster(lookup_node(asked_run, ttl, max_size), k, clock, ["k"])
    for i, keys in enumerate(batches):
        if i == cut:
            run = run.rescaled(m)
        frame = pl.DataFrame({"k": keys, "n": list(range(len(keys)))})
        for c in (ref, run):
            c.batch(0, frame)
        clock.advance(2)
    assert run.output() == ref.output()
    if ttl is None and max_size is None:
        # Every key is fetched once: the restored caches hold what was fetched before the cut
        # (on a new worker count, every worker gets the whole cache).
        assert sorted(asked_run) == sorted(asked_ref) == sorted({k for b in batches for k in b})


def test_rescaled_event_time_resumes_from_the_slowest_worker():
    from tideflow.state._store import Checkpoint

    flow = tf.Dataflow("et")
    s = flow.source(TestingSource([], schema=SCHEMA)).event_time("t")
    node = s.node
    parts = [{node.step_id: {"version": 1, "max_seen": m}} for m in (14, 3, None)]
    cp = Checkpoint(1, Path("."), 3, parts, {})  # type: ignore[arg-type]
    # The exchange after it held the watermark at the slowest worker's: resume from there.
    assert resume_for(cp, [node], 0, 1)[node.step_id]["max_seen"] == 3
