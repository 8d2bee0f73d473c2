"""sink_postgres(delivery=...) against the real server: every crash point of the state machine.

A small driver plays the runtime's part: batches are written, every few batches a checkpoint
is taken (``pre_commit``, then the "manifest": the snapshot becomes the newest complete
checkpoint, then ``commit``). A crash closes the writer's connection without anything else
(what SIGKILL does to a PostgreSQL session: its open transaction is rolled back); the restart
builds a new writer from the newest complete checkpoint and replays the input from its
position. The table is compared with the input: every row exactly once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow._errors import JobError
from tideflow.connectors import postgres
from tideflow.connectors._base import SinkContext, SinkWriter
from tideflow.connectors._postgres_txn import TransactionalWriter
from tideflow.testing import TestingSource

from .test_postgres_connectors import query, table_name

pytestmark = pytest.mark.postgres

#: Where a run dies in the checkpoint it is taking.
POINTS = ("batch", "pre_commit", "manifest", "commit")


def _batches(n: int, size: int = 7) -> list[pl.DataFrame]:
    return [
        pl.DataFrame({"id": list(range(b * size, (b + 1) * size)), "v": [f"r{b}"] * size})
        for b in range(n)
    ]


def _ids(dsn: str, table: str) -> Counter[int]:
    return Counter(r[0] for r in query(dsn, f"SELECT id FROM {table}"))


@dataclass
class Job:
    """The input, the checkpoint cadence and the newest complete checkpoint."""

    dsn: str
    table: str
    delivery: str
    batches: list[pl.DataFrame]
    every: int = 3
    checkpoint: dict[str, Any] | None = None  # {"pos", "cid", "sink": merged sink state}
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def writer(self, worker: int = 0, workers: int = 1) -> SinkWriter:
        sink = postgres.sink_postgres(
            self.dsn,
            self.table,
            create=True,
            delivery=self.delivery,  # type: ignore[arg-type]
        )
        resume = self.checkpoint["sink"] if self.checkpoint else {}
        ctx = SinkContext("store", worker, workers, resume, checkpointing=True, job="eos")
        return sink.build(ctx)

    def run(self, crash: tuple[int, str] | None = None) -> bool:
        """Run from the newest checkpoint; die at ``crash`` = (checkpoint id, point)."""
        w = self.writer()
        pos = self.checkpoint["pos"] if self.checkpoint else 0
        cid = self.checkpoint["cid"] if self.checkpoint else 0
        while pos < len(self.batches):
            cid += 1
            for b in self.batches[pos : pos + self.every]:
                w.write(b)
                pos += 1
                if crash == (cid, "batch"):
                    return _die(w)
            snap = w.pre_commit(cid)
            if crash == (cid, "pre_commit"):
                return _die(w)
            self.checkpoint = {"pos": pos, "cid": cid, "sink": snap}
            self.checkpoints.append(self.checkpoint)
            if crash == (cid, "manifest"):
                return _die(w)
            w.commit(cid)
            if crash == (cid, "commit"):
                return _die(w)
        w.close()
        return True


def _die(w: SinkWriter) -> bool:
    conn = getattr(w, "_conn")  # noqa: B009 - the session dies: PostgreSQL rolls it back
    conn.close()
    return False


def test_each_crash_point_exactly_once(postgres_dsn: str) -> None:
    for point in POINTS:
        job = Job(postgres_dsn, table_name(), "exactly-once", _batches(12))
        assert not job.run(crash=(2, point))
        assert job.run()
        assert _ids(postgres_dsn, job.table) == Counter(range(12 * 7)), point


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    crashes=st.lists(st.tuples(st.integers(1, 6), st.sampled_from(POINTS)), min_size=1, max_size=5),
    every=st.integers(1, 4),
)
def test_any_sequence_of_crashes_writes_each_row_once(
    postgres_dsn: str, crashes: list[tuple[int, str]], every: int
) -> None:
    job = Job(postgres_dsn, table_name(), "exactly-once", _batches(10, size=3), every=every)
    for cid, point in crashes:
        done = job.checkpoint["cid"] if job.checkpoint else 0
        job.run(crash=(done + cid, point))  # a checkpoint at or after the one resumed from
    assert job.run()
    assert _ids(postgres_dsn, job.table) == Counter(range(30))


def test_the_three_guarantees_side_by_side(postgres_dsn: str) -> None:
    """A crash between checkpoint 2's manifest and its commit, then one mid-interval."""
    got: dict[str, Counter[int]] = {}
    for delivery in ("exactly-once", "at-least-once", "at-most-once"):
        job = Job(postgres_dsn, table_name(), delivery, _batches(12))
        assert not job.run(crash=(2, "manifest"))
        assert not job.run(crash=(3, "batch"))
        assert job.run()
        got[delivery] = _ids(postgres_dsn, job.table)
    every = Counter(range(12 * 7))
    assert got["exactly-once"] == every
    # at-least-once: everything, the rows written after checkpoint 2 twice
    assert set(got["at-least-once"]) == set(every) and max(got["at-least-once"].values()) == 2
    # at-most-once: checkpoint 2's rows (batches 3-5) lost; nothing twice
    assert got["at-most-once"] == Counter(i for i in every if not 21 <= i < 42)


