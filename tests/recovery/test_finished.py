"""The last checkpoint of a job whose inputs are fixed keeps no operator state: a run resumed
after the end writes nothing more; more input after all is an error; inputs that may grow keep
their state (the savepoint example of docs/checkpoints.md goes on with new records)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import tideflow as tf
from tideflow import JobError, StateError, windows
from tideflow.connectors import files
from tideflow.state import take_savepoint
from tideflow.state._resume import FINISHED, JOB, finished, resume_for
from tideflow.state._store import Checkpoint, CheckpointStore
from tideflow.testing import TestingSource

ROWS = [{"k": i % 4, "v": i, "t": i} for i in range(200)]


def _flow(out: Path, rows: list[dict[str, int]] = ROWS, fixed: bool = True) -> tf.Dataflow:
    """Per key: a running sum, the top 2 values, and 10 s tumbling counts (three kinds of
    state), all into one exactly-once Parquet sink."""
    flow = tf.Dataflow("fin")
    src = flow.source(TestingSource(rows, batch_size=16, fixed=fixed), name="src")  # type: ignore[arg-type]
    sums = src.key_by("k").agg(pl.col("v").sum().alias("x"), name="sums")
    tops = (
        src.key_by("k")
        .top_n(2, by="v", descending=True, name="tops")
        .select("k", pl.col("v").alias("x"))
    )
    counts = (
        src.event_time("t", unit="s")
        .key_by("k")
        .window(windows.tumbling(timedelta(seconds=10)))
        .agg(pl.col("v").sum().alias("x"), name="win")
        .results.select("k", "x")
    )
    sums.union(tops, counts).sink(files.sink_parquet(out))
    return flow


def _written(out: Path) -> list[tuple[int, int]]:
    parts = sorted(out.rglob("*.parquet"))
    return sorted(pl.read_parquet(parts).rows()) if parts else []


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "may-grow"])
def test_a_finished_job_resumed_writes_nothing_more(
    tmp_path: Path, workers: int, fixed: bool
) -> None:
    ck, out, ref = tmp_path / "ck", tmp_path / "out", tmp_path / "ref"
    assert tf.run(_flow(ref, fixed=fixed), workers=workers).completed  # the reference
    expected = _written(ref)
    assert len(expected) > 4 * 20  # 20 windows per key, and the sums and tops (updates)
    assert tf.run(_flow(out, fixed=fixed), workers=workers, checkpoint_dir=ck).completed
    assert _written(out) == expected
    last = CheckpointStore(ck).latest()
    assert last is not None and last.workers == workers
    for part in last.parts:
        assert part[JOB] == {"ended": True}
        assert not finished(part["fin.src"])  # sources keep their end positions
        steps = [part["fin.sums"], part["fin.tops"], part["fin.win"]]
        # Fixed inputs: the marker only; inputs that may grow: the state, for more input.
        assert all(finished(st) == fixed for st in steps)
    # Resumed at the end: nothing is written twice.
    for _ in range(2):
        assert tf.run(_flow(out, fixed=fixed), workers=workers, checkpoint_dir=ck).completed
        assert _written(out) == expected


def test_a_savepoint_of_a_finished_job_resumes_finished(tmp_path: Path) -> None:
    ck, out = tmp_path / "ck", tmp_path / "out"
    assert tf.run(_flow(out), workers=2, checkpoint_dir=ck).completed
    expected = _written(out)
    sp = take_savepoint(ck, tmp_path / "sp")
    # (TestingSource positions are per worker layout: the same worker count.)
    assert tf.run(_flow(out), workers=2, from_savepoint=sp, checkpoint_dir=tmp_path / "ck2")
    assert _written(out) == expected


def test_more_input_after_a_fixed_end_is_an_error(tmp_path: Path) -> None:
    ck, out = tmp_path / "ck", tmp_path / "out"
    assert tf.run(_flow(out), checkpoint_dir=ck).completed
    more = [*ROWS, *({"k": 1, "v": 1000 + i, "t": 300} for i in range(20))]  # changed after all
    with pytest.raises((StateError, JobError), match="taken after the job finished"):
        tf.run(_flow(out, more), checkpoint_dir=ck)


def test_inputs_that_may_grow_keep_their_state(tmp_path: Path, workers: int) -> None:
    """A directory scan may gain files: its job's last checkpoint keeps the state, a run
    without new files writes nothing, and one with new files adds them to the state (every
    worker writes again: the new records may be another worker's keys)."""
    inp, ck = tmp_path / "in", tmp_path / "ck"
    inp.mkdir()
    pl.DataFrame({"k": [1, 2, 1, 3], "v": [1, 2, 3, 5]}).write_ndjson(inp / "a.jsonl")

    def totals() -> tuple[tf.Dataflow, tf.testing.CollectSink]:
        out = tf.testing.CollectSink()
        flow = tf.Dataflow("grow")
        schema = {"k": pl.Int64, "v": pl.Int64}
        flow.source(files.scan_jsonl(inp, schema=schema)).key_by("k").agg(
            pl.col("v").sum().alias("s"), name="sums"
        ).sink(out)
        return flow, out

    flow, out = totals()
    assert tf.run(flow, workers=workers, checkpoint_dir=ck).completed
    assert sorted(out.frame().rows()) == [(1, 4), (2, 2), (3, 5)]
    last = CheckpointStore(ck).latest()
    assert last is not None and not any(finished(p.get("grow.sums")) for p in last.parts)
    flow, out = totals()  # nothing new: nothing written
    assert tf.run(flow, workers=workers, checkpoint_dir=ck).completed
    assert out.frame().height == 0
    pl.DataFrame({"k": [2, 3], "v": [10, 1]}).write_ndjson(inp / "b.jsonl")
    flow, out = totals()
    assert tf.run(flow, workers=workers, checkpoint_dir=ck).completed
    assert dict(out.frame().rows()) == {1: 4, 2: 12, 3: 6}


def test_rescaling_keeps_the_state_of_workers_that_had_not_finished() -> None:
    """resume_for: a step whose old workers all finished resumes finished; markers beside
    real snapshots are left out of the redistribution (a finished worker holds nothing)."""

    class _Node:
        def __init__(self, step_id: str, kind: str) -> None:
            self.step_id, self.kind, self.spec = step_id, kind, None
            self.inputs: list[tuple[int, str]] = []

    watermarks = {"version": 1, "max_seen": 5}
    cp = Checkpoint(
        id=1,
        path=Path("."),
        workers=2,
        parts=[{"a": dict(FINISHED), "t": dict(FINISHED)}, {"a": dict(FINISHED), "t": watermarks}],
        meta={},
    )
    nodes = [_Node("a", "agg"), _Node("t", "event_time")]
    for w in range(3):
        got = resume_for(cp, nodes, w, 3)
        assert got["a"] == FINISHED
        assert got["t"] == watermarks  # the one real snapshot, not mixed with a marker


def test_an_endless_testing_source_cannot_be_fixed() -> None:
    with pytest.raises(tf.ConfigError, match=r"fixed=True\) needs bounded=True"):
        TestingSource([{"x": 1}], bounded=False, fixed=True)
