"""``tideflow demo --kafka BOOTSTRAP --postgres DSN`` against the real broker and database."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from .test_postgres_connectors import query

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIDEFLOW_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tideflow", "demo", "--quiet-alerts", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def sqlite_counts(db: Path) -> tuple[dict[str, int], int]:
    con = sqlite3.connect(db)
    try:
        rules = dict(con.execute("select rule, count(*) from alerts group by rule").fetchall())
        (cards,) = con.execute("select count(*) from card_stats").fetchone()
    finally:
        con.close()
    return rules, cards


def postgres_counts(dsn: str, schema: str) -> tuple[dict[str, int], int]:
    rules = dict(query(dsn, f"select rule, count(*) from {schema}.alerts group by rule"))
    [(cards,)] = query(dsn, f"select count(*) from {schema}.card_stats")
    return rules, cards


def topic_size(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_demo_through_kafka_and_postgres_matches_embedded(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path, workers: int
) -> None:
    events = "30000"
    embedded = demo("--events", events, "--workers", "1", "--out", str(tmp_path / "embedded"))
    assert embedded.returncode == 0, embedded.stderr
    want_rules, want_cards = sqlite_counts(tmp_path / "embedded" / "demo.sqlite")

    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    schema = f"demo_{uuid.uuid4().hex[:8]}"
    job = demo(
        "--events", events, "--workers", str(workers), "--out", str(tmp_path / "services"),
        "--kafka", kafka_bootstrap, "--kafka-prefix", prefix,
        "--postgres", postgres_dsn, "--postgres-schema", schema,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert f"fed 30,000 transactions to Kafka topic '{prefix}-transactions'" in job.stdout
    assert "30,000 transactions" in job.stdout
    assert not (tmp_path / "services" / "demo.sqlite").exists()
    rules, cards = postgres_counts(postgres_dsn, schema)
    assert cards == want_cards
    # Event-time rules do not depend on arrival order: equal for any worker count. The
    # per-record rules follow arrival order, which one worker keeps.
    event_time_rules = ("velocity", "hourly_spend")
    assert {r: rules.get(r) for r in event_time_rules} == {
        r: want_rules.get(r) for r in event_time_rules
    }
    if workers == 1:
        assert rules == want_rules
    assert topic_size(kafka_bootstrap, f"{prefix}-transactions") == 30_000
    assert topic_size(kafka_bootstrap, f"{prefix}-alerts") == sum(rules.values())


def test_unbounded_demo_with_feeder_stops_on_ctrl_c(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    schema = f"demo_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TIDEFLOW_NO_PROGRESS": "1"}
    # The job ends on SIGINT, which Popen must deliver to the demo's own process group.
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tideflow",
            "demo",
            "--quiet-alerts",
            "--rate",
            "20000",
            "--workers",
            "2",
            "--out",
            str(tmp_path),
            "--kafka",
            kafka_bootstrap,
            "--kafka-prefix",
            prefix,
            "--postgres",
            postgres_dsn,
            "--postgres-schema",
            schema,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        cards = 0
        while time.monotonic() < deadline and cards < 1000:
            time.sleep(1)
            assert job.poll() is None, job.communicate()
            rows = query(postgres_dsn, f"select to_regclass('{schema}.card_stats') is not null")
            if rows[0][0]:
                cards = query(postgres_dsn, f"select count(*) from {schema}.card_stats")[0][0]
        assert cards >= 1000, "no card statistics reached PostgreSQL within 90 s"
        os.killpg(job.pid, signal.SIGINT)
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, err
    assert "demo stopped" in out
    assert topic_size(kafka_bootstrap, f"{prefix}-transactions") > 0


def test_demo_unreachable_services_fail_before_start(tmp_path: Path) -> None:
    job = demo("--events", "10", "--kafka", "127.0.0.1:9", "--out", str(tmp_path))
    assert job.returncode == 2
    assert "cannot reach Kafka at 127.0.0.1:9" in job.stderr
    assert "scripts/services start kafka" in job.stderr
    job = demo(
        "--events", "10", "--postgres", "postgresql://nobody:secret@127.0.0.1:9/x",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert job.returncode == 2
    assert "cannot use postgresql://nobody:***@127.0.0.1:9/x" in job.stderr
    assert "secret" not in job.stderr