def test_restores_rescaled_roll_forward_every_old_worker(postgres_dsn: str) -> None:
    t = table_name()
    job = Job(postgres_dsn, t, "exactly-once", _batches(4))
    # 2 workers each stage rows under checkpoint 1; the manifest is written; neither commits
    ws = [job.writer(i, 2) for i in range(2)]
    ws[0].write(job.batches[0])
    ws[1].write(job.batches[1])
    merged: dict[str, Any] = {}
    for w in ws:
        merged.update(w.pre_commit(1))
        _die(w)
    job.checkpoint = {"pos": 2, "cid": 1, "sink": merged}
    one = job.writer(0, 1)  # 2 -> 1: worker 0 adopts worker 1's entry
    assert _ids(postgres_dsn, t) == Counter(range(14))
    one.close()
    again = [job.writer(i, 3) for i in range(3)]  # the same checkpoint with 3: nothing more
    for w in again:
        w.close()
    assert _ids(postgres_dsn, t) == Counter(range(14))
    rows = query(
        postgres_dsn,
        "SELECT worker, checkpoint_id, row_count, job, output FROM tideflow_sink_progress "
        "WHERE output = %s ORDER BY worker",
        t,
    )
    assert rows == [(0, 1, 7, "eos", t), (1, 1, 7, "eos", t)]


