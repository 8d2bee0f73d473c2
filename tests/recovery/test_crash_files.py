"""Crash tests: file -> 1-minute windowed aggregate -> file, killed with SIGKILL and resumed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.recovery._cards import command, committed, write_input

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[object, ...]]]:
    base = tmp_path_factory.mktemp("cards")
    inp = base / "in"
    n = write_input(inp, files=20)
    out, ck = base / "ref-out", base / "ref-ck"
    subprocess.run(command(inp, out, ck, 0.05), env=ENV, check=True, timeout=120)
    ref = committed(out)
    assert sum(r[4] for r in ref) == n  # every transaction counted once
    assert not [p for p in out.iterdir() if not p.name.endswith(".jsonl")]
    return inp, ref


def _newest(ck: Path) -> str:
    names = [p.name for p in ck.glob("chk-*")] if ck.exists() else []
    return max(names, default="")


def _wait_for_new_checkpoint(ck: Path, proc: subprocess.Popen[bytes]) -> None:
    before = _newest(ck)
    deadline = time.monotonic() + 30
    while proc.poll() is None and _newest(ck) == before and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_at_random_moments_then_resume(
    data: tuple[Path, list[tuple[object, ...]]], tmp_path: Path, workers: int
) -> None:
    inp, ref = data
    out, ck = tmp_path / "out", tmp_path / "ck"
    rng = random.Random(int(os.environ.get("TIDEFLOW_CRASH_SEED", "7")))
    kills = finished = resumed = 0
    log = tmp_path / "stderr.log"
    for _attempt in range(80):
        with open(log, "w") as err:
            proc = subprocess.Popen(
                command(inp, out, ck, 0.05, workers=workers), env=ENV, stderr=err
            )
            if kills < 21:
                if rng.random() < 0.2:
                    time.sleep(rng.uniform(0.05, 0.8 * workers))  # during start-up or restore
                else:
                    # Once this attempt wrote a checkpoint, anywhere: mid-batch, mid-checkpoint,
                    # mid-commit (a checkpoint every ~80 ms, a batch every ~1 ms).
                    _wait_for_new_checkpoint(ck, proc)
                    time.sleep(rng.uniform(0.0, 0.25))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    resumed += "resuming from checkpoint" in log.read_text()
                    continue
            proc.wait(timeout=120)
        assert proc.returncode == 0, log.read_text()
        finished += 1
        break
    assert kills >= 20 and finished == 1
    assert resumed >= 10  # most restarts resumed from a checkpoint, not from scratch
    assert committed(out) == ref  # nothing lost, nothing twice
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".jsonl")) == []
