"""Consistent reads of keyed state (the engine side of SQL over state), with 1 and 2 workers.

Every read must equal a brute-force aggregation over exactly the records each worker's source
had pushed before the cut, for every keyed step at once.
"""

from __future__ import annotations

import contextlib
import threading
import time

import polars as pl
import pytest
from dash_helpers import Interleaved, interleaved_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow._errors import StateError
from tideflow.runtime import BaseObserver, RunControl, StateSnapshot
from tideflow.testing import CollectSink


class _Handle(BaseObserver):
    def __init__(self) -> None:
        self.control: RunControl | None = None

    def on_control(self, control: RunControl) -> None:
        self.control = control


def _flow(name: str, batches: int, rows: int, pause: float) -> tf.Dataflow:
    flow = tf.Dataflow(name)
    src = flow.source(Interleaved(batches, rows, pause), name="src")
    src.key_by("k").agg(pl.len().alias("n"), pl.col("v").sum().alias("total"), name="per_k").sink(
        CollectSink(), name="out_k"
    )
    src.with_columns(g=pl.col("i") % 7, name="grp").key_by("g").agg(
        pl.col("i").max().alias("top"), pl.len().alias("n"), name="per_g"
    ).sink(CollectSink(), name="out_g")
    return flow


def _reference(snap: StateSnapshot, workers: int, rows: int) -> pl.DataFrame:
    """The records before the cut: each worker's first ``records`` rows."""
    parts = []
    for worker, records in snap.cut.select("worker", "records").iter_rows():
        if records:
            assert records % rows == 0  # whole source batches, never part of one
            parts.append(interleaved_rows(worker, workers, 0, records))
    schema = {"i": pl.Int64, "k": pl.String, "v": pl.Int64}
    return pl.concat(parts) if parts else pl.DataFrame(schema=schema)


def _check(snap: StateSnapshot, workers: int, rows: int, name: str) -> None:
    seen = _reference(snap, workers, rows)
    want_k = seen.group_by("k").agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
    want_g = (
        seen.with_columns(g=pl.col("i") % 7)
        .group_by("g")
        .agg(pl.col("i").max().alias("top"), pl.len().alias("n"))
    )
    got_k = snap.tables[f"{name}.per_k"]
    got_g = snap.tables[f"{name}.per_g"]
    assert sorted(got_k.select("k", "n", "total").rows()) == sorted(want_k.rows())
    assert sorted(got_g.select("g", "top", "n").rows()) == sorted(want_g.rows())


def _reads_while_running(
    name: str, workers: int, batches: int, rows: int, pause: float
) -> list[StateSnapshot]:
    steps = [f"{name}.per_k", f"{name}.per_g"]
    return _reads(_flow(name, batches, rows, pause), workers, steps)


def _reads(
    flow: tf.Dataflow, workers: int, steps: list[str], most: int | None = None
) -> list[StateSnapshot]:
    """Run ``flow`` in a thread and read the state of ``steps`` until it ends (or ``most``)."""
    handle = _Handle()
    job = threading.Thread(
        target=tf.run, args=(flow,), kwargs={"observers": [handle], "workers": workers}
    )
    job.start()
    snaps: list[StateSnapshot] = []
    try:
        while job.is_alive() and (most is None or len(snaps) < most):
            if handle.control is not None:
                # Once workers start finishing, a read cannot be complete: StateError.
                with contextlib.suppress(StateError):
                    snaps.append(handle.control.read_state(steps, timeout=30))
            time.sleep(0.02)
    finally:
        job.join(timeout=60)
    return snaps


@pytest.mark.parametrize("workers", [1, 2])
def test_reads_match_brute_force_over_the_records_before_the_cut(workers: int) -> None:
    name = f"cut{workers}"
    snaps = _reads_while_running(name, workers, batches=150, rows=40, pause=0.01)
    assert len(snaps) >= 3
    cuts = [int(s.cut["records"].sum()) for s in snaps]
    assert cuts == sorted(cuts)  # later reads see more
    assert any(0 < c < workers * 150 * 40 for c in cuts)  # some taken mid-stream
    for snap in snaps:
        assert snap.cut.height == workers
        _check(snap, workers, 40, name)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.integers(min_value=5, max_value=40),
    rows=st.integers(min_value=1, max_value=60),
)
def test_reads_one_worker_property(batches: int, rows: int) -> None:
    for snap in _reads_while_running("prop", 1, batches, rows, pause=0.005):
        _check(snap, 1, rows, "prop")


def test_unknown_step_and_after_the_end() -> None:
    flow = _flow("ended", 2, 5, 0.0)
    handle = _Handle()
    tf.run(flow, observers=[handle])
    assert handle.control is not None
    with pytest.raises(StateError, match="has no queryable keyed state"):
        handle.control.read_state(["ended.grp"])
    with pytest.raises(StateError, match="run has ended"):
        handle.control.read_state(["ended.per_k"])


@pytest.mark.parametrize("workers", [1, 2])
def test_top_n_state_read_matches_brute_force(workers: int) -> None:
    flow = tf.Dataflow(f"top{workers}")
    flow.source(Interleaved(100, 30, pause=0.01), name="src").key_by("k").top_n(
        2, by="v", descending=True, rank="r", name="best"
    ).sink(CollectSink(), name="out")
    snaps = _reads(flow, workers, [f"top{workers}.best"], most=3)
    assert snaps
    for snap in snaps:
        seen = _reference(snap, workers, 30)
        want = sorted(
            seen.sort("v", descending=True)
            .group_by("k", maintain_order=True)
            .head(2)
            .select("k", "v")
            .rows()
        )
        got = snap.tables.get(f"top{workers}.best")
        rows = sorted(got.select("k", "v").rows()) if got is not None else []
        assert rows == want
        if got is not None:
            assert set(got["r"].to_list()) <= {1, 2}
