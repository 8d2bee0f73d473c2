"""Fixtures of the dashboard tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import tideflow as tf


@pytest.fixture
def running() -> Iterator[Any]:
    """Run a flow in a background thread (workers=1) while the test talks to its dashboard."""
    threads: list[threading.Thread] = []

    def start(flow: tf.Dataflow, observers: list[Any]) -> threading.Thread:
        t = threading.Thread(
            target=tf.run,
            args=(flow,),
            kwargs={"observers": observers, "workers": 1},
            daemon=True,
        )
        t.start()
        threads.append(t)
        return t

    yield start
    for t in threads:
        t.join(timeout=30)
