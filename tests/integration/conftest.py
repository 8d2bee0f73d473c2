"""Session fixtures for the integration tests: the real Kafka broker and PostgreSQL server.

Both are started through ``scripts/services`` once per test session and stopped at the end when
this session started them (a service that was already running is left running). Set
``TIDEFLOW_TEST_KAFKA`` / ``TIDEFLOW_TEST_POSTGRES`` to use an existing broker / database instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"


def run_services(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(SERVICES), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def _service(name: str) -> Iterator[str]:
    override = os.environ.get(f"TIDEFLOW_TEST_{name.upper()}")
    if override:
        yield override
        return
    was_running = run_services("status", name).returncode == 0
    started = run_services("start", name)
    if started.returncode != 0:
        pytest.fail(
            f"scripts/services start {name} failed (exit {started.returncode}):\n{started.stderr}",
            pytrace=False,
        )
    lines = started.stdout.strip().splitlines()
    assert lines, f"scripts/services start {name} printed no address; stderr:\n{started.stderr}"
    try:
        yield lines[-1]
    finally:
        if not was_running:
            stopped = run_services("stop", name)
            if stopped.returncode != 0:
                print(f"scripts/services stop {name} failed: {stopped.stderr}", file=sys.stderr)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address (``host:port``) of the real Kafka broker."""
    yield from _service("kafka")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of the ``tideflow`` database on the real PostgreSQL server."""
    yield from _service("postgres")


@pytest.fixture(scope="session")
def services() -> object:
    """``services("start", "kafka")`` runs ``scripts/services``; returns the completed process."""
    return run_services
