"""sink_kafka(delivery="exactly-once") and read_committed sources against the real broker."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

import tideflow as tf
from tideflow._errors import JobError
from tideflow.connectors import kafka
from tideflow.connectors._kafka_txn import ExactlyOnceWriter

from .test_kafka_connectors import drain, new_topic, produce_raw

pytestmark = pytest.mark.kafka


def _numbers(bootstrap: str, n: int, partitions: int = 2) -> str:
    topic = new_topic(bootstrap, partitions=partitions)
    produce_raw(bootstrap, topic, [(f"k{i % 5}".encode(), str(i).encode()) for i in range(n)])
    return topic


def _flow(bootstrap: str, inp: str, out: str, txn: str) -> tf.Dataflow:
    flow = tf.Dataflow("eos_copy")
    flow.source(kafka.scan_kafka(inp, bootstrap=bootstrap, format="text"), name="read").select(
        "key", "value"
    ).sink(
        kafka.sink_kafka(
            out,
            bootstrap=bootstrap,
            key="key",
            value="value",
            delivery="exactly-once",
            transactional_id=txn,
        ),
        name="write",
    )
    return flow


def _values(bootstrap: str, topic: str, *, stable: bool = False) -> list[int]:
    """Values visible to a read_committed consumer, read to the end of the topic (or, with
    ``stable``, to its last stable offset: an open transaction is not waited for)."""
    from confluent_kafka import Consumer, TopicPartition

    base = {"bootstrap.servers": bootstrap, "group.id": f"v-{uuid.uuid4().hex}"}
    iso = "read_committed" if stable else "read_uncommitted"
    c = Consumer({**base, "isolation.level": iso})
    parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
    high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.close()
    c = Consumer({**base, "isolation.level": "read_committed"})
    todo = {p for p in parts if high[p]}
    c.assign([TopicPartition(topic, p, 0) for p in todo])
    got: list[int] = []
    deadline = time.monotonic() + 60
    while todo:
        assert time.monotonic() < deadline, f"could not read {topic} to its end"
        got += [int(m.value()) for m in c.consume(10_000, 0.2) if m.error() is None]
        for tp in c.position([TopicPartition(topic, p) for p in todo]):
            if tp.offset >= high[tp.partition]:
                todo.discard(tp.partition)
    c.close()
    return sorted(got)


def test_crash_between_checkpoint_and_kafka_commit_rolls_forward(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inp = _numbers(kafka_bootstrap, 6000)
    out = new_topic(kafka_bootstrap, partitions=3)
    txn = f"t-{uuid.uuid4().hex[:8]}"
    real = ExactlyOnceWriter.commit
    staged: list[int] = []

    def cut(self: ExactlyOnceWriter, checkpoint_id: int) -> None:
        if self._staged is not None:
            staged.append(checkpoint_id)
            if len(staged) == 2:  # the second checkpoint with output: cut its commit
                raise OSError("power cut between the checkpoint manifest and the Kafka commit")
        real(self, checkpoint_id)

    monkeypatch.setattr(ExactlyOnceWriter, "commit", cut)
    kw = {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": timedelta(milliseconds=20)}
    with pytest.raises(JobError, match="failed to commit checkpoint"):
        tf.run(_flow(kafka_bootstrap, inp, out, txn), batch_size=100, **kw)  # type: ignore[arg-type]
    # the crashed job's transaction is still open (until the restart fences it): not visible
    before = _values(kafka_bootstrap, out, stable=True)
    assert 0 < len(before) < 6000  # the first checkpoint committed, the second did not
    monkeypatch.setattr(ExactlyOnceWriter, "commit", real)
    with caplog.at_level(logging.INFO, logger="tideflow.connectors._kafka_txn"):
        tf.run(_flow(kafka_bootstrap, inp, out, txn), batch_size=100, **kw)  # type: ignore[arg-type]
    assert f"rolled forward checkpoint {staged[1]}" in caplog.text
    assert _values(kafka_bootstrap, out) == list(range(6000))  # each once


def test_two_workers_commit_with_the_checkpoints(kafka_bootstrap: str, tmp_path: Path) -> None:
    inp = _numbers(kafka_bootstrap, 20_000, partitions=4)
    out = new_topic(kafka_bootstrap, partitions=2)
    flow = _flow(kafka_bootstrap, inp, out, f"t-{uuid.uuid4().hex[:8]}")
    result = tf.run(
        flow,
        workers=2,
        batch_size=500,
        checkpoint_dir=tmp_path / "ck",
        checkpoint_interval=timedelta(milliseconds=50),
    )
    assert result.completed
    assert _values(kafka_bootstrap, out) == list(range(20_000))


def test_without_checkpoints_a_bounded_run_commits_at_its_end(kafka_bootstrap: str) -> None:
    inp = _numbers(kafka_bootstrap, 3000)
    out = new_topic(kafka_bootstrap)
    tf.run(_flow(kafka_bootstrap, inp, out, f"t-{uuid.uuid4().hex[:8]}"), batch_size=500)
    assert _values(kafka_bootstrap, out) == list(range(3000))


@pytest.mark.parametrize("config", [{}, {"isolation.level": "read_committed"}])
def test_source_reads_only_committed_transactions(
    kafka_bootstrap: str, config: dict[str, str]
) -> None:
    from confluent_kafka import Producer

    topic = new_topic(kafka_bootstrap, partitions=2)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": uuid.uuid4().hex})
    p.init_transactions(30)
    for i, commit in enumerate([True, False, True, False]):
        p.begin_transaction()
        for j in range(50):
            p.produce(topic, f"{i}-{j}".encode(), key=str(j).encode())
        if commit:
            p.commit_transaction(30)
        else:
            # Deliver first: librdkafka may fail an abort whose partitions are still being
            # added to the transaction with a fatal INVALID_TXN_STATE (librdkafka#4849).
            p.flush(30)
            p.abort_transaction(30)
    src = kafka.scan_kafka(topic, bootstrap=kafka_bootstrap, format="text", config=config)
    from tideflow.connectors._base import SourceContext

    reader = src.build(SourceContext("read", 0, 1, 1000))
    try:
        data, _ = drain(reader, timeout=30)
        assert reader.finished  # the bounded read ends although the logs end with markers
    finally:
        reader.close()
    assert sorted(data["value"].to_list()) == sorted(f"{i}-{j}" for i in (0, 2) for j in range(50))


def test_docs_example_runs(kafka_bootstrap: str) -> None:
    """The exactly-once example of docs/checkpoints.md, against the real broker."""
    import pathlib
    import re

    page = pathlib.Path(__file__).parents[2] / "docs" / "checkpoints.md"
    section = page.read_text().split("## Exactly-once to Kafka", 1)[1]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    topic = new_topic(kafka_bootstrap)
    code = block.replace('"127.0.0.1:19092"', repr(kafka_bootstrap)).replace(
        '"card-totals"', repr(topic)
    )
    assert code != block
    exec(compile(code, str(page), "exec"), {})
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": uuid.uuid4().hex})
    c.assign([TopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        got += [m.value() for m in c.consume(10, 0.2) if m.error() is None]
    c.close()
    assert sorted(got) == [b'{"card":"c1","total":10}', b'{"card":"c2","total":5}']


def test_at_most_once_loses_a_cut_commit_and_never_sends_twice(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tideflow.connectors._kafka_sink import _AtMostOnceWriter

    inp = _numbers(kafka_bootstrap, 6000)
    out = new_topic(kafka_bootstrap, partitions=3)

    def flow() -> tf.Dataflow:
        f = tf.Dataflow("amo_copy")
        f.source(
            kafka.scan_kafka(inp, bootstrap=kafka_bootstrap, format="text"), name="read"
        ).select("key", "value").sink(
            kafka.sink_kafka(
                out, bootstrap=kafka_bootstrap, key="key", value="value", delivery="at-most-once"
            ),
            name="write",
        )
        return f

    real = _AtMostOnceWriter.commit
    staged: list[int] = []
    lost: set[int] = set()

    def cut(self: _AtMostOnceWriter, checkpoint_id: int) -> None:
        if self._hold.staged is not None:
            staged.append(checkpoint_id)
            if len(staged) == 2:  # the second checkpoint with output: cut before sending
                lost.update(int(v) for f in self._hold.pending for v in f["value"])
                raise OSError("power cut between the checkpoint manifest and the sending")
        real(self, checkpoint_id)

    monkeypatch.setattr(_AtMostOnceWriter, "commit", cut)
    kw = {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": timedelta(milliseconds=20)}
    with pytest.raises(JobError, match="failed to commit checkpoint"):
        tf.run(flow(), batch_size=100, **kw)  # type: ignore[arg-type]
    first = _values(kafka_bootstrap, out)
    assert 0 < len(first) < 6000  # the first checkpoint's records were sent
    monkeypatch.setattr(_AtMostOnceWriter, "commit", real)
    tf.run(flow(), batch_size=100, **kw)  # type: ignore[arg-type]
    got = _values(kafka_bootstrap, out)
    assert lost and set(first).isdisjoint(lost)
    assert got == sorted(set(range(6000)) - lost)  # the cut checkpoint's lost, nothing twice
