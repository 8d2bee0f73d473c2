"""Join state as snapshot chunks (version 3): written through a real store, read back, resumed.

Each join operator is driven directly with random batches and watermarks; at random points its
snapshot goes through a :class:`CheckpointStore` (chunks are files in ``shared/``, a later
checkpoint refers to the chunks an earlier one wrote), and at some of them a fresh operator
restores the latest checkpoint and takes the rest of the input. All that came out (before and
after each restore) must equal the output of an operator that never stopped. A snapshot with
nothing new writes no chunk; a regular join writes only the rows that are new; version 2
snapshots (Arrow IPC bytes) still restore.
"""

from __future__ import annotations

import io
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.recovery.test_join_state import (
    T0,
    Ctx,
    batches_st,
    first_left_per_key,
    frames_of,
    rows,
    table_of,
    two_sided,
)

from tideflow.api._graph import Node
from tideflow.runtime._joins import IntervalJoinOperator, WindowJoinOperator, build_join_operator
from tideflow.runtime._keyindex import ChunkLog, KeyedRows
from tideflow.runtime._operators import Operator
from tideflow.state import CheckpointStore, SnapshotChunk
from tideflow.state._resume import resume_for
from tideflow.testing import FakeClock

KINDS = ["window", "interval", "close", "regular", "regular_unique", "best", "best_open"]
Batches = list[list[tuple[str, str, int]]]


