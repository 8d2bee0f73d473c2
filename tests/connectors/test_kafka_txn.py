"""The exactly-once Kafka writer's state machine, against an in-memory model of Kafka transactions.

The model keeps what matters for correctness: records of a transaction become visible only when
it commits; ``init`` with a transactional id aborts what an earlier producer with that id left
open and fences that producer. Crashes are simulated by dropping a writer at any point of the
checkpoint protocol and building a new one from the last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow._errors import ConfigError, ConnectorError, StateError
from tideflow.connectors._base import SinkContext
from tideflow.connectors._kafka_txn import ExactlyOnceWriter, marker_key
from tideflow.connectors.kafka import sink_kafka


@dataclasses.dataclass
class Broker:
    """Committed records per topic, open transactions and producer epochs per transactional id."""

    visible: list[tuple[str, bytes | None, bytes | None]] = dataclasses.field(default_factory=list)
    open: dict[str, list[tuple[str, bytes | None, bytes | None]]] = dataclasses.field(
        default_factory=dict
    )
    epochs: Counter[str] = dataclasses.field(default_factory=Counter)
    commit_fails: bool = False

    def output(self) -> list[bytes | None]:
        return [v for t, _, v in self.visible if t == "out"]


class FakeClient:
    def __init__(self, broker: Broker, txn: str) -> None:
        self.b, self.txn, self.epoch = broker, txn, -1
        self.closed = False

    def _check(self) -> None:
        assert not self.closed
        if self.epoch != self.b.epochs[self.txn]:
            raise ConnectorError(f"producer {self.txn} fenced")

    def init(self) -> None:
        self.b.epochs[self.txn] += 1
        self.epoch = self.b.epochs[self.txn]
        self.b.open.pop(self.txn, None)  # abort what the previous producer left open

    def begin(self) -> None:
        self._check()
        assert self.txn not in self.b.open, "a transaction is already open"
        self.b.open[self.txn] = []

    def send(self, keys: list[bytes | None] | None, values: list[bytes | None]) -> None:
        self._check()
        ks = keys if keys is not None else [None] * len(values)
        self.b.open[self.txn].extend(("out", k, v) for k, v in zip(ks, values, strict=True))

    def mark(self, key: bytes, value: bytes) -> None:
        self._check()
        self.b.open[self.txn].append(("commits", key, value))

    def flush(self) -> None:
        self._check()

    def poll(self) -> None:
        self._check()

    def commit(self) -> None:
        self._check()
        if self.b.commit_fails:
            raise ConnectorError("broker unavailable")
        self.b.visible.extend(self.b.open.pop(self.txn))

    def close(self) -> None:
        assert self.txn not in self.b.open or self.epoch != self.b.epochs[self.txn]
        self.closed = True


@dataclasses.dataclass
class FakeBackend:
    broker: Broker
    prepared: int = 0
    lookups: int = 0

    def prepare(self) -> None:
        self.prepared += 1

    def client(self, txn_id: str) -> FakeClient:
        return FakeClient(self.broker, txn_id)

    def last_marker(self, key: bytes) -> int | None:
        import json

        self.lookups += 1
        got = [
            int(json.loads(v or b"")["checkpoint"])
            for t, k, v in self.broker.visible
            if t == "commits" and k == key
        ]
        return max(got, default=None)


def writer(
    backend: FakeBackend,
    resume: dict[str, Any] | None = None,
    worker: int = 0,
    workers: int = 1,
    keep: bool = True,
) -> ExactlyOnceWriter:
    ctx = SinkContext("job.write", worker, workers, resume or {}, checkpointing=keep)
    return ExactlyOnceWriter(
        ctx, key=None, value="v", txn_prefix="tf-job.write", backend=backend, keep_records=keep
    )


def rows(*vals: int) -> pl.DataFrame:
    return pl.DataFrame({"v": [str(v) for v in vals]})


def out(broker: Broker) -> list[int]:
    return sorted(int(v or b"") for v in broker.output())


def test_records_are_visible_only_after_the_checkpoint_commits() -> None:
    b = Broker()
    w = writer(FakeBackend(b))
    w.write(rows(1, 2))
    assert out(b) == []
    snap = w.pre_commit(1)["w0000"]
    assert (snap["checkpoint"], snap["rows"], snap["txn"]) == (1, 2, "tf-job.write-0")
    assert pl.read_ipc(snap["records"])["value"].to_list() == [b"1", b"2"]
    assert out(b) == []  # pre-committed: durable, not visible
    w.commit(1)
    assert out(b) == [1, 2]
    keys = [k for t, k, _ in b.visible if t == "commits"]
    assert keys == [marker_key("tf-job.write-0", snap["token"])]


def test_records_after_the_cut_wait_for_the_commit_and_a_later_commit_id() -> None:
    b = Broker()
    w = writer(FakeBackend(b))
    w.write(rows(1))
    w.pre_commit(5)
    w.write(rows(2))  # after the cut, before the commit of 5: held back
    assert [t for t, _, _ in b.open["tf-job.write-0"]] == ["out", "commits"]
    w.commit(4)  # an older checkpoint: does not commit what 5 staged
    assert out(b) == []
    w.commit(5)
    assert out(b) == [1]
    assert [v for _, _, v in b.open["tf-job.write-0"]] == [b"2"]  # in the next transaction
    assert w.pre_commit(6)["w0000"]["rows"] == 1
    w.commit(6)
    assert out(b) == [1, 2]


def test_a_failed_checkpoint_is_committed_with_the_next() -> None:
    b = Broker()
    w = writer(FakeBackend(b))
    w.write(rows(1))
    w.pre_commit(1)  # the manifest of 1 is never written: no commit(1)
    w.write(rows(2))
    snap = w.pre_commit(2)["w0000"]
    assert snap["rows"] == 2  # everything of the open transaction
    w.commit(2)
    assert out(b) == [1, 2]


def test_idle_checkpoints_open_no_transaction() -> None:
    b = Broker()
    backend = FakeBackend(b)
    w = writer(backend)
    snap = w.pre_commit(1)["w0000"]
    assert snap["rows"] == 0 and snap["checkpoint"] == -1 and not b.open
    w.commit(1)
    w2 = writer(backend, {"w0000": snap})
    assert backend.lookups == 0  # nothing to roll forward
    w2.close()


def test_crash_between_manifest_and_commit_rolls_forward() -> None:
    b = Broker()
    backend = FakeBackend(b)
    w = writer(backend)
    w.write(rows(1, 2, 3))
    snap = w.pre_commit(1)  # the manifest is written; the process dies before commit(1)
    w2 = writer(backend, snap)  # init aborts the open transaction, then rolls forward
    assert out(b) == [1, 2, 3]
    w3 = writer(backend, snap)  # crash again right after: already committed, nothing twice
    assert out(b) == [1, 2, 3]
    assert w2 is not w3


def test_crash_after_commit_does_nothing_twice() -> None:
    b = Broker()
    backend = FakeBackend(b)
    w = writer(backend)
    w.write(rows(1))
    snap = w.pre_commit(1)
    w.commit(1)
    w.write(rows(2))  # the next transaction is open when the process dies
    writer(backend, snap)
    assert out(b) == [1]  # 2 was aborted: the replay from checkpoint 1 writes it again
    assert "tf-job.write-0" not in b.open


def test_zombie_is_fenced() -> None:
    b = Broker()
    backend = FakeBackend(b)
    old = writer(backend)
    old.write(rows(1))
    snap = old.pre_commit(1)
    writer(backend, snap)
    with pytest.raises(ConnectorError, match="fenced"):
        old.commit(1)  # the old process comes back: it cannot commit anymore
    assert out(b) == [1]


def test_rescaling_down_worker_0_adopts_the_transactions_of_removed_workers() -> None:
    b = Broker()
    backend = FakeBackend(b)
    w0, w1 = writer(backend, worker=0, workers=2), writer(backend, worker=1, workers=2)
    w0.write(rows(1))
    w1.write(rows(2))
    resume = {**w0.pre_commit(3), **w1.pre_commit(3)}
    w0.commit(3)  # worker 1 dies before its commit of checkpoint 3
    assert out(b) == [1]
    n0 = writer(backend, resume, worker=0, workers=1)
    assert out(b) == [1, 2]  # worker 1's transaction rolled forward under its own id
    assert set(b.open) == set()
    n0.write(rows(3))
    assert n0.pre_commit(4)["w0000"]["rows"] == 1
    n0.commit(4)
    assert out(b) == [1, 2, 3]


def test_rescaling_up_each_worker_takes_its_own_entry() -> None:
    b = Broker()
    backend = FakeBackend(b)
    w0 = writer(backend)
    w0.write(rows(1))
    snap = w0.pre_commit(2)
    writer(backend, snap, worker=1, workers=2)
    assert out(b) == []  # worker 1 owns no entry of the checkpoint
    writer(backend, snap, worker=0, workers=2)
    assert out(b) == [1]


def test_without_checkpoints_records_are_not_kept_and_the_end_commits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = Broker()
    with caplog.at_level(logging.WARNING, logger="tideflow.connectors._kafka_txn"):
        w = writer(FakeBackend(b), keep=False)
    assert "committed only when a bounded input ends" in caplog.text
    w.write(rows(1, 2))
    w.close()  # end of input: still open, the runtime's pre_commit(0)/commit(0) follows
    assert out(b) == []
    assert w.pre_commit(0)["w0000"]["rows"] == 0
    w.commit(0)
    assert out(b) == [1, 2]


def test_commit_failure_names_the_transaction_timeout() -> None:
    b = Broker()
    w = writer(FakeBackend(b))
    w.write(rows(1))
    w.pre_commit(1)
    b.commit_fails = True
    with pytest.raises(ConnectorError, match=r"transaction\.timeout\.ms"):
        w.commit(1)


def test_damaged_newer_checkpoint_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    b = Broker()
    backend = FakeBackend(b)
    w = writer(backend)
    w.write(rows(1))
    snap1 = w.pre_commit(1)
    w.commit(1)
    w.write(rows(2))
    w.pre_commit(2)
    w.commit(2)
    # checkpoint 2 is damaged: the job resumes from 1, whose marker is older than 2's
    with caplog.at_level(logging.WARNING, logger="tideflow.connectors._kafka_txn"):
        writer(backend, snap1)
    assert "will appear twice" in caplog.text


def test_restoring_an_old_savepoint_then_crashing_rolls_forward() -> None:
    """After a restore of checkpoint 5 from a job that went on to 9, the restored job's new
    checkpoint 6 is not mistaken for the old job's committed 6..9."""
    b = Broker()
    backend = FakeBackend(b)
    w = writer(backend)
    w.write(rows(1))
    savepoint = w.pre_commit(5)
    w.commit(5)
    for c in range(6, 10):
        w.write(rows(c))
        w.pre_commit(c)
        w.commit(c)
    restored = writer(backend, savepoint)  # 6..9 are already visible: they will come twice
    restored.write(rows(100))
    snap = restored.pre_commit(6)  # ids go on after the savepoint's; dies before the commit
    writer(backend, snap)
    assert out(b) == [1, 6, 7, 8, 9, 100]


