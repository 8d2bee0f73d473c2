"""Recovery in-process: a failed commit, a full disk, a damaged latest checkpoint, rescaling."""

from __future__ import annotations

import errno
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from tests.recovery._cards import committed, load_flow, write_input

import tideflow as tf
from tideflow._errors import JobError
from tideflow.connectors._committed import _PartsWriter
from tideflow.state import CheckpointStore


@pytest.fixture(scope="module")
def inp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cards") / "in"
    write_input(d, files=4, per_file=1500)
    return d


def _run(inp: Path, out: Path, ck: Path, **kw: Any) -> tf.RunResult:
    ns = load_flow(inp, out, ck, 0.01)
    kwargs = {**ns["checkpoints"].run_kwargs(), "batch_size": 20, **kw}
    return tf.run(ns["flow"], dead_letter_path=out.parent / "dead.jsonl", **kwargs)


@pytest.fixture(scope="module")
def reference(inp: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    base = tmp_path_factory.mktemp("ref")
    _run(inp, base / "out", base / "ck")
    rows = committed(base / "out")
    assert sum(r[4] for r in rows) == 6000
    return rows


def test_crash_mid_commit_rolls_forward(
    inp: Path, reference: list[tuple[Any, ...]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    real = _PartsWriter.commit

    def failing(self: _PartsWriter, checkpoint_id: int) -> None:
        if checkpoint_id >= 6 and self._staged.get(checkpoint_id):
            raise OSError("power cut between the manifest and the renames")
        real(self, checkpoint_id)

    monkeypatch.setattr(_PartsWriter, "commit", failing)
    with pytest.raises(JobError, match="failed to commit checkpoint"):
        _run(inp, out, ck)
    assert list(out.glob("*.pending"))  # checkpoint 6 is complete but its files are not visible
    monkeypatch.setattr(_PartsWriter, "commit", real)
    _run(inp, out, ck)
    assert committed(out) == reference


def test_disk_full_while_checkpointing_keeps_previous(
    inp: Path,
    reference: list[tuple[Any, ...]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    real = CheckpointStore._write_file
    failed: list[str] = []

    def full(self: CheckpointStore, path: Path, data: bytes) -> None:
        if any(f".tmp-chk-{i:08d}" in str(path) for i in (3, 4, 5)):
            failed.append(path.name)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path, data)

    monkeypatch.setattr(CheckpointStore, "_write_file", full)
    with caplog.at_level(logging.WARNING, logger="tideflow.runtime"):
        result = _run(inp, out, ck)
    assert result.completed and failed
    assert "checkpoint 3 could not be written" in caplog.text
    assert not list(ck.glob(".tmp-*"))  # the half-written ones were removed
    assert committed(out) == reference  # output staged under failed checkpoints came later


def test_corrupted_latest_falls_back_to_previous(
    inp: Path,
    reference: list[tuple[Any, ...]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    real = _PartsWriter.commit

    def stop(self: _PartsWriter, checkpoint_id: int) -> None:
        real(self, checkpoint_id)
        if checkpoint_id == 8:
            raise OSError("killed right after committing checkpoint 8")

    monkeypatch.setattr(_PartsWriter, "commit", stop)
    with pytest.raises(JobError):
        _run(inp, out, ck)
    monkeypatch.setattr(_PartsWriter, "commit", real)
    part = ck / "chk-00000008" / "worker-0000.json"
    part.write_bytes(part.read_bytes()[:-5] + b"XXXXX")
    with caplog.at_level(logging.WARNING, logger="tideflow.state"):
        _run(inp, out, ck)
    assert "skipping damaged checkpoint 8" in caplog.text
    # Output checkpoint 8 had committed is removed and written again: still exactly once.
    assert committed(out) == reference


def test_resume_with_more_workers_redistributes_window_state(
    inp: Path, reference: list[tuple[Any, ...]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    real = _PartsWriter.commit

    def stop(self: _PartsWriter, checkpoint_id: int) -> None:
        real(self, checkpoint_id)
        if checkpoint_id == 10:
            raise OSError("stop after checkpoint 10")

    monkeypatch.setattr(_PartsWriter, "commit", stop)
    with pytest.raises(JobError):
        _run(inp, out, ck)
    monkeypatch.setattr(_PartsWriter, "commit", real)
    cp = CheckpointStore(ck).latest()
    assert cp is not None and cp.id == 10
    assert (
        pl.read_ipc(cp.parts[0]["card_totals.totals"]["pending"]).height > 0
    )  # open windows were saved
    _run(inp, out, ck, workers=2)
    assert committed(out) == reference


def test_sigusr1_takes_a_checkpoint_on_demand(
    inp: Path, reference: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    import os
    import signal
    import threading

    out, ck = tmp_path / "out", tmp_path / "ck"
    done = threading.Event()

    def poke() -> None:
        while not done.wait(0.02):
            os.kill(os.getpid(), signal.SIGUSR1)

    # The pokes start before the run installs its handler and go on after it restored the
    # previous one: outside the run they must meet a harmless handler, not the default action.
    outside = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    t = threading.Thread(target=poke)
    t.start()
    try:
        _run(inp, out, ck, checkpoint_interval=timedelta(hours=1))
    finally:
        done.set()
        t.join()
        signal.signal(signal.SIGUSR1, outside)
    # Without the requests, a one-hour interval leaves only the last checkpoint (id 1).
    assert CheckpointStore(ck).ids()[-1] > 3
    assert committed(out) == reference
