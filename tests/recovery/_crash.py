"""The crash tests' loop: start a job again and again, SIGKILL it at random moments."""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import time
from pathlib import Path


@dataclasses.dataclass
class Crashes:
    """What the restarts did: kills, restarts that resumed from a checkpoint, and restarts
    whose log says an exactly-once sink rolled a checkpoint forward."""

    kills: int = 0
    resumed: int = 0
    rolled: int = 0


def newest_checkpoint(ck: Path) -> str:
    """Name of the newest complete checkpoint in ``ck`` ("" when there is none)."""
    return max((p.name for p in ck.glob("chk-*")), default="") if ck.exists() else ""


def kill_and_restart(
    cmd: list[str],
    env: dict[str, str],
    ck: Path,
    log: Path,
    rng: random.Random,
    *,
    kills: int = 21,
    startup: float = 1.5,
    after: float = 0.3,
    timeout: float = 300,
) -> Crashes:
    """Run ``cmd`` until it ends by itself, killed ``kills`` times first.

    One kill in five lands within ``startup`` seconds of the start (start-up, recovery, a
    roll-forward); the others once the attempt wrote a new checkpoint, within ``after``
    seconds (mid-batch, mid-checkpoint, between checkpoint and commit, mid-commit). The last
    attempt must exit 0 (its stderr is in the assertion message).
    """
    got = Crashes()
    for _attempt in range(80):
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, env=env, stderr=err)
            if got.kills < kills:
                if rng.random() < 0.2:
                    time.sleep(rng.uniform(0.05, startup))
                else:
                    before, deadline = newest_checkpoint(ck), time.monotonic() + 60
                    while proc.poll() is None and newest_checkpoint(ck) == before:
                        assert time.monotonic() < deadline, "no new checkpoint within 60 s"
                        time.sleep(0.005)
                    time.sleep(rng.uniform(0.0, after))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    got.kills += 1
                    text = log.read_text()
                    got.resumed += "resuming from checkpoint" in text
                    got.rolled += "rolled forward checkpoint" in text
                    continue
            proc.wait(timeout=timeout)
        assert proc.returncode == 0, log.read_text()
        break
    print(
        f"{got.kills} kills, {got.resumed} resumed from a checkpoint, {got.rolled} rolled forward"
    )
    return got