def test_unknown_snapshot_version() -> None:
    snap = {"w0000": {"version": 99, "rows": 1, "checkpoint": 1, "txn": "x", "token": "t"}}
    with pytest.raises(StateError, match="version 99"):
        writer(FakeBackend(Broker()), snap)


def test_settings_are_checked_before_data_moves() -> None:
    with pytest.raises(ConfigError, match="unknown delivery='exactly_once'"):
        sink_kafka("t", bootstrap="x:1", delivery="exactly_once")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"do not set transactional\.id"):
        sink_kafka("t", bootstrap="x:1", config={"transactional.id": "a"})
    with pytest.raises(ConfigError, match="only with delivery='exactly-once'"):
        sink_kafka("t", bootstrap="x:1", transactional_id="a")
    with pytest.raises(ConfigError, match="needs the idempotent producer"):
        sink_kafka(
            "t", bootstrap="x:1", delivery="exactly-once", config={"enable.idempotence": False}
        )
    with pytest.raises(ConfigError, match="not a valid Kafka topic"):
        sink_kafka("t", bootstrap="x:1", delivery="exactly-once", commit_topic="a b")
    s = sink_kafka("t", bootstrap="x:1", delivery="exactly-once", transactional_id="pay")
    assert (s.delivery, s.transactional_id, s.commit_topic) == ("exactly-once", "pay", None)


