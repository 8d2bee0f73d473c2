"""The key-indexed ``top_n`` state against brute force, prefix by prefix.

After every batch the kept rows (``state_table``) must be each key's first ``n`` records so far
(stable sort by the order columns, nulls last, ties in arrival order), with null keys and keys
of two columns; with ``emit="updates"`` each batch's emission must be the new top rows of the
keys it holds. A snapshot taken at any prefix and restored must go on like the operator that
was not interrupted, and snapshots of the earlier formats (version 1, one table; version 2
chunks as written before the state was indexed) still restore. Per batch, the operator sorts
only the batch and the kept rows of the batch's keys, never the whole state.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.runtime.test_top_n import _Ctx

import tideflow as tf
from tideflow.runtime._operators import TopNOperator
from tideflow.state import CheckpointStore, SnapshotChunk
from tideflow.state._resume import resume_for
from tideflow.testing import TestingSource

SCHEMA = {"k": pl.Int64(), "j": pl.String(), "a": pl.Int64(), "b": pl.Int64(), "id": pl.Int64()}

value = st.one_of(st.none(), st.integers(0, 3))
record = st.tuples(value, st.sampled_from([None, "p", "q"]), value, st.integers(0, 2))
batches_st = st.lists(st.lists(record, max_size=8), min_size=1, max_size=10)


def _frames(batches: list[list[tuple[Any, ...]]]) -> list[pl.DataFrame]:
    out, i = [], 0
    for batch in batches:
        rows = [
            {"k": k, "j": j, "a": a, "b": b, "id": i + n} for n, (k, j, a, b) in enumerate(batch)
        ]
        i += len(batch)
        out.append(pl.DataFrame(rows, schema=SCHEMA))
    return out


def _op(keys: list[str], n: int, desc: tuple[bool, bool], emit: str, rank: bool) -> TopNOperator:
    flow = tf.Dataflow("topn_state")
    src = flow.source(TestingSource([], schema=SCHEMA))
    node = (
        src.key_by(*keys)
        .top_n(n, by=["a", "b"], descending=list(desc), rank="r" if rank else None, emit=emit)
        .node
    )
    return TopNOperator(node, _Ctx(), emit)  # type: ignore[arg-type]


def _sort_key(desc: tuple[bool, bool]) -> Any:
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        a, b = r["a"], r["b"]
        return (a is None, 0 if a is None else (-a if desc[0] else a), -b if desc[1] else b)

    return key


def _top(recs: list[dict[str, Any]], n: int, desc: tuple[bool, bool]) -> list[dict[str, Any]]:
    return sorted(recs, key=_sort_key(desc))[:n]  # stable: ties keep arrival order


def _reference(
    seen: dict[tuple[Any, ...], list[dict[str, Any]]], n: int, desc: tuple[bool, bool], rank: bool
) -> list[tuple[Any, ...]]:
    out = []
    for recs in seen.values():
        for i, r in enumerate(_top(recs, n, desc)):
            out.append((r["k"], r["j"], r["a"], r["b"], r["id"], *((i + 1,) if rank else ())))
    return sorted(out, key=repr)


def _rows(frame: pl.DataFrame | None) -> list[tuple[Any, ...]]:
    return [] if frame is None else sorted(frame.rows(), key=repr)


@settings(max_examples=80, deadline=None)
@given(
    batches=batches_st,
    two_keys=st.booleans(),
    n=st.integers(1, 3),
    desc=st.sampled_from([(False, False), (True, False), (True, True), (False, True)]),
    emit=st.sampled_from(["updates", "final"]),
    rank=st.booleans(),
    fold=st.sampled_from([1, 5, 1000]),
    cuts=st.sets(st.integers(0, 10)),
    restore_at=st.integers(0, 10),
)
def test_kept_rows_equal_brute_force_after_every_batch(
    batches: list[list[tuple[Any, ...]]],
    two_keys: bool,
    n: int,
    desc: tuple[bool, bool],
    emit: str,
    rank: bool,
    fold: int,
    cuts: set[int],
    restore_at: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    keys = ["k", "j"] if two_keys else ["k"]
    saved = TopNOperator.FOLD_ROWS
    TopNOperator.FOLD_ROWS = fold
    try:
        op = _op(keys, n, desc, emit, rank)
        store = CheckpointStore(tmp_path_factory.mktemp("topn_state"))
        seen: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for b, frame in enumerate(_frames(batches)):
            op.ctx.out.clear()  # type: ignore[attr-defined]
            op.on_batch(0, frame)
            recs = frame.rows(named=True)
            for r in recs:
                seen.setdefault(tuple(r[k] for k in keys), []).append(r)
            if emit == "updates" and recs:
                touched = {tuple(r[k] for k in keys) for r in recs}
                want = _reference({t: seen[t] for t in touched}, n, desc, rank)
                assert _rows(pl.concat(op.ctx.out)) == want  # type: ignore[attr-defined]
            else:
                assert op.ctx.out == []  # type: ignore[attr-defined]
            assert _rows(op.state_table()) == _reference(seen, n, desc, rank)
            if b in cuts or b == restore_at:
                store.write(b + 1, [{op.node.step_id: op.snapshot()}])
            if b == restore_at:  # on from the latest checkpoint, with a new operator
                cp = store.latest()
                assert cp is not None
                op = _op(keys, n, desc, emit, rank)
                op.restore(resume_for(cp, [op.node], 0, 1)[op.node.step_id])
        op.ctx.out.clear()  # type: ignore[attr-defined]
        op.on_end()
        if emit == "final":
            emitted = pl.concat(op.ctx.out) if op.ctx.out else None  # type: ignore[attr-defined]
            assert _rows(emitted) == _reference(seen, n, desc, rank)
    finally:
        TopNOperator.FOLD_ROWS = saved


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


@pytest.mark.parametrize("version", ["v1", "v2-bytes", "v2-chunks"])
def test_snapshots_of_the_earlier_formats_restore(version: str, tmp_path: Path) -> None:
    # Written by hand as the earlier code wrote them: version 1 is the folded state as one
    # Arrow IPC table; version 2 a list of chunks, each the top rows of some arrivals (here
    # two overlapping pieces), as bytes after a rescale or as chunk files in shared/.
    frames = _frames(
        [[(1, "p", 3, 0), (2, "q", 1, 1), (1, "p", 5, 2)], [(1, "p", 4, 0), (2, None, 2, 1)]]
    )
    first, second = frames
    op = _op(["k"], 2, (True, False), "final", True)
    if version == "v1":
        snap: dict[str, Any] = {"version": 1, "kind": "top_n", "table": _ipc(pl.concat(frames))}
    else:
        parts: list[Any] = [_ipc(first), _ipc(second)]
        if version == "v2-chunks":
            store = CheckpointStore(tmp_path / "ck")
            store.write(
                1,
                [
                    {
                        "s": {
                            "version": 2,
                            "kind": "top_n",
                            "chunks": [SnapshotChunk(p) for p in parts],
                        }
                    }
                ],
            )
            cp = store.latest()
            assert cp is not None
            parts = cp.parts[0]["s"]["chunks"]
            assert all(isinstance(p, SnapshotChunk) for p in parts)
        snap = {"version": 2, "kind": "top_n", "chunks": parts}
    op.restore(snap)
    later = _frames([[(2, "q", 9, 0)]])[0].with_columns(pl.lit(99, pl.Int64).alias("id"))
    op.on_batch(0, later)
    if version == "v2-chunks":  # the restored chunks are referred to, not written again
        assert len(op.snapshot()["chunks"]) == 3
    op.on_end()
    seen: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in [*first.rows(named=True), *second.rows(named=True), *later.rows(named=True)]:
        seen.setdefault((r["k"],), []).append(r)
    got = pl.concat(op.ctx.out)  # type: ignore[attr-defined]
    assert _rows(got) == _reference(seen, 2, (True, False), True)
    assert op.snapshot()["chunks"]  # after the end the state is still there (see the worker)


def test_a_batch_sorts_only_itself_and_its_keys_kept_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    op = _op(["k"], 3, (True, False), "updates", True)
    op.on_batch(
        0, pl.DataFrame({"k": range(5000), "j": "p", "a": 1, "b": 0, "id": 0}, schema=SCHEMA)
    )
    sorted_rows: list[int] = []
    best = TopNOperator._best

    def spy(self: TopNOperator, narrow: pl.DataFrame, group: Any = None) -> Any:
        sorted_rows.append(narrow.height)
        return best(self, narrow, group)

    monkeypatch.setattr(TopNOperator, "_best", spy)
    for i in range(20):
        keys = [(7 * i + j) % 5000 for j in range(10)]
        batch = pl.DataFrame(
            {"k": keys, "j": "p", "a": [i % 4] * 10, "b": list(range(10)), "id": i + 1},
            schema=SCHEMA,
        )
        op.on_batch(0, batch)
    # Each sort holds at most the batch (10 rows) and 3 kept rows of each of its 10 keys.
    assert len(sorted_rows) >= 20 and max(sorted_rows) <= 10 + 3 * 10
