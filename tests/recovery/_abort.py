"""Abort a dataflow mid-stream with checkpoints, resume it, and compare (recovery tests)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tideflow as tf
from tideflow.state import Checkpoint, CheckpointStore
from tideflow.testing import ABORT, PAUSE, CollectSink


def abort_and_resume(
    make: Callable[[list[Any], CollectSink], tf.Dataflow],
    items: list[Any],
    at: int,
    workers: int,
    ck: Path,
) -> tuple[CollectSink, Checkpoint, CollectSink]:
    """Run uninterrupted, then aborted after ``items[:at]`` with checkpoints, then resumed.

    The same item list in every run (ABORT takes the place of a PAUSE): TestingSource deals
    items round-robin to the workers, so every batch goes to the same worker each time.
    Returns the uninterrupted run's sink, the checkpoint resumed from and the resumed sink.
    """
    plain = CollectSink()
    tf.run(make([*items[:at], PAUSE, PAUSE, *items[at:]], plain), workers=workers, batch_size=50)
    with pytest.raises(tf.JobError, match="ABORT"):
        tf.run(
            make([*items[:at], PAUSE, ABORT, *items[at:]], CollectSink()),
            workers=workers,
            batch_size=50,
            checkpoint_dir=ck,
            checkpoint_interval=timedelta(milliseconds=1),
        )
    cp = CheckpointStore(ck).latest()
    assert cp is not None
    resumed = CollectSink()
    tf.run(
        make([*items[:at], PAUSE, PAUSE, *items[at:]], resumed),
        workers=workers,
        batch_size=50,
        checkpoint_dir=ck,
        checkpoint_interval=timedelta(seconds=60),
    )
    return plain, cp, resumed
