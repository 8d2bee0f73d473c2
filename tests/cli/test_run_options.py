"""`tideflow run --max-delay-ms`: 0 is the lowest-latency setting, negatives are refused."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[2]


def _words(i: int) -> list[str]:
    return [chr(97 + i % 26) + chr(97 + i % 7), "z" + chr(97 + i % 3)]


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "in.txt"
    if not src.exists():
        src.write_text("\n".join(" ".join(_words(i)) for i in range(5_000)))
    out = tmp_path / f"out{len(list(tmp_path.glob('out*.csv')))}.csv"
    cmd = [sys.executable, "-m", "tideflow.cli", "run", str(ROOT / "examples/wordcount.py")]
    cmd += ["--workers", "1", "--no-progress", "--batch-size", "500", *extra]
    cmd += ["--", "--input", str(src), "--output", str(out)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_max_delay_zero_runs_and_gives_the_same_counts(tmp_path: Path) -> None:
    default = _run(tmp_path)
    zero = _run(tmp_path, "--max-delay-ms", "0")
    assert default.returncode == 0, default.stderr
    assert zero.returncode == 0, zero.stderr
    a = pl.read_csv(tmp_path / "out0.csv").sort("word")
    b = pl.read_csv(tmp_path / "out1.csv").sort("word")
    expected = Counter(w for i in range(5_000) for w in _words(i))
    assert dict(zip(a["word"], a["count"], strict=True)) == dict(expected)
    assert b.equals(a)


def test_negative_max_delay_is_refused_before_the_job_starts(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--max-delay-ms", "-1")
    assert proc.returncode == 2
    assert "--max-delay-ms" in proc.stderr and "expected a number >= 0, got -1" in proc.stderr
    assert not list(tmp_path.glob("out*.csv"))
