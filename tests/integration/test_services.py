"""The services script's contract: idempotent start, the address as the last line, usable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

Services = Callable[..., Any]


@pytest.mark.kafka
def test_kafka_is_reachable_and_start_is_idempotent(
    kafka_bootstrap: str, services: Services
) -> None:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(md.brokers) == 1
    again = services("start", "kafka")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == kafka_bootstrap
    assert kafka_bootstrap.startswith("127.0.0.1:")


@pytest.mark.postgres
def test_postgres_is_reachable_and_start_is_idempotent(
    postgres_dsn: str, services: Services
) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("select current_database()").fetchone() == ("tideflow",)
    again = services("start", "postgres")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == postgres_dsn
    assert "@127.0.0.1:" in postgres_dsn
