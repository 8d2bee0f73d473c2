"""Shared helpers of the recovery tests: card transaction input and reading committed output."""

from __future__ import annotations

import datetime as dt
import json
import random
import runpy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "card_totals.py"
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def write_input(directory: Path, files: int = 10, per_file: int = 2000, seed: int = 1) -> int:
    """Card transactions out of order by up to 10 s, in ``files`` JSON-lines files."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in range(files):
        with open(directory / f"tx-{f:03d}.jsonl", "w") as fh:
            for _ in range(per_file):
                ts = T0 + dt.timedelta(milliseconds=n * 300 - rng.randint(0, 9_999))
                rec = {
                    "card": f"c{rng.randint(0, 30)}",
                    "amount": rng.randint(1, 500),
                    "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                }
                fh.write(json.dumps(rec) + "\n")
                n += 1
    return n


def committed(out: Path) -> list[tuple[Any, ...]]:
    """Every row of the committed ``.jsonl`` files, sorted (duplicates kept)."""
    rows = []
    for p in sorted(out.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            r = json.loads(line)
            rows.append((r["card"], r["window_start"], r["window_end"], r["total"], r["count"]))
    return sorted(rows)


def command(
    inp: Path, out: Path, ck: Path, interval: float, batch: int = 10, workers: int = 1
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tideflow.cli",
        "-v",
        "run",
        str(EXAMPLE),
        "--workers",
        str(workers),
        "--no-progress",
        "--batch-size",
        str(batch),
        "--",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--checkpoint-dir",
        str(ck),
        "--checkpoint-interval",
        str(interval),
    ]


def load_flow(inp: Path, out: Path, ck: Path, interval: float) -> dict[str, Any]:
    """Build the example's flow in this process; returns its module namespace."""
    argv = sys.argv
    sys.argv = [
        str(EXAMPLE),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--checkpoint-dir",
        str(ck),
        "--checkpoint-interval",
        str(interval),
    ]
    try:
        return runpy.run_path(str(EXAMPLE), run_name="__tideflow__")
    finally:
        sys.argv = argv
