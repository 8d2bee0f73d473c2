"""Throttled runs: the rate is respected and latencies are reported."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tideflow.bench.nexmark._latency import main

ENGINES = ["python", "tideflow"] + (["bytewax"] if importlib.util.find_spec("bytewax") else [])


@pytest.mark.parametrize("engine", ENGINES)
def test_throttled_run_reports_latency_at_the_rate(
    engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--engine", engine, "--query", "q1", "--events", "10000", "--rate", "50000"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["results"] == 9200  # every bid of 10,000 events
    # 10,000 events at 50,000/s take at least 0.2 s: the source waits for each event's time
    assert report["achieved_rate"] <= 50_000 * 1.02
    assert 0 <= report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["max_ms"] < 5_000


def test_unknown_query_is_reported_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--engine", "python", "--query", "q5", "--events", "100", "--rate", "1000"])
    capsys.readouterr()