# -- a property: crashes at any point of the protocol, output exactly once ---------------------

#: Where the process dies in one round (a round: a batch, then maybe a checkpoint).
CRASH_POINTS = ["none", "after_write", "after_pre_commit", "after_manifest", "after_commit"]


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    plan=st.lists(
        st.tuples(st.booleans(), st.booleans(), st.sampled_from(CRASH_POINTS)),
        min_size=12,
        max_size=12,
    ),
)
def test_any_crash_sequence_gives_each_record_once(
    batches: list[int], plan: list[tuple[bool, bool, str]]
) -> None:
    """A job reads ``sum(batches)`` numbered records from a replayable source, checkpoints
    (sometimes failing to write the manifest) and dies at planned points; restarted from its
    last complete checkpoint each time, its committed output holds every record once."""
    broker = Broker()
    backend = FakeBackend(broker)
    bounds = [sum(batches[:i]) for i in range(len(batches) + 1)]
    total = bounds[-1]
    store: list[tuple[int, int, dict[str, Any]]] = []  # (checkpoint id, batch index, sink state)
    next_id = 1
    crashes = 0
    pos = 0  # batch index to read next
    w = writer(backend)
    step = 0
    while True:
        if pos == len(batches):  # end of input: a last checkpoint commits the rest
            cid, next_id = next_id, next_id + 1
            snap = w.pre_commit(cid)
            store.append((cid, pos, snap))
            w.close()
            w.commit(cid)
            break
        checkpoint, manifest_ok, crash = plan[step % len(plan)]
        step += 1
        if crashes > 30:
            crash = "none"
        w.write(rows(*range(bounds[pos], bounds[pos + 1])))
        pos += 1
        died = crash == "after_write"
        if checkpoint and not died:
            cid, next_id = next_id, next_id + 1
            snap = w.pre_commit(cid)
            died = crash == "after_pre_commit"
            if not died and manifest_ok:
                store.append((cid, pos, snap))
                died = crash == "after_manifest"
                if not died:
                    w.commit(cid)
                    died = crash == "after_commit"
        if died:
            crashes += 1
            last = store[-1] if store else None
            pos = last[1] if last else 0
            next_id = last[0] + 1 if last else 1  # ids of checkpoints never completed come again
            w = writer(backend, last[2] if last else None)  # restart; the old one is a zombie
    assert out(broker) == list(range(total))
    assert not broker.open