class Run:
    """One join operator at a time; a restore replaces it, the output of all is kept."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ctxs: list[Ctx] = []
        self.op = self._new()

    def _new(self) -> Operator:
        self.ctxs.append(Ctx(FakeClock()))
        return build_join_operator(self.node, self.ctxs[-1])  # type: ignore[arg-type]

    def feed(self, batch: list[tuple[str, str, int]], start: int, wm: int) -> None:
        left, right = frames_of(batch, start)
        self.op.on_batch(0, left)
        self.op.on_batch(1, right)
        self.op.on_watermark(wm, False)

    def checkpoint(self, store: CheckpointStore, cid: int) -> dict[str, Any]:
        snap = self.op.snapshot()
        store.write(cid, [{self.node.step_id: snap}])
        return snap

    def restore(self, store: CheckpointStore) -> None:
        cp = store.latest()
        assert cp is not None
        snap = resume_for(cp, [self.node], 0, 1)[self.node.step_id]
        self.op = self._new()
        self.op.restore(snap)

    def output(self, port: str = "out") -> Counter[tuple[Any, ...]]:
        return rows([f for c in self.ctxs for f in getattr(c, port)])


def _drive(
    kind: str,
    batches: Batches,
    delay: int,
    cuts: set[int],
    restores: set[int],
    store: CheckpointStore,
) -> tuple[Run, Run]:
    node = two_sided(kind)
    ref, run = Run(node), Run(node)
    wm, v, cid = -(2**63), 0, 0
    for i, batch in enumerate(batches):
        wm = max(wm, T0 + max(t for _, _, t in batch) - delay)
        for r in (ref, run):
            r.feed(batch, v, wm)
        v += len(batch)
        if i in cuts:
            cid += 1
            run.checkpoint(store, cid)
            if i in restores:
                run.restore(store)
    assert _state(run.op) == _state(ref.op)  # removed rows did not come back
    for r in (ref, run):
        r.op.on_end()
    return ref, run


def _state(op: Operator) -> Any:
    """What an operator holds: rows per side (the rows themselves for a regular join)."""
    if isinstance(op, IntervalJoinOperator):
        if not op.bounded:
            return [rows([side.live()]) if side.height else Counter() for side in op.sides]
        return [op.buffered(0), op.buffered(1)]
    if isinstance(op, WindowJoinOperator):
        return {ws: [sum(f.height for f in side) for side in b] for ws, b in op.buckets.items()}
    return None


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=30, deadline=None)
@given(batches=batches_st, delay=st.integers(0, 20), data=st.data())
def test_a_join_resumed_from_stored_chunks_equals_an_uninterrupted_run(
    kind: str, batches: Batches, delay: int, data: st.DataObject
) -> None:
    if kind == "regular_unique":
        batches = first_left_per_key(batches)
    cuts = data.draw(st.sets(st.integers(0, len(batches) - 1)), label="cuts")
    restores = data.draw(st.sets(st.sampled_from(sorted(cuts))) if cuts else st.just(set()))
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d, keep=3)
        ref, run = _drive(kind, batches, delay, cuts, restores, store)
        assert run.output() == ref.output()
        assert run.output("late") == ref.output("late")


def _shared(store: CheckpointStore) -> dict[str, int]:
    files = store.shared.iterdir() if store.shared.is_dir() else []
    return {p.name: p.stat().st_size for p in files}


@pytest.mark.parametrize("kind", KINDS)
def test_a_snapshot_with_no_new_rows_writes_no_chunk(kind: str, tmp_path: Path) -> None:
    node = two_sided(kind)
    run = Run(node)
    store = CheckpointStore(tmp_path, keep=10)
    batch = [("L", "a", 30), ("R", "a", 31), ("L", "b", 32), ("R", "c", 33), ("R", "b", 34)]
    run.feed(batch, 0, T0)
    first = run.checkpoint(store, 1)
    written = _shared(store)
    assert written, "the state holds rows"
    assert all(isinstance(c, SnapshotChunk) for f in ("left", "right") for c in first[f])
    run.op.on_watermark(T0 + 1, False)  # drops nothing, fires nothing
    second = run.checkpoint(store, 2)
    assert _shared(store) == written  # no new chunk file, not a byte more
    assert second["left"] == first["left"] and second["right"] == first["right"]
    run.restore(store)  # the restored operator goes on referring to the same files
    run.checkpoint(store, 3)
    assert _shared(store) == written


def test_a_regular_join_checkpoint_writes_only_the_rows_appended_since(tmp_path: Path) -> None:
    node = two_sided("regular")
    run = Run(node)
    store = CheckpointStore(tmp_path, keep=10)
    run.feed([("L", k, 5) for k in "abcdefgh"], 0, T0)
    first = run.checkpoint(store, 1)
    run.feed([("L", "x", 6), ("R", "y", 7)], 100, T0)
    second = run.checkpoint(store, 2)
    assert second["left"][0] is first["left"][0] and len(second["left"]) == 2
    new = {n: s for n, s in _shared(store).items() if n != first["left"][0].name}
    assert len(new) == 2  # one chunk of the new left row, one of the right row
    assert [table_of([c]).height for c in second["left"]] == [8, 1]


def test_removed_rows_do_not_come_back_and_chunks_are_compacted(tmp_path: Path) -> None:
    node = two_sided("regular_unique")
    run, ref = Run(node), Run(node)
    store = CheckpointStore(tmp_path, keep=10)
    op = run.op
    assert isinstance(op, IntervalJoinOperator)
    op.logs[1].slack = 2
    keys = [f"k{i}" for i in range(10)]
    steps: Batches = [[("R", k, 1) for k in keys], [("L", k, 2) for k in keys[:8]]]
    for i, batch in enumerate(steps):
        for r in (run, ref):
            r.feed(batch, 100 * i, T0)
        snap = run.checkpoint(store, i + 1)
    # Eight of ten right rows met their left record: the chunk of ten is rewritten as two.
    assert op.sides[1].height == 2
    assert [table_of([c]).height for c in snap["right"]] == [2]
    run.restore(store)
    for r in (run, ref):
        r.feed([("L", "k8", 3), ("L", "k9", 3), ("R", "k1", 4), ("R", "k5", 4)], 300, T0)
        r.op.on_end()
    assert run.output() == ref.output()


def _version_2(op: Operator, snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` in the version 2 layout: each table one IPC value of its live rows, or None."""
    out = {**snap, "version": 2}
    for field in ("left", "right", "table", "pending", "cache"):
        if field not in snap:
            continue
        if isinstance(op, IntervalJoinOperator) and not op.bounded and field != "pending":
            frame = op.sides[0 if field == "left" else 1].live()
        else:
            frame = table_of(snap[field])
        out[field] = None if frame.height == 0 else _ipc(frame)
    if snap.get("best") is not None:
        out["pending"] = None
    return out


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(batches=batches_st, delay=st.integers(0, 20), cut=st.integers(0, 7))
def test_a_version_2_snapshot_still_restores(
    kind: str, batches: Batches, delay: int, cut: int
) -> None:
    if kind == "regular_unique":
        batches = first_left_per_key(batches)
    node = two_sided(kind)
    ref, run = Run(node), Run(node)
    wm, v = -(2**63), 0
    for i, batch in enumerate(batches):
        wm = max(wm, T0 + max(t for _, _, t in batch) - delay)
        for r in (ref, run):
            r.feed(batch, v, wm)
        v += len(batch)
        if i == cut:
            old = _version_2(run.op, run.op.snapshot())
            run.op = run._new()
            run.op.restore(old)
    assert _state(run.op) == _state(ref.op)
    for r in (ref, run):
        r.op.on_end()
    assert run.output() == ref.output()
    assert run.output("late") == ref.output("late")


def test_a_store_that_only_grows_is_written_again_once_its_chunks_are_too_many() -> None:
    store, log = KeyedRows(["k"]), ChunkLog(most=4)
    counts, before = [], []
    for i in range(12):
        store.append(pl.DataFrame({"k": [i, i + 100]}))
        chunks = log.snapshot(store)
        assert sum(c not in before for c in chunks) == 1  # one chunk written per snapshot
        before = chunks
        held = pl.concat([table_of([c]) for c in chunks])
        assert sorted(held["k"].to_list()) == sorted(store.live()["k"].to_list())
        counts.append(len(chunks))
    # Past four chunks, the whole store is the one chunk of that snapshot.
    assert counts == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]
    assert table_of(log.chunks[:1]).height == 2 * 9
