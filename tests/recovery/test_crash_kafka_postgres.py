"""Crash test: Kafka -> per-minute aggregate -> PostgreSQL upserts, SIGKILLed and resumed.

Checkpoints hold the Kafka offsets and the aggregation state; the sink upserts by the result
key ``(card, window_start)``, so rows replayed after a restart rewrite the same values: the final
table equals that of a run that never crashed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_kafka_connectors import new_topic, produce_raw
from tests.integration.test_postgres_connectors import query

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _cmd(bootstrap: str, topic: str, dsn: str, table: str, ck: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "tideflow.cli", "-v", "run"]
    cmd += [str(ROOT / "examples" / "kafka_to_postgres.py"), "--workers", "1", "--no-progress"]
    cmd += ["--batch-size", "50"]
    if ck is not None:
        cmd += ["--checkpoint-dir", str(ck), "--checkpoint-interval", "0.1"]
    cmd += ["--", "--bootstrap", bootstrap, "--topic", topic, "--dsn", dsn, "--table", table]
    return [*cmd, "--bounded", "--group-id", f"g-{table}"]


def _table(dsn: str, table: str) -> list[tuple[Any, ...]]:
    return query(
        dsn, f"SELECT card, window_start, events, total, max_amount FROM {table} ORDER BY 1, 2"
    )


def _newest(ck: Path) -> str:
    return max((p.name for p in ck.glob("chk-*")), default="") if ck.exists() else ""


def test_sigkill_kafka_to_postgres(kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path) -> None:
    rng = random.Random(11)
    topic = new_topic(kafka_bootstrap, partitions=2)
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    events = [
        {
            "card": f"c{rng.randrange(9)}",
            "amount": rng.randrange(1, 1000) / 4,
            "ts": t0 + i * 100 + rng.randrange(0, 5_000),
        }
        for i in range(40_000)
    ]
    produce_raw(
        kafka_bootstrap, topic, [(e["card"].encode(), json.dumps(e).encode()) for e in events]
    )
    ref = f"ref_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        _cmd(kafka_bootstrap, topic, postgres_dsn, ref, None),
        env=ENV,
        check=True,
        timeout=300,
        capture_output=True,
    )
    expected = _table(postgres_dsn, ref)
    assert sum(r[2] for r in expected) == len(events)
    table, ck = f"crash_{uuid.uuid4().hex[:8]}", tmp_path / "ck"
    log = tmp_path / "stderr.log"
    kills = resumed = 0
    for _attempt in range(80):
        with open(log, "w") as err:
            proc = subprocess.Popen(
                _cmd(kafka_bootstrap, topic, postgres_dsn, table, ck), env=ENV, stderr=err
            )
            if kills < 20:
                if rng.random() < 0.2:
                    time.sleep(rng.uniform(0.05, 1.5))
                else:
                    before, deadline = _newest(ck), time.monotonic() + 60
                    while proc.poll() is None and _newest(ck) == before:
                        assert time.monotonic() < deadline
                        time.sleep(0.005)
                    time.sleep(rng.uniform(0.0, 0.3))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    resumed += "resuming from checkpoint" in log.read_text()
                    continue
            proc.wait(timeout=300)
        assert proc.returncode == 0, log.read_text()
        break
    assert kills >= 20 and resumed >= 10
    assert _table(postgres_dsn, table) == expected
