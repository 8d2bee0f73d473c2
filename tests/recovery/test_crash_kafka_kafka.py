"""Crash test: Kafka -> 1-minute windowed totals -> Kafka (exactly-once), SIGKILLed and resumed.

``examples/kafka_card_totals.py`` runs as a subprocess with checkpoints every 0.1 s and is
killed at random moments (during start-up and recovery, mid-batch, mid-checkpoint, between the
checkpoint and the Kafka commit, mid-commit) at least 20 times, then restarted each time with
the same checkpoint directory. The output topic, read with ``read_committed``, must hold
exactly the results of a run that never crashed: nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_kafka_connectors import new_topic, produce_raw
from tests.recovery._crash import kill_and_restart

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _cmd(
    bootstrap: str, inp: str, out: str, txn: str, ck: Path, *, workers: int = 1, batch: int = 10
) -> list[str]:
    cmd = [sys.executable, "-m", "tideflow.cli", "-v", "run"]
    cmd += [str(ROOT / "examples" / "kafka_card_totals.py"), "--workers", str(workers)]
    cmd += ["--no-progress", "--batch-size", str(batch)]
    cmd += ["--checkpoint-dir", str(ck), "--checkpoint-interval", "0.1"]
    cmd += ["--", "--bootstrap", bootstrap, "--input-topic", inp, "--output-topic", out]
    return [*cmd, "--bounded", "--group-id", f"g-{out}", "--transactional-id", txn]


def read_committed(bootstrap: str, topic: str) -> Counter[tuple[Any, ...]]:
    """Every message of ``topic`` visible to a read_committed consumer, as a multiset."""
    from confluent_kafka import Consumer, TopicPartition

    base = {"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}"}
    ends = Consumer({**base, "isolation.level": "read_uncommitted"})
    parts = sorted(ends.list_topics(topic, timeout=10).topics[topic].partitions)
    high = {p: ends.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    ends.close()
    c = Consumer({**base, "isolation.level": "read_committed", "enable.partition.eof": False})
    c.assign([TopicPartition(topic, p, 0) for p in parts if high[p] > 0])
    got: Counter[tuple[Any, ...]] = Counter()
    todo = {p for p in parts if high[p] > 0}
    deadline = time.monotonic() + 60
    while todo:
        assert time.monotonic() < deadline, f"could not read {topic} to its end"
        for m in c.consume(10_000, 0.2):
            if m.error() is None:
                r = json.loads(m.value())
                assert m.key().decode() == r["card"]
                got[(r["card"], r["window_start"], r["window_end"], r["total"], r["count"])] += 1
        for tp in c.position([TopicPartition(topic, p) for p in todo]):
            if tp.offset >= high[tp.partition]:
                todo.discard(tp.partition)
    c.close()
    return got


@pytest.fixture(scope="module")
def events(kafka_bootstrap: str) -> tuple[str, int]:
    """One input partition (its order is the event order the windows see); 48,000 events over
    80 minutes of event time, out of order by up to 5 s (within the 10 s delay)."""
    rng = random.Random(5)
    topic = new_topic(kafka_bootstrap, partitions=1)
    t0 = 1_700_000_040_000 - 1_700_000_040_000 % 60_000
    recs = [
        {
            "card": f"c{rng.randrange(12)}",
            "amount": rng.randrange(1, 500),
            "ts": t0 + i * 100 + rng.randrange(0, 5_000),
        }
        for i in range(48_000)
    ]
    produce_raw(
        kafka_bootstrap, topic, [(r["card"].encode(), json.dumps(r).encode()) for r in recs]
    )
    return topic, len(recs)


def test_sigkill_kafka_to_kafka_exactly_once(
    kafka_bootstrap: str, events: tuple[str, int], tmp_path: Path
) -> None:
    inp, n = events
    txn = f"crash-{uuid.uuid4().hex[:8]}"
    ref_topic = new_topic(kafka_bootstrap, partitions=3)
    subprocess.run(
        # batches of 500: faster, and the same results (no event is late with any batching)
        _cmd(kafka_bootstrap, inp, ref_topic, f"{txn}-ref", tmp_path / "ref-ck", batch=500),
        env=ENV,
        check=True,
        timeout=300,
        capture_output=True,
    )
    expected = read_committed(kafka_bootstrap, ref_topic)
    assert sum(r[4] for r in expected) == n  # every event counted once
    assert max(expected.values()) == 1 and len(expected) > 900

    out, ck = new_topic(kafka_bootstrap, partitions=3), tmp_path / "ck"
    # 1 worker in the suite (about 100 s); TIDEFLOW_CRASH_WORKERS=2 runs the same with 2
    workers = int(os.environ.get("TIDEFLOW_CRASH_WORKERS", "1"))
    rng = random.Random(int(os.environ.get("TIDEFLOW_CRASH_SEED", "13")))
    cmd = _cmd(kafka_bootstrap, inp, out, txn, ck, workers=workers)
    crashes = kill_and_restart(cmd, ENV, ck, tmp_path / "stderr.log", rng)
    assert crashes.kills >= 20 and crashes.resumed >= 10
    got = read_committed(kafka_bootstrap, out)
    assert sum(got.values()) == sum(expected.values())  # nothing twice
    assert got == expected  # nothing lost, identical results
