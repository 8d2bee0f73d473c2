"""Crash test with on-disk state: keyed totals in SQLite, windows spilled to files; SIGKILL."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
PIPELINE = ROOT / "examples" / "disk_totals.py"
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _write_input(d: Path, files: int = 12, per_file: int = 1500) -> int:
    rng = random.Random(5)
    d.mkdir(parents=True)
    n = 0
    for f in range(files):
        with open(d / f"tx-{f:03d}.jsonl", "w") as fh:
            for _ in range(per_file):
                ts = T0 + dt.timedelta(milliseconds=n * 40 - rng.randint(0, 9_999))
                rec = {"card": f"c{rng.randint(0, 2999)}", "amount": rng.randint(1, 500)}
                rec["ts"] = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                fh.write(json.dumps(rec) + "\n")
                n += 1
    return n


def _command(inp: Path, base: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "tideflow.cli", "-v", "run", str(PIPELINE),
        "--workers", str(workers), "--no-progress", "--batch-size", "20",
        "--state", "disk", "--state-dir", str(base / "state"), "--state-cache-keys", "1000",
        "--", "--input", str(inp), "--output", str(base / "out"),
        "--checkpoint-dir", str(base / "ck"), "--checkpoint-interval", "0.05",
        "--window-state", str(base / "wstate"),
    ]  # fmt: skip


def _committed(out: Path) -> dict[str, list[str]]:
    return {
        name: sorted(
            line for p in (out / name).glob("*.jsonl") for line in p.read_text().splitlines()
        )
        for name in ("totals", "windows")
    }


def _newest(ck: Path) -> str:
    return max((p.name for p in ck.glob("chk-*")), default="") if ck.exists() else ""


def _wait_for_new_checkpoint(ck: Path, proc: subprocess.Popen[bytes]) -> None:
    before = _newest(ck)
    deadline = time.monotonic() + 60
    while proc.poll() is None and _newest(ck) == before and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    base = tmp_path_factory.mktemp("disk")
    n = _write_input(base / "in")
    ref = base / "ref"
    subprocess.run(_command(base / "in", ref, 1), env=ENV, check=True, timeout=300)
    got = _committed(ref / "out")
    assert sum(json.loads(r)["count"] for r in got["totals"]) == n
    assert sum(json.loads(r)["count"] for r in got["windows"]) == n
    assert len(got["totals"]) > 2000
    return base / "in", got


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_with_disk_state_then_resume(
    data: tuple[Path, dict[str, list[str]]], tmp_path: Path, workers: int
) -> None:
    inp, ref = data
    rng = random.Random(int(os.environ.get("TIDEFLOW_CRASH_SEED", "11")) + workers)
    kills = resumed = 0
    log = tmp_path / "stderr.log"
    for _attempt in range(80):
        with open(log, "w") as err:
            proc = subprocess.Popen(_command(inp, tmp_path, workers), env=ENV, stderr=err)
            if kills < 20:
                if rng.random() < 0.2:
                    time.sleep(rng.uniform(0.05, 0.8 * workers))  # start-up or restore
                else:  # once this attempt wrote a checkpoint: mid-batch, -checkpoint, -commit
                    _wait_for_new_checkpoint(tmp_path / "ck", proc)
                    time.sleep(rng.uniform(0.0, 0.25))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    resumed += "resuming from checkpoint" in log.read_text()
                    continue
            proc.wait(timeout=300)
        assert proc.returncode == 0, log.read_text()[-3000:]
        break
    assert kills >= 20 and resumed >= 10
    assert _committed(tmp_path / "out") == ref  # nothing lost, nothing twice
    # Working files of killed runs are cleaned up by the next runs; the last run removed its own.
    assert not list((tmp_path / "state").iterdir())
    assert not list((tmp_path / "wstate").iterdir())
