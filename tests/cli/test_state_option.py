"""`tideflow run --state disk`: the on-disk state backend from the command line."""

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[2]


def _word(i: int) -> str:
    out = "w"
    while True:
        i, d = divmod(i, 26)
        out += chr(97 + d)
        if i == 0:
            return out


def test_wordcount_with_disk_state_matches_memory(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(f"{_word(i % 3000)} z{chr(97 + i % 7)}" for i in range(20_000)))
    outs = {}
    for name, extra, env in (
        ("memory", [], {}),
        ("disk", ["--state-dir", str(tmp_path / "state"), "--state-cache-keys", "1000"], {}),
        ("env", [], {"TIDEFLOW_STATE": "disk"}),
    ):
        out = tmp_path / f"{name}.csv"
        cmd = [sys.executable, "-m", "tideflow.cli", "run", str(ROOT / "examples/wordcount.py")]
        cmd += ["--workers", "1", "--no-progress", "--batch-size", "2000", *extra]
        cmd += ["--", "--input", str(src), "--output", str(out)]
        proc = subprocess.run(
            cmd,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        assert proc.returncode == 0, proc.stderr
        outs[name] = pl.read_csv(out).sort("word")
    assert outs["memory"].height == 3007
    assert outs["disk"].equals(outs["memory"]) and outs["env"].equals(outs["memory"])
    assert (tmp_path / "state").is_dir() and not list((tmp_path / "state").iterdir())


def test_help_names_the_state_variables() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tideflow.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = " ".join(proc.stdout.split())
    for var in (
        "[TIDEFLOW_STATE, default memory]",
        "TIDEFLOW_STATE_DIR",
        "TIDEFLOW_STATE_CACHE_KEYS",
    ):
        assert var in text
