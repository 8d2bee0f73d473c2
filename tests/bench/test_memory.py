"""Memory runs: generated batches in process, RSS sampled at each tenth of the input."""

from __future__ import annotations

import json

import polars as pl
import pytest

from tideflow._errors import ConfigError
from tideflow.bench.cli import main as bench_main
from tideflow.bench.nexmark import GeneratorSettings, iter_batches
from tideflow.bench.nexmark._memory import main, run_memory


@pytest.mark.parametrize("query", ["q0", "q1", "q2"])
def test_memory_run_passes_every_event_and_samples_ten_times(query: str) -> None:
    events = 30_000
    report = run_memory(query, events, seed=3, batch_events=2_000, checkpoint_interval=0.05)
    bids = pl.concat(
        [b.bid for b in iter_batches(GeneratorSettings(events=events, seed=3), batch_events=7_000)]
    )
    expected = bids.height if query != "q2" else bids.filter(pl.col("auction") % 123 == 0).height
    assert report["rows"] == expected  # the pipeline saw the whole generated input
    samples = report["samples"]
    # a sample is taken by the first batch that reaches each tenth of the input
    stops = [b.stop for b in iter_batches(GeneratorSettings(events=events), batch_events=2_000)]
    tenths = [min(s for s in stops if s * 10 >= events * (i + 1)) for i in range(10)]
    assert [s["events"] for s in samples] == tenths
    assert all(s["rss_mb"] > 0 for s in samples)
    assert report["growth_mb"] == pytest.approx(samples[-1]["rss_mb"] - samples[0]["rss_mb"])
    assert report["peak_mb"] >= max(s["rss_mb"] for s in samples)


def test_memory_refuses_queries_it_has_no_generated_input_for() -> None:
    with pytest.raises(ConfigError, match="q0"):
        run_memory("q9", 1_000)


def test_memory_command_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--query", "q2", "--events", "5000", "--checkpoint-interval", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["query"] == "q2"
    assert len(report["samples"]) == 10


def test_memory_subcommand_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(["nexmark", "memory", "--query", "q1", "--events", "20000"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("| query | events | 10 % |")
    assert "| q1 | 20 k |" in out
