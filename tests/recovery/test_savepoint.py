"""Savepoints: taken on demand from a running job (or from a stopped one), kept out of the
retention, restored with another number of workers; output equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.recovery._join_job import build, committed, write_input

import tideflow as tf
from tideflow._errors import ConfigError, JobError
from tideflow.cli._main import main
from tideflow.state import CheckpointStore, load_savepoint, take_savepoint

JOB = Path(__file__).with_name("_join_job.py")
ROOT = JOB.parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("savepoint")
    write_input(d)
    return d


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    out = tmp_path_factory.mktemp("savepoint_ref")
    assert tf.run(build("window", data, out, 0.0), dead_letter_path=out / "dead.jsonl").completed
    rows = committed(out / "results")
    assert rows
    return rows


def _wait_for_checkpoint(
    ck: Path,
    proc: subprocess.Popen[bytes] | None = None,
    until: Callable[[Any], bool] | None = None,
) -> None:
    """Wait for a checkpoint of the running job (one for which ``until`` holds, if given)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ck.is_dir() and CheckpointStore(ck).ids() and (ck / "RUNNING.json").exists():
            latest = CheckpointStore(ck).latest()
            if until is None or (latest is not None and until(latest)):
                return
        if proc is not None and proc.poll() is not None:
            raise AssertionError("the job ended before its first checkpoint")
        time.sleep(0.05)
    raise AssertionError("no checkpoint within 60 s")


def _holds_join_state(cp: Any) -> bool:
    return any(
        (p.get("join_recovery_window.pairs") or {}).get("left") is not None for p in cp.parts
    )


def test_savepoint_of_a_running_two_worker_job_restores_with_one_worker(
    data: Path, reference: list[Any], tmp_path: Path
) -> None:
    out, ck, ck2, sp = tmp_path / "out", tmp_path / "ck", tmp_path / "ck2", tmp_path / "sp"
    out.mkdir()
    job = ["--kind", "window", "--input", str(data), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    log = (tmp_path / "job.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tideflow.cli", "run", str(JOB), "--workers", "2"),
            *("--no-progress", "--batch-size", "10", "--checkpoint-dir", str(ck)),
            *("--checkpoint-interval", "0.2", "--", *job, "--pause", "0.08"),
        ],
        cwd=tmp_path,
        env=env,
        stderr=log,
    )
    try:
        # On a busy machine the first checkpoints can come before any record reached the
        # join: wait for one that holds join state, so that the savepoint carries some.
        _wait_for_checkpoint(ck, proc, until=_holds_join_state)
        code = main(["savepoint", "--checkpoint-dir", str(ck), "--out", str(sp), "--stop"])
        assert code == 0
        assert proc.wait(timeout=60) == 130  # stopped before its input ended
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    cp, info = load_savepoint(sp)
    assert cp.workers == 2 and info["flow"] == "join_recovery_window"
    assert any(p["join_recovery_window.pairs"]["left"] is not None for p in cp.parts)
    # Nothing after the savepoint was committed; restore it with one worker.
    assert len(committed(out / "results")) < len(reference)
    assert not (ck / "RUNNING.json").exists()
    code = main(
        [
            *("run", str(JOB), "--workers", "1", "--no-progress", "--batch-size", "10"),
            *("--checkpoint-dir", str(ck2), "--from-savepoint", str(sp), "--", *job),
        ]
    )
    assert code == 0
    assert committed(out / "results") == reference
    assert json.loads((sp / "SAVEPOINT.json").read_text())["checkpoint"] == cp.id


def test_savepoint_in_process_stops_the_job_and_restores_with_two_workers(
    data: Path, reference: list[Any], tmp_path: Path
) -> None:
    out, ck, sp = tmp_path / "out", tmp_path / "ck", tmp_path / "sp"
    out.mkdir()
    got: list[Path] = []

    def ask() -> None:
        _wait_for_checkpoint(ck)
        got.append(take_savepoint(ck, sp, stop=True, timeout=timedelta(seconds=30)))

    t = threading.Thread(target=ask)
    t.start()
    try:
        result = tf.run(
            build("window", data, out, 0.04),
            batch_size=10,
            checkpoint_dir=ck,
            checkpoint_interval=timedelta(milliseconds=100),
            checkpoint_keep=1,
            dead_letter_path=out / "dead.jsonl",
        )
    finally:
        t.join()
    assert got == [sp] and not result.completed
    # Retention (keep=1) deletes the checkpoint directory; the savepoint is whole.
    cp, _ = load_savepoint(sp)
    result = tf.run(
        build("window", data, out, 0.0),
        workers=2,
        batch_size=10,
        from_savepoint=sp,
        dead_letter_path=out / "dead.jsonl",
    )
    assert result.completed
    assert committed(out / "results") == reference
    assert cp.id >= 1


