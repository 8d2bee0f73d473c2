"""Kafka source and sink against the real broker started by scripts/services."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors import kafka
from tideflow.connectors._base import SinkContext, SourceBatch, SourceContext, SourceReader

pytestmark = pytest.mark.kafka


def new_topic(bootstrap: str, partitions: int = 1, **config: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config)])
    for f in futures.values():
        f.result(timeout=30)
    return name


def produce_raw(bootstrap: str, topic: str, records: list[tuple[Any, Any]], **extra: Any) -> None:
    """Produce (key, value) pairs with confluent-kafka directly (independent of the sink)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in records:
        p.produce(topic, value=value, key=key, **extra)
    assert p.flush(30) == 0


def consume_raw(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Any]:
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(m for m in c.consume(1000, 0.5) if m.error() is None)
    c.close()
    return got


def drain(
    reader: SourceReader, want: int | None = None, timeout: float = 30
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Poll until finished (bounded) or ``want`` rows (unbounded)."""
    data: list[pl.DataFrame] = []
    dead: list[pl.DataFrame] = []
    rows = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reader.finished or (want is not None and rows >= want):
            break
        got: SourceBatch | None = reader.poll()
        if got is None:
            continue
        if got.data.height:
            data.append(got.data)
            rows += got.data.height
        if got.dead is not None and got.dead.height:
            dead.append(got.dead)
    else:
        pytest.fail(f"timed out after {timeout}s with {rows} rows")
    frame = pl.concat(data, how="vertical_relaxed") if data else pl.DataFrame()
    return frame, (pl.concat(dead) if dead else None)


def ctx(
    step: str = "read",
    index: int = 0,
    count: int = 1,
    batch: int = 500,
    resume: dict[str, Any] | None = None,
) -> SourceContext:
    return SourceContext(step, index, count, batch, resume or {})


def test_sink_round_trip_keys_pick_partitions(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, partitions=4)
    df = pl.DataFrame({"card": [f"c{i % 10}" for i in range(500)], "n": list(range(500))})
    w = kafka.sink_kafka(topic, bootstrap=kafka_bootstrap, key="card").build(SinkContext("w", 0, 1))
    w.write(df.head(200))
    w.write(df.tail(300))
    w.close()
    msgs = consume_raw(kafka_bootstrap, topic, 500)
    assert len(msgs) == 500
    values = sorted(json.loads(m.value())["n"] for m in msgs)
    assert values == list(range(500))
    partitions_of: dict[bytes, set[int]] = {}
    for m in msgs:
        assert json.loads(m.value())["card"] == m.key().decode()
        partitions_of.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions_of.values())  # one partition per key
    assert len({p for ps in partitions_of.values() for p in ps}) > 1  # spread over partitions


def test_bounded_scan_splits_partitions_over_workers(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, partitions=3)
    produce_raw(
        kafka_bootstrap,
        topic,
        [(str(i).encode(), json.dumps({"i": i}).encode()) for i in range(900)],
    )
    src = kafka.scan_kafka(topic, bootstrap=kafka_bootstrap, schema={"i": pl.Int64})
    frames = []
    for w in range(2):
        r = src.build(ctx(index=w, count=2))
        got, dead = drain(r)
        assert dead is None
        frames.append(got)
        snap = r.snapshot()
        r.close()
        assert set(snap) == {f"{topic}/{p}" for p in range(3) if p % 2 == w}
    assert set(frames[0]["partition"]).isdisjoint(set(frames[1]["partition"]))
    both = pl.concat(frames)
    assert sorted(both["i"]) == list(range(900))
    assert both.schema["timestamp"] == pl.Datetime("ms", "UTC")
    assert both.columns == ["key", "i", "topic", "partition", "offset", "timestamp"]


def test_bounded_scan_stops_at_the_end_offsets_of_the_start(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap)
    produce_raw(kafka_bootstrap, topic, [(None, b"%d" % i) for i in range(100)])
    r = kafka.scan_kafka(topic, bootstrap=kafka_bootstrap, format="text").build(ctx(batch=30))
    produce_raw(kafka_bootstrap, topic, [(None, b"late") for _ in range(50)])  # after the start
    got, _ = drain(r)
    assert r.finished
    assert got["value"].to_list() == [str(i) for i in range(100)]
    assert r.snapshot() == {f"{topic}/0": 100}
    r.close()


def test_offsets_resume_without_loss_or_duplicates(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, partitions=2)
    produce_raw(kafka_bootstrap, topic, [(str(i).encode(), b"%d" % i) for i in range(1000)])
    src = kafka.follow_kafka(topic, bootstrap=kafka_bootstrap, format="text")
    first = src.build(ctx(batch=100))
    part1, _ = drain(first, want=300)
    position = first.snapshot()
    first.close()
    assert sum(position.values()) == part1.height
    produce_raw(kafka_bootstrap, topic, [(str(i).encode(), b"%d" % i) for i in range(1000, 1500)])
    # rebuilt from the checkpointed position, now as a bounded read to the current end
    again = kafka.scan_kafka(topic, bootstrap=kafka_bootstrap, format="text")
    second = again.build(ctx(batch=100, resume=position))
    part2, _ = drain(second)
    second.close()
    seen = [int(v) for v in pl.concat([part1, part2])["value"]]
    assert sorted(seen) == list(range(1500))  # nothing lost, nothing twice


def test_bad_messages_become_dead_letters(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap)
    produce_raw(
        kafka_bootstrap,
        topic,
        [
            (None, b'{"n": 1}'),
            (None, b"{not json"),
            (None, b'{"n": "text"}'),
            (None, b"\xff\xfe"),
            (None, b'{"n": 5}'),
        ],
    )
    r = kafka.scan_kafka(topic, bootstrap=kafka_bootstrap, schema={"n": pl.Int64}).build(
        ctx("ingest")
    )
    got, dead = drain(r)
    r.close()
    assert got["n"].to_list() == [1, 5]
    assert got["offset"].to_list() == [0, 4]
    assert dead is not None
    assert dead["origin"].to_list() == [f"{topic}/0/1", f"{topic}/0/2", f"{topic}/0/3"]
    assert dead["step"].unique().to_list() == ["ingest"]
    reasons = dead["reason"].to_list()
    assert reasons[0].startswith("invalid JSON")
    assert "schema" in reasons[1]
    assert reasons[2] == "value is not valid UTF-8"
    assert dead["raw"][0] == "{not json"


def test_follow_picks_up_new_messages_and_start_latest(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap)
    produce_raw(kafka_bootstrap, topic, [(None, b"old")])
    r = kafka.follow_kafka(topic, bootstrap=kafka_bootstrap, format="bytes", start="latest").build(
        ctx()
    )
    assert r.poll() is None and not r.finished
    produce_raw(kafka_bootstrap, topic, [(b"k", b"new1"), (b"k", b"new2")])
    got, _ = drain(r, want=2)
    r.close()
    assert got["value"].to_list() == [b"new1", b"new2"]
    assert got["key"].to_list() == ["k", "k"]


def test_start_at_a_time_and_committed(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap)
    t0 = 1_700_000_000_000
    for i in range(10):
        produce_raw(kafka_bootstrap, topic, [(None, b"%d" % i)], timestamp=t0 + i * 1000)
    at = datetime.fromtimestamp((t0 + 6000) / 1000, UTC)
    r = kafka.scan_kafka(topic, bootstrap=kafka_bootstrap, format="text", start=at).build(ctx())
    got, _ = drain(r)
    r.close()
    assert got["value"].to_list() == ["6", "7", "8", "9"]
    assert got["timestamp"][0] == at
    group = f"g-{uuid.uuid4().hex}"
    src = kafka.follow_kafka(topic, bootstrap=kafka_bootstrap, format="text", group_id=group)
    first = src.build(ctx(batch=4))
    part, _ = drain(first, want=4)
    first.close()  # commits the offsets it read to the group
    committed = kafka.scan_kafka(
        topic, bootstrap=kafka_bootstrap, format="text", group_id=group, start="committed"
    )
    rest, _ = drain(committed.build(ctx()))
    assert part["value"].to_list() + rest["value"].to_list() == [str(i) for i in range(10)]


def test_undeliverable_records_fail_flush_and_close(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, **{"max.message.bytes": "2000"})
    big = pl.DataFrame({"v": ["x" * 50_000, "small"]})
    # the broker refuses the big record (the producer would allow it)
    w = kafka.sink_kafka(
        topic, bootstrap=kafka_bootstrap, value="v", config={"message.max.bytes": 5_000_000}
    ).build(SinkContext("out", 0, 1))
    w.write(big)
    with pytest.raises(
        tf.ConnectorError, match=r"step 'out': [12] record\(s\) could not be delivered"
    ):
        w.close()
    # a record the producer refuses before sending is a failure too
    w = kafka.sink_kafka(topic, bootstrap=kafka_bootstrap, value="v").build(
        SinkContext("out", 0, 1)
    )
    w.write(pl.DataFrame({"v": ["y" * 2_000_000]}))
    with pytest.raises(tf.ConnectorError, match="could not be delivered"):
        w.flush()


def test_unknown_topic_is_a_connector_error(kafka_bootstrap: str) -> None:
    src = kafka.scan_kafka("does-not-exist-" + uuid.uuid4().hex[:6], bootstrap=kafka_bootstrap)
    with pytest.raises(tf.ConnectorError, match="does not exist"):
        src.build(ctx())


def test_a_job_with_undelivered_records_fails(kafka_bootstrap: str) -> None:
    from tideflow.testing import TestingSource

    topic = new_topic(kafka_bootstrap, **{"max.message.bytes": "2000"})
    flow = tf.Dataflow("undelivered")
    flow.source(TestingSource([{"v": "ok"}, {"v": "x" * 50_000}])).sink(
        kafka.sink_kafka(
            topic, bootstrap=kafka_bootstrap, value="v", config={"message.max.bytes": 5_000_000}
        ),
        name="out",
    )
    with pytest.raises(tf.TideflowError, match="could not be delivered"):
        tf.run(flow)
