"""The harness (subprocess runs, checks, table, JSON) and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tideflow.bench.cli import main
from tideflow.bench.nexmark._harness import BenchResult, markdown_table, run_bench


def test_run_bench_measures_checks_and_reports(nexmark_dir: Path) -> None:
    results = run_bench(nexmark_dir, ["q2", "q5"], ["python", "duckdb", "tideflow"], reps=1)
    by = {(r.query, r.engine): r for r in results}
    assert by[("q2", "python")].status == "ok"
    assert by[("q2", "duckdb")].status == "ok"
    assert by[("q5", "duckdb")].status == "ok"
    assert by[("q5", "python")].status == "unavailable"
    assert by[("q5", "tideflow")].status == "ok"  # checked against DuckDB in the run
    ok = by[("q2", "duckdb")]
    assert ok.events == 30_000 and ok.wall_s and ok.wall_s > 0 and ok.peak_rss_mb
    assert ok.events_per_s == pytest.approx(30_000 / ok.wall_s)
    table = markdown_table(results)
    assert table.splitlines()[0].startswith("| query | engine | events/s")
    assert "| q2 | duckdb |" in table


def test_markdown_table_flags_mismatches() -> None:
    bad = BenchResult(
        "q1",
        "bytewax",
        "mismatch",
        100,
        reps=1,
        wall_s=1.0,
        cpu_s=1.0,
        peak_rss_mb=10.0,
        rows=1,
        note="differs",
    )
    assert "**MISMATCH**" in markdown_table([bad])


def test_cli_generate_run_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["nexmark", "generate", "--events", "3000", "--seed", "2", "--out", str(data)]) == 0
    assert sorted(p.name for p in data.glob("*.parquet")) == [
        "auction.parquet",
        "bid.parquet",
        "person.parquet",
    ]
    out = tmp_path / "q1.parquet"
    code = main(
        [
            "nexmark",
            "run",
            "--query",
            "q1",
            "--input",
            str(data),
            "--output",
            str(out),
            "--engine",
            "polars",
            "--check",
        ]
    )
    assert code == 0
    assert pl.read_parquet(out).columns == ["auction", "bidder", "price", "date_time"]
    assert "matches the DuckDB reference" in capsys.readouterr().err


def test_cli_tideflow_windowed_query_runs_and_checks(
    nexmark_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q5.parquet"
    args = ["--query", "q5", "--input", str(nexmark_dir), "--output", str(out), "--check"]
    code = main(["nexmark", "run", *args])
    assert code == 0
    assert "matches the DuckDB reference" in capsys.readouterr().err
    assert out.exists()


def test_cli_bench_default_command_writes_json(
    nexmark_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "bench.json"
    code = main(
        [
            "nexmark",
            "--query",
            "q0",
            "--input",
            str(nexmark_dir),
            "--engines",
            "duckdb",
            "--reps",
            "1",
            "--json",
            str(target),
        ]
    )
    assert code == 0
    assert "| q0 | duckdb |" in capsys.readouterr().out
    payload = json.loads(target.read_text())
    assert payload["results"][0]["status"] == "ok"
    assert payload["results"][0]["events_per_s"] > 0
    assert payload["threads"] == 1  # the default: one thread per pool


def test_cli_unknown_query_is_a_usage_error(nexmark_dir: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "nexmark",
                "run",
                "--query",
                "q99",
                "--input",
                str(nexmark_dir),
                "--output",
                str(tmp_path / "x.parquet"),
                "--engine",
                "duckdb",
            ]
        )
        == 2
    )


def test_cli_flags_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDEFLOW_NEXMARK_EVENTS", "1000")
    monkeypatch.setenv("TIDEFLOW_NEXMARK_SEED", "4")
    assert main(["nexmark", "generate", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "nexmark.json").read_text())
    assert (meta["events"], meta["seed"]) == (1000, 4)


def test_tideflow_runs_take_checkpoints_when_asked(
    nexmark_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tideflow as tf
    from tideflow.bench.nexmark._compare import check
    from tideflow.bench.nexmark._reference import run_reference
    from tideflow.bench.nexmark._worker import engine_runner

    calls: list[dict[str, object]] = []
    original = tf.run

    def spy(flow: object, **kw: object) -> object:
        result = original(flow, **kw)  # type: ignore[arg-type]
        where = kw.get("checkpoint_dir")
        kw["written"] = sorted(p.name for p in Path(str(where)).iterdir()) if where else []
        calls.append(kw)
        return result

    monkeypatch.setattr(tf, "run", spy)
    for engine, interval in (("tideflow", 0.05), ("tideflow-nocp", 0.05), ("tideflow", 0.0)):
        out = tmp_path / f"{engine}-{interval}.parquet"
        engine_runner(engine, checkpoint_interval=interval)("q4", nexmark_dir, out)
        check("q4", pl.read_parquet(out), run_reference("q4", nexmark_dir), label=engine)
    with_cp, nocp, off = calls
    assert with_cp["checkpoint_dir"] and with_cp["written"]  # at least the final checkpoint
    assert "checkpoint_dir" not in nocp and "checkpoint_dir" not in off


def test_per_record_peers_can_read_a_prefix_of_the_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "bench.json"
    args = ["nexmark", "--query", "q2", "--events", "3000", "--peer-events", "1000"]
    args += ["--data", str(tmp_path / "data"), "--engines", "python,tideflow,duckdb"]
    args += ["--reps", "1", "--checkpoint-interval", "5", "--json", str(target)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| x Flink per core |" in table.splitlines()[0]
    payload = json.loads(target.read_text())
    by = {r["engine"]: r for r in payload["results"]}
    assert {e: r["status"] for e, r in by.items()} == dict.fromkeys(by, "ok")
    assert (by["python"]["events"], by["tideflow"]["events"], by["duckdb"]["events"]) == (
        1000,
        3000,
        3000,
    )
    assert by["tideflow"]["checkpoint_interval_s"] == 5.0
    assert by["duckdb"]["checkpoint_interval_s"] is None
    assert payload["peer_input"].endswith("events-1000-seed-0")
    assert "| q2 | tideflow |" in table and "every 5 s" in table


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_measured_processes_get_the_thread_cap(
    nexmark_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    import subprocess

    from tideflow.bench.nexmark import _harness

    for var in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "TIDEFLOW_NEXMARK_THREADS"):
        monkeypatch.delenv(var, raising=False)
    seen: list[dict[str, str]] = []
    real = subprocess.run

    def spy(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        env = kw["env"]
        assert isinstance(env, dict)
        seen.append(env)
        return real(cmd, **kw)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(_harness.subprocess, "run", spy)
    report = _harness.run_once(
        "duckdb", "q2", nexmark_dir, tmp_path / "q2.parquet", threads=threads
    )
    assert report["rows"] == pl.read_parquet(tmp_path / "q2.parquet").height > 0
    (env,) = seen
    want = str(threads) if threads else None
    for var in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS", "TIDEFLOW_NEXMARK_THREADS"):
        assert env.get(var) == want


def test_negative_threads_fail_before_any_run(nexmark_dir: Path) -> None:
    from tideflow._errors import ConfigError

    with pytest.raises(ConfigError, match="--threads must be >= 0, got -1"):
        run_bench(nexmark_dir, ["q0"], ["duckdb"], reps=1, threads=-1)