def test_a_restored_job_that_crashes_resumes_from_its_own_checkpoints(
    data: Path, reference: list[Any], tmp_path: Path
) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for sub in ("events", "tiers"):
        (d / sub).symlink_to(data / sub)
    out, ck, ck2, sp = tmp_path / "out", tmp_path / "ck", tmp_path / "ck2", tmp_path / "sp"
    out.mkdir()
    kw: dict[str, Any] = {
        "batch_size": 10,
        "checkpoint_interval": timedelta(milliseconds=20),
        "dead_letter_path": out / "dead.jsonl",
    }
    (d / "crash").write_text("150")
    with pytest.raises(JobError, match="crash requested"):
        tf.run(build("window", d, out), checkpoint_dir=ck, **kw)
    # The job is not running: the savepoint is its newest checkpoint.
    take_savepoint(ck, sp)
    assert load_savepoint(sp)[0].id == CheckpointStore(ck).latest().id  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="not taken after the savepoint"):
        tf.run(build("window", d, out), checkpoint_dir=ck, from_savepoint=sp, **kw)
    # Restored into a new directory, it crashes again later ...
    (d / "crash").write_text("")
    with pytest.raises(JobError, match="crash requested"):
        tf.run(build("window", d, out), checkpoint_dir=ck2, from_savepoint=sp, **kw)
    restored = CheckpointStore(ck2).latest()
    assert restored is not None and restored.meta["savepoint"]
    # ... and the same command resumes from its own newest checkpoint, not the savepoint.
    (d / "crash").unlink()
    assert tf.run(build("window", d, out), checkpoint_dir=ck2, from_savepoint=sp, **kw).completed
    assert committed(out / "results") == reference


def test_savepoint_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        take_savepoint(tmp_path / "nope", tmp_path / "sp")
    (tmp_path / "ck").mkdir()
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        take_savepoint(tmp_path / "ck", tmp_path / "sp")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="not an empty directory"):
        take_savepoint(tmp_path / "ck", tmp_path / "full")
    with pytest.raises(ConfigError, match="is not a savepoint"):
        load_savepoint(tmp_path / "ck")
    assert main(["savepoint", "--out", str(tmp_path / "sp")]) == 2


def test_a_stale_running_file_is_not_a_running_job(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    CheckpointStore(ck).write(5, [{"s": {"version": 1}}], {"flow": "f"})
    # Left behind by a killed job whose process id now belongs to another process.
    stale = {"pid": os.getpid(), "flow": "f", "signal": False, "process_start": "1"}
    (ck / "RUNNING.json").write_text(json.dumps(stale))
    sp = take_savepoint(ck, tmp_path / "sp", timeout=timedelta(seconds=1))
    assert load_savepoint(sp)[0].id == 5
    assert not (ck / "savepoint-requests").exists()  # no request was made


def test_an_expired_request_is_dropped_not_fulfilled(tmp_path: Path) -> None:
    from tideflow.state._savepoint import fulfil_requests

    ck = tmp_path / "ck"
    chk = CheckpointStore(ck).write(2, [{"s": {"version": 1}}], {"flow": "f"})
    (ck / "savepoint-requests").mkdir()
    old = {"out": str(tmp_path / "sp"), "stop": True, "expires": time.time() - 1}
    (ck / "savepoint-requests" / "x.request.json").write_text(json.dumps(old))
    assert fulfil_requests(ck, chk) is False  # no stop
    assert not (tmp_path / "sp").exists()
    assert not list((ck / "savepoint-requests").iterdir())
    fresh = {**old, "expires": time.time() + 60}
    (ck / "savepoint-requests" / "y.request.json").write_text(json.dumps(fresh))
    assert fulfil_requests(ck, chk) is True
    assert load_savepoint(tmp_path / "sp")[0].id == 2
    done = json.loads((ck / "savepoint-requests" / "y.done.json").read_text())
    assert done == {"path": str(tmp_path / "sp"), "checkpoint": 2}


def test_a_savepoint_signal_at_the_end_of_a_run_does_not_kill_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A requester that saw RUNNING.json may signal just as the job ends: the job's SIGUSR1
    # handler must still be there until RUNNING.json is gone (the default action kills).
    import contextlib
    import signal

    from tideflow.runtime import _run
    from tideflow.testing import CollectSink, TestingSource

    real = _run.mark_running

    @contextlib.contextmanager
    def late_signal(*args: Any, **kw: Any) -> Any:
        with real(*args, **kw):
            yield
        os.kill(os.getpid(), signal.SIGUSR1)  # after RUNNING.json is removed

    monkeypatch.setattr(_run, "mark_running", late_signal)
    flow = tf.Dataflow("late_usr1")
    flow.source(TestingSource([{"x": 1}, {"x": 2}])).sink(CollectSink())
    with caplog.at_level("WARNING", logger="tideflow"):
        tf.run(flow, checkpoint_dir=tmp_path / "ck")
    assert "while the job is not running: ignored" in caplog.text
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