def test_a_savepoint_restored_twice_writes_its_rows_once(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = Job(postgres_dsn, table_name(), "exactly-once", _batches(9))
    assert not job.run(crash=(2, "manifest"))  # checkpoint 2 complete, not committed
    savepoint = job.checkpoint
    with caplog.at_level(logging.INFO, logger="tideflow.connectors._postgres_txn"):
        assert not job.run(crash=(3, "batch"))  # restored: rolls 2 forward, dies
    assert "rolled forward checkpoint 2" in caplog.text
    job.checkpoint = savepoint  # restore the same savepoint again
    assert job.run()
    assert _ids(postgres_dsn, job.table) == Counter(range(9 * 7))
    # A checkpoint older than what its run committed since (an old savepoint) is not redone,
    # and the rows written after it come again: said in a warning.
    job.checkpoint = job.checkpoints[0]
    caplog.clear()
    assert job.run()
    assert "rows written between the two will be written again" in caplog.text


def test_a_leftover_process_cannot_commit_twice(postgres_dsn: str) -> None:
    job = Job(postgres_dsn, table_name(), "exactly-once", _batches(3))
    old = job.writer()
    old.write(job.batches[0])
    job.checkpoint = {"pos": 1, "cid": 1, "sink": old.pre_commit(1)}
    job.writer().close()  # a restart rolls checkpoint 1 forward
    with pytest.raises(tf.ConnectorError, match=r"already committed .* by another process"):
        old.commit(1)  # the old process wakes up
    assert _ids(postgres_dsn, job.table) == Counter(range(7))
    old.close()


def test_progress_table_that_cannot_be_created_says_what_to_create(postgres_dsn: str) -> None:
    sink = postgres.sink_postgres(
        postgres_dsn,
        table_name(),
        create=True,
        delivery="exactly-once",
        progress_table="no_such_schema.progress",
    )
    with pytest.raises(tf.ConnectorError, match="CREATE TABLE IF NOT EXISTS"):
        sink.build(SinkContext("store", 0, 1, checkpointing=True))


def _paced(batch: pl.DataFrame) -> pl.DataFrame:
    time.sleep(0.01)  # several checkpoints (every 20 ms) over the run
    return batch


def _flow(dsn: str, table: str, delivery: str, n: int) -> tf.Dataflow:
    flow = tf.Dataflow("pg_eos")
    flow.source(TestingSource([{"id": i} for i in range(n)]), name="read").map_batches(
        _paced, name="pace"
    ).sink(
        postgres.sink_postgres(dsn, table, create=True, delivery=delivery),  # type: ignore[arg-type]
        name="store",
    )
    return flow


@pytest.mark.parametrize("delivery", ["exactly-once", "at-most-once"])
def test_a_commit_cut_after_the_checkpoint(
    postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delivery: str
) -> None:
    """The job dies between checkpoint and commit; the restart rolls the checkpoint forward
    (exactly-once) or loses its rows (at-most-once); no row is ever written twice."""
    t, n = table_name(), 3000
    real = TransactionalWriter.commit
    cut: list[int] = []

    def commit(self: TransactionalWriter, checkpoint_id: int) -> None:
        if self._hold.staged is not None:
            cut.append(checkpoint_id)
            if len(cut) == 2:
                raise OSError("power cut between the checkpoint manifest and the commit")
        real(self, checkpoint_id)

    monkeypatch.setattr(TransactionalWriter, "commit", commit)
    kw: dict[str, Any] = {"checkpoint_dir": tmp_path / "ck", "batch_size": 100}
    kw["checkpoint_interval"] = timedelta(milliseconds=20)
    with pytest.raises(JobError, match="failed to commit checkpoint"):
        tf.run(_flow(postgres_dsn, t, delivery, n), **kw)
    before = _ids(postgres_dsn, t)
    assert 0 < sum(before.values()) < n
    monkeypatch.setattr(TransactionalWriter, "commit", real)
    tf.run(_flow(postgres_dsn, t, delivery, n), **kw)
    got = _ids(postgres_dsn, t)
    assert max(got.values()) == 1
    if delivery == "exactly-once":
        assert got == Counter(range(n))
    else:
        assert sum(got.values()) < n  # checkpoint cut[1]'s rows are gone


def test_without_checkpoints_one_transaction_at_the_end(postgres_dsn: str) -> None:
    t = table_name()
    flow = _flow(postgres_dsn, t, "exactly-once", 500)
    assert tf.run(flow, batch_size=50).completed
    assert _ids(postgres_dsn, t) == Counter(range(500))


def test_two_workers_commit_with_the_checkpoints(postgres_dsn: str, tmp_path: Path) -> None:
    t = table_name()
    result = tf.run(
        _flow(postgres_dsn, t, "exactly-once", 5000),
        workers=2,
        batch_size=200,
        checkpoint_dir=tmp_path / "ck",
        checkpoint_interval=timedelta(milliseconds=50),
    )
    assert result.completed
    assert _ids(postgres_dsn, t) == Counter(range(5000))


def test_docs_example_runs(postgres_dsn: str) -> None:
    """The exactly-once example of docs/checkpoints.md, against the real server."""
    import re

    page = Path(__file__).parents[2] / "docs" / "checkpoints.md"
    section = page.read_text().split("## Exactly-once to PostgreSQL", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    t = table_name()
    code = block.replace('"card_alerts"', repr(t))
    code = code.replace('"postgresql://tideflow@127.0.0.1:15432/tideflow"', repr(postgres_dsn))
    assert t in code
    exec(compile(code, str(page), "exec"), {})
    assert query(postgres_dsn, f"SELECT card, total FROM {t} ORDER BY card") == [
        ("c1", 10),
        ("c2", 5),
    ]
