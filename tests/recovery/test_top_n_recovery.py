"""``top_n`` with incremental snapshots: a job aborted mid-stream resumes from its checkpoint
(1 and 2 workers, and rescaled on resume) and emits what a run that never stopped emits; the
operator restored from any checkpoint of a sequence goes on like the one that was not; the
checkpoints share the chunks of the state that did not change.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.recovery._sha256 import as_sha256
from tests.runtime.test_top_n import _Ctx

import tideflow as tf
from tideflow.runtime._operators import TopNOperator
from tideflow.state import Checkpoint, CheckpointStore, load_savepoint, write_savepoint
from tideflow.state._resume import JOB, resume_for
from tideflow.testing import ABORT, PAUSE, CollectSink, TestingSource

SCHEMA = {"k": pl.Int64(), "a": pl.Int64(), "b": pl.Int64()}
BATCH = 20
MS, MIN = timedelta(milliseconds=1), timedelta(seconds=60)


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    # b is unique: with two workers the arrival order of ties is not the source order.
    return [{"k": rnd.randrange(100), "a": rnd.randrange(30), "b": i} for i in range(n)]


def _reference(rows: list[dict[str, Any]], n: int) -> list[tuple[int, int, int, int]]:
    """Brute force: each key's rows by a descending, then b ascending; the first n, ranked."""
    by_key: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault(r["k"], []).append(r)
    out = []
    for k, recs in by_key.items():
        ranked = sorted(recs, key=lambda r: (-r["a"], r["b"]))[:n]
        out += [(k, r["a"], r["b"], i + 1) for i, r in enumerate(ranked)]
    return sorted(out)


