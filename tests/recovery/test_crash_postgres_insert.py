"""Crash test: files -> 1-minute windows -> PostgreSQL appends (exactly-once), SIGKILLed.

``examples/card_totals_postgres.py`` appends every closed window as a row (``mode="insert"``,
so a row written twice would stay twice) with ``delivery="exactly-once"``. It runs as a
subprocess with checkpoints every 50 ms and is killed at random moments (start-up and
recovery, mid-batch, mid-checkpoint, between the checkpoint and the PostgreSQL commit,
mid-commit) at least 20 times, restarted each time with the same checkpoint directory, with 1
and with 2 workers. The table must equal that of a run that never crashed, row for row.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_postgres_connectors import query
from tests.recovery._cards import ROOT, write_input
from tests.recovery._crash import kill_and_restart

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
EXAMPLE = ROOT / "examples" / "card_totals_postgres.py"


def _cmd(inp: Path, dsn: str, table: str, ck: Path, *, workers: int, batch: int) -> list[str]:
    cmd = [sys.executable, "-m", "tideflow.cli", "-v", "run", str(EXAMPLE)]
    cmd += ["--workers", str(workers), "--no-progress", "--batch-size", str(batch), "--"]
    cmd += ["--input", str(inp), "--dsn", dsn, "--table", table]
    return [*cmd, "--checkpoint-dir", str(ck), "--checkpoint-interval", "0.05"]


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    """Every row, duplicates kept, in one order."""
    return query(
        dsn,
        f"SELECT card, window_start, window_end, total, count FROM {table} ORDER BY 1, 2, 3, 4, 5",
    )


@pytest.fixture(scope="module")
def reference(
    postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[tuple[Any, ...]]]:
    base = tmp_path_factory.mktemp("cards_pg")
    inp = base / "in"
    n = write_input(inp, files=24, per_file=1500, seed=3)  # long enough for 21 kills
    table = f"ref_{uuid.uuid4().hex[:8]}"
    # batches of 500: faster, and the same windows (no event is late with any batching)
    cmd = _cmd(inp, postgres_dsn, table, base / "ck", workers=1, batch=500)
    subprocess.run(cmd, env=ENV, check=True, timeout=300, capture_output=True)
    rows = _rows(postgres_dsn, table)
    assert sum(r[4] for r in rows) == n  # every transaction counted once
    assert len(set(rows)) == len(rows) > 500
    return inp, rows


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_windows_to_postgres_inserts_exactly_once(
    postgres_dsn: str,
    reference: tuple[Path, list[tuple[Any, ...]]],
    tmp_path: Path,
    workers: int,
) -> None:
    inp, expected = reference
    table, ck = f"crash_{uuid.uuid4().hex[:8]}", tmp_path / "ck"
    rng = random.Random(int(os.environ.get("TIDEFLOW_CRASH_SEED", "17")) + workers)
    cmd = _cmd(inp, postgres_dsn, table, ck, workers=workers, batch=10)
    got = kill_and_restart(cmd, ENV, ck, tmp_path / "stderr.log", rng, startup=0.8 * workers)
    assert got.kills >= 20 and got.resumed >= 10
    assert _rows(postgres_dsn, table) == expected  # nothing lost, nothing twice
