"""``--dashboard`` and ``--run-dir`` on ``tideflow run``; ``tideflow report``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tideflow.cli import main

PIPELINE = """
import polars as pl
import tideflow as tf
from tideflow.connectors import live
from tideflow.testing import TestingSource

flow = tf.Dataflow("cli_dash")
src = flow.source(TestingSource([{"k": i % 3} for i in range(90)], batch_size=10))
src.key_by("k").agg(pl.len().alias("n"), emit="updates").sink(live.sink_live("counts", key="k"))
"""


def test_run_with_dashboard_and_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pipe.py"
    path.write_text(PIPELINE)
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            str(path),
            "--workers",
            "1",
            "--no-progress",
            "--dashboard",
            "127.0.0.1:0",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert code == 0
    assert "dashboard: http://127.0.0.1:" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.html")]) == 0
    assert "Run report: cli_dash" in (tmp_path / "r.html").read_text()


def test_non_loopback_dashboard_without_token_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDEFLOW_DASHBOARD_TOKEN", raising=False)
    path = tmp_path / "pipe.py"
    path.write_text(PIPELINE)
    code = main(["run", str(path), "--workers", "1", "--dashboard", "0.0.0.0:0"])
    assert code == 2
    assert "TIDEFLOW_DASHBOARD_TOKEN" in capsys.readouterr().err


def test_bad_dashboard_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pipe.py"
    path.write_text(PIPELINE)
    assert main(["run", str(path), "--dashboard", "8765"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