def _items(rows: list[dict[str, Any]], at: int, marker: Any) -> list[Any]:
    """Rows with a PAUSE after every third batch (checkpoints happen), ``marker`` at ``at``."""
    items: list[Any] = []
    for i in range(0, len(rows), BATCH):
        if i == at:
            items.append(marker)
        items += rows[i : i + BATCH]
        if (i // BATCH) % 3 == 2:
            items.append(PAUSE)
    return items


def _flow(items: list[Any], out: CollectSink) -> tf.Dataflow:
    flow = tf.Dataflow("topn_rec")
    src = flow.source(TestingSource(items, batch_size=BATCH, schema=SCHEMA))
    src.key_by("k").top_n(
        3, by=["a", "b"], descending=[True, False], rank="rank", emit="final", name="top"
    ).sink(out)
    return flow


def _run(items: list[Any], out: CollectSink, workers: int, **kw: Any) -> None:
    tf.run(_flow(items, out), workers=workers, batch_size=BATCH, **kw)


def _chunks(ck: Path) -> list[list[str]]:
    """The chunk names of each checkpoint left in ``ck``."""
    out = []
    for d in sorted(ck.glob("chk-*")):
        man = json.loads((d / "MANIFEST.json").read_text())
        out.append([c["name"] for e in man["parts"].values() for c in e.get("chunks", [])])
    return out


def _source_rows(cp: Checkpoint, workers: int) -> int:
    """Source rows the checkpoint's workers had read (TestingSource positions)."""
    return sum(int(p["topn_rec.source"][f"w{w}of{workers}"]) for w, p in enumerate(cp.parts))


def _aborted(rows: list[dict[str, Any]], at: int, workers: int, ck: Path, **kw: Any) -> Checkpoint:
    """Run the job into an abort at row ``at`` with checkpoints every millisecond; the latest.

    A checkpoint needs every worker: under load a spawned worker still importing can leave
    the other to reach the abort before any checkpoint holds a source row. Such a run tests
    nothing; it is run again from scratch (five times at most).
    """
    for _attempt in range(5):
        shutil.rmtree(ck, ignore_errors=True)
        crashed = CollectSink()
        with pytest.raises(tf.JobError, match="ABORT"):
            _run(_items(rows, at, ABORT), crashed, workers, checkpoint_dir=ck, **kw)
        assert crashed.frame().height == 0  # final: nothing is emitted before the end
        cp = CheckpointStore(ck).latest()
        if cp is not None and _source_rows(cp, workers) > 0:
            break
    assert cp is not None and cp.workers == workers
    assert _source_rows(cp, workers) > 0
    return cp


# TestingSource keeps its positions per worker count: rescaled resumes are tested on the
# operator (tests/runtime/test_top_n.py) and with a savepoint below.
@pytest.mark.parametrize("workers", [1, 2])
def test_top_n_job_resumes_like_an_uninterrupted_run(
    workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = after = workers
    monkeypatch.setattr(TopNOperator, "FOLD_ROWS", 16)  # folds often (in-process worker)
    rows = _rows(3000, seed=workers)
    want = _reference(rows, 3)
    ref_out = CollectSink()
    _run(_items(rows, 1800, PAUSE), ref_out, before)
    assert sorted(ref_out.frame().rows()) == want

    ck = tmp_path / "ck"
    # Every checkpoint kept: how often chunks were shared.
    cp = _aborted(rows, 1800, before, ck, checkpoint_interval=MS, checkpoint_keep=1000)
    snaps = [p["topn_rec.top"] for p in cp.parts]
    assert all(s["version"] == 2 for s in snaps)
    assert any(s["chunks"] for s in snaps)
    names = _chunks(ck)
    # Unchanged state is shared: a checkpoint writes at most one chunk per worker and refers
    # to the earlier ones. How many checkpoints fit before the abort depends on the machine's
    # load (two worker processes align each one): with many, far fewer chunk files than
    # references to them; with one worker there are dozens.
    written = {n for c in names for n in c}
    refs = sum(map(len, names))
    assert len(names) >= 2 and len(written) <= before * len(names)
    if len(names) >= 3:
        assert len(written) < refs
    if len(names) >= 6:
        assert len(written) < refs / 2
    # Chunks of a checkpoint cut short by the abort may be left until the next one completes.
    assert {n for c in names for n in c} <= {p.name for p in (ck / "shared").iterdir()}

    resumed = CollectSink()
    _run(_items(rows, 1800, PAUSE), resumed, after, checkpoint_dir=ck, checkpoint_interval=MIN)
    assert sorted(resumed.frame().rows()) == want
    names = _chunks(ck)
    assert {p.name for p in (ck / "shared").iterdir()} == {n for c in names for n in c}


def test_top_n_savepoint_is_whole_without_the_checkpoints(tmp_path: Path) -> None:
    rows = _rows(2000, seed=5)
    ck = tmp_path / "ck"
    cp = _aborted(rows, 1200, 2, ck, checkpoint_interval=MS)
    sp = write_savepoint(cp.path, tmp_path / "sp")
    shutil.rmtree(ck)
    assert (sp / "shared").is_dir() and load_savepoint(sp)[0].id == cp.id
    out, ck2 = CollectSink(), tmp_path / "ck2"
    _run(_items(rows, 1200, PAUSE), out, 2, from_savepoint=sp, checkpoint_dir=ck2)
    assert sorted(out.frame().rows()) == _reference(rows, 3)
    # (The checkpoint after the end holds no chunk: none may be left.)
    shared = ck2 / "shared"
    left = {p.name for p in shared.iterdir()} if shared.is_dir() else set()
    assert left == {n for c in _chunks(ck2) for n in c}


@pytest.mark.parametrize("workers", [1, 2])
def test_top_n_job_resumes_from_checkpoints_with_sha256_sums(
    workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints written before session 8 (SHA-256 sums, not XXH3) are verified and resumed."""
    monkeypatch.setattr(TopNOperator, "FOLD_ROWS", 16)
    rows = _rows(2400, seed=10 + workers)
    ck = tmp_path / "ck"
    _aborted(rows, 1500, workers, ck, checkpoint_interval=MS, checkpoint_keep=1000)
    for d in sorted(ck.glob("chk-*")):
        as_sha256(d)
    old = CheckpointStore(ck).latest()
    assert old is not None and _source_rows(old, workers) > 0
    old_chunks = {n for c in _chunks(ck) for n in c}
    assert old_chunks  # the state is in chunks, verified by SHA-256 on load
    resumed = CollectSink()
    _run(_items(rows, 1500, PAUSE), resumed, workers, checkpoint_dir=ck, checkpoint_interval=MS)
    assert sorted(resumed.frame().rows()) == _reference(rows, 3)
    # The resumed job's checkpoints load: the old chunks they still name keep their SHA-256.
    new = CheckpointStore(ck).latest()
    assert new is not None and new.id > old.id
    for d in sorted(ck.glob("chk-*")):
        man = json.loads((d / "MANIFEST.json").read_text())
        for part in man["parts"].values():
            for c in part.get("chunks", []):
                assert ("sha256" in c) == (c["name"] in old_chunks), c


def _op(emit: str) -> TopNOperator:
    flow = tf.Dataflow("topn_op")
    src = flow.source(TestingSource([], schema=SCHEMA))
    node = src.key_by("k").top_n(2, by=["a", "b"], descending=[True, False], emit=emit).node
    return TopNOperator(node, _Ctx(), emit)  # type: ignore[arg-type]


def _emitted(op: TopNOperator) -> list[tuple[Any, ...]]:
    return sorted(r for f in op.ctx.out for r in f.rows())  # type: ignore[attr-defined]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    cuts=st.sets(st.integers(0, 12)),
    restore_at=st.integers(0, 12),
    emit=st.sampled_from(["final", "updates"]),
    fold=st.sampled_from([4, 10, 1000]),
    seed=st.integers(0, 1000),
)
def test_top_n_restored_from_any_checkpoint_goes_on_like_the_original(
    sizes: list[int],
    cuts: set[int],
    restore_at: int,
    emit: str,
    fold: int,
    seed: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    rnd = random.Random(seed)
    batches, i = [], 0
    for size in sizes:
        recs = [{"k": rnd.randrange(4), "a": rnd.randrange(5), "b": i + j} for j in range(size)]
        batches.append(pl.DataFrame(recs, schema=SCHEMA))
        i += size
    saved = TopNOperator.FOLD_ROWS
    TopNOperator.FOLD_ROWS = fold
    try:
        plain, op = _op(emit), _op(emit)
        store = CheckpointStore(tmp_path_factory.mktemp("topn"))
        resumed: TopNOperator | None = None
        for b, batch in enumerate(batches):
            plain.on_batch(0, batch)
            if resumed is not None:
                resumed.on_batch(0, batch)
                continue
            op.on_batch(0, batch)
            if b in cuts or b == restore_at:
                store.write(b + 1, [{op.node.step_id: op.snapshot()}])
            if b == restore_at:
                resumed = _op(emit)
                cp = store.latest()
                assert cp is not None
                resumed.restore(resume_for(cp, [op.node], 0, 1)[op.node.step_id])
                emitted_before = list(op.ctx.out)  # type: ignore[attr-defined]
                resumed.ctx.out.extend(emitted_before)  # type: ignore[attr-defined]
        for o in (plain, op if resumed is None else resumed):
            o.on_end()
        got = _emitted(op if resumed is None else resumed)
        assert got == _emitted(plain)
        if emit == "final":
            want = _reference([r for f in batches for r in f.rows(named=True)], 2)
            assert got == [(k, a, b) for k, a, b, _ in want]
        # Every chunk of every checkpoint left is a file in shared/, and no other file is.
        named = {n for c in _chunks(store.path) for n in c}
        if store.shared.is_dir():
            assert {p.name for p in store.shared.iterdir()} == named
    finally:
        TopNOperator.FOLD_ROWS = saved


def test_each_checkpoint_writes_one_chunk_of_what_is_new(tmp_path: Path) -> None:
    saved = TopNOperator.FOLD_ROWS
    TopNOperator.FOLD_ROWS = 8
    try:
        op = _op("final")
        store = CheckpointStore(tmp_path, keep=10)
        rows = [{"k": i % 50, "a": i % 7, "b": i} for i in range(600)]
        snaps = []
        for cid, (lo, hi) in enumerate([(0, 30), (30, 33), (33, 60), (60, 61)], start=1):
            op.on_batch(0, pl.DataFrame(rows[lo:hi], schema=SCHEMA))  # folds at 30 and 60
            snaps.append(op.snapshot())
            store.write(cid, [{op.node.step_id: snaps[-1]}])
        # Folds do not rewrite the state: every chunk is written once, then referred to.
        assert [len(s["chunks"]) for s in snaps] == [1, 2, 3, 4]
        assert all(
            s["chunks"][:-1] == t["chunks"] for s, t in zip(snaps[1:], snaps[:-1], strict=False)
        )
        names = _chunks(tmp_path)
        assert len({n for c in names for n in c}) == 4
        assert all(set(a) <= set(b) for a, b in itertools.pairwise(names))
        assert op.log.rows == 30 + 3 + 27 + 1  # distinct keys so far: nothing dropped
        # Keys updated again and again: once the chunks hold more than twice the state's rows,
        # the state becomes the only chunk.
        counts = []
        for start in range(61, 600, 20):
            op.on_batch(0, pl.DataFrame(rows[start : start + 20], schema=SCHEMA))
            snap = op.snapshot()
            store.write(start, [{op.node.step_id: snap}])
            assert op.log.rows <= 2 * op.kept.height + op.FOLD_ROWS
            counts.append(len(snap["chunks"]))
        # Compacted (50 keys x 2 rows: 100 rows; a chunk holds the rows of 20 that entered them).
        assert 1 in counts and max(counts) < 25
        fresh = _op("final")
        fresh.restore(store.latest().parts[0][op.node.step_id])  # type: ignore[union-attr]
        fresh.on_end()
        op.on_end()
        assert _emitted(fresh) == _emitted(op)
    finally:
        TopNOperator.FOLD_ROWS = saved


def _parts_rows(out: Path) -> list[tuple[int, int, int, int]]:
    """The rows of the committed part files of ``sink_jsonl_parts`` (k, a, b, rank)."""
    rows = []
    for p in sorted(out.glob("*.jsonl")):
        frame = pl.read_ndjson(p)
        rows += [tuple(r) for r in frame.select("k", "a", "b", "rank").rows()]
    return sorted(rows)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("commit_cut", [False, True])
def test_top_n_job_resumed_after_its_end_writes_nothing_twice(
    workers: int, commit_cut: bool, tmp_path: Path
) -> None:
    """A restart from the checkpoint taken after the end of the input (its sinks' output
    committed, or staged when a crash cut the commit short) leaves the output as it was:
    the checkpoint says the job had ended, and the results are not written again."""
    from tideflow.connectors import files

    rows = _rows(1500, seed=40 + workers)
    want = _reference(rows, 3)
    ck, out = tmp_path / "ck", tmp_path / "out"

    def run(**kw: Any) -> None:
        flow = tf.Dataflow("topn_rec")
        src = flow.source(TestingSource(_items(rows, -1, PAUSE), batch_size=BATCH, schema=SCHEMA))
        src.key_by("k").top_n(
            3, by=["a", "b"], descending=[True, False], rank="rank", emit="final", name="top"
        ).sink(files.sink_jsonl_parts(out))
        tf.run(flow, workers=workers, batch_size=BATCH, checkpoint_dir=ck, **kw)

    run(checkpoint_interval=MIN)
    assert _parts_rows(out) == want
    last = CheckpointStore(ck).latest()
    assert last is not None
    assert all(p[JOB] == {"ended": True} for p in last.parts)
    assert any(p["topn_rec.top"]["chunks"] for p in last.parts)  # an input that may grow
    if commit_cut:  # as if the crash came between the checkpoint and the sink's commit
        for p in out.glob("*.jsonl"):
            p.rename(p.with_name(p.name + ".pending"))
    run(checkpoint_interval=MIN)
    assert _parts_rows(out) == want
    # Rescaled, through a savepoint of the finished job: still nothing more.
    sp = write_savepoint(CheckpointStore(ck).latest().path, tmp_path / "sp")  # type: ignore[union-attr]
    shutil.rmtree(ck)
    run(checkpoint_interval=MIN, from_savepoint=sp)
    assert _parts_rows(out) == want
