"""End-to-end: the examples, the demo and the `tideflow` command, run as a user runs them."""

import collections
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIDEFLOW = [sys.executable, "-m", "tideflow.cli"]


def tideflow(*args, cwd, timeout=120, check=True):
    proc = subprocess.run(
        [*TIDEFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def reference_wordcount(paths):
    counts = collections.Counter()
    for p in paths:
        text = Path(p).read_bytes().decode("utf-8", errors="replace").lower()
        word = []
        for ch in text:
            if ch.isalpha():
                word.append(ch)
            elif word:
                counts["".join(word)] += 1
                word = []
        if word:
            counts["".join(word)] += 1
    return dict(counts)


def write_corpus(directory: Path) -> list[Path]:
    directory.mkdir()
    words = [
        "Alpha",
        "beta",
        "GAMMA",
        "naïve",
        "Ünïcode",
        "日本語",
        "x2y",
        "don't",
        "ΣΑΣ",
        "İstanbul",
        "ǅungla",
        "ʰmodifier",
        "e\u0301",
        "под",
        "foo_bar",
        "١٢٣",
        "Ⅻ",
    ]
    a = directory / "a.txt"
    a.write_text(
        "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(3000))
    )
    b = directory / "b.log"
    b.write_bytes(b"bad \xff\xfe bytes\xc3 here\nlast line without newline Beta")
    return [a, b]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_wordcount_matches_plain_python(tmp_path, workers):
    files = write_corpus(tmp_path / "in")
    out = tmp_path / "counts.csv"
    tideflow(
        "run",
        str(ROOT / "examples/wordcount.py"),
        "--workers",
        workers,
        "--no-progress",
        "--",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert out.read_text().splitlines()[0] == "word,count"
    got = dict(pl.read_csv(out, schema={"word": pl.String, "count": pl.Int64}).iter_rows())
    assert got == reference_wordcount(files)


def test_wordcount_file_arguments(tmp_path):
    files = write_corpus(tmp_path / "in")
    out = tmp_path / "counts.csv"
    tideflow(
        "run",
        str(ROOT / "examples/wordcount.py"),
        "--workers",
        "1",
        "--no-progress",
        "--",
        "--input",
        str(files[0]),
        str(files[1]),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    got = dict(pl.read_csv(out).iter_rows())
    assert got == reference_wordcount(files)


def wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_follow_log_picks_up_new_lines_and_stops_on_ctrl_c(tmp_path, workers):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_text('{"level":"info","service":"api"}\nnot json\n')
    out = tmp_path / "counts.jsonl"
    proc = subprocess.Popen(
        [
            *TIDEFLOW,
            "run",
            str(ROOT / "examples/follow_log.py"),
            "--workers",
            workers,
            "--no-progress",
            "--max-delay-ms",
            "20",
            "--",
            "--dir",
            str(logs),
            "--output",
            str(out),
            "--poll-ms",
            "50",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def rows():
            if not out.exists():
                return []
            return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]

        # Counts are flushed to the file about once a second.
        assert wait_for(lambda: len(rows()) >= 1), proc.stderr
        with (logs / "a.jsonl").open("a") as f:
            f.write('{"level":"INFO","service":"api"}\n{"level":"warn",')  # a partial line waits
        (logs / "b.jsonl").write_text('{"level":"error","service":"db"}\n')
        assert wait_for(lambda: {"level": "INFO", "service": "api", "events": 2} in rows())
        assert wait_for(lambda: {"level": "ERROR", "service": "db", "events": 1} in rows())
        with (logs / "a.jsonl").open("a") as f:
            f.write('"service":"web"}\n')
        assert wait_for(lambda: {"level": "WARN", "service": "web", "events": 1} in rows())
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "stopping" in stderr
    printed = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    assert {"level": "WARN", "service": "web", "events": 1} in printed
    dead = [
        json.loads(x) for x in (tmp_path / "follow_log.dead-letters.jsonl").read_text().splitlines()
    ]
    assert dead[0]["origin"].endswith("a.jsonl:2")
    assert "JSON" in dead[0]["reason"]


def test_demo_writes_alerts_stats_and_dead_letters(tmp_path):
    proc = tideflow("demo", "--events", "60000", "--out", "out", "--no-progress", cwd=tmp_path)
    assert "demo finished: 60,000 transactions" in proc.stdout
    assert "out/demo.sqlite" in proc.stdout and "out/dead-letters.jsonl" in proc.stdout
    con = sqlite3.connect(tmp_path / "out/demo.sqlite")
    rules = dict(con.execute("select rule, count(*) from alerts group by rule").fetchall())
    assert set(rules) <= {"burst", "spend_spike", "new_country", "velocity", "hourly_spend"}
    assert sum(rules.values()) > 0
    assert rules.get("velocity", 0) > 0  # event-time sliding windows found the injected bursts
    (sessions,) = con.execute("select count(*) from card_sessions where tx_count >= 3").fetchone()
    assert sessions > 0
    (cards,) = con.execute("select count(*) from card_stats").fetchone()
    (n,) = con.execute("select sum(tx_count) from card_stats").fetchone()
    dead = [json.loads(x) for x in (tmp_path / "out/dead-letters.jsonl").read_text().splitlines()]
    assert cards > 1000
    assert n + len(dead) == 60000  # every transaction is counted or a dead letter
    assert {d["reason"] for d in dead} <= {"card is missing", "amount must be positive"}
    assert len(dead) > 0


def test_run_reports_a_missing_file_and_a_missing_flow(tmp_path):
    proc = tideflow("run", "nope.py", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "p.py").write_text("x = 1\n")
    proc = tideflow("run", "p.py", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "defines no Dataflow named 'flow'" in proc.stderr


def test_pipeline_mistake_fails_before_data_moves(tmp_path):
    (tmp_path / "p.py").write_text(
        "import polars as pl, tideflow as tf\n"
        "from tideflow.testing import TestingSource, CollectSink\n"
        "flow = tf.Dataflow('p')\n"
        "s = flow.source(TestingSource([], schema={'amount': pl.Float64()}))\n"
        "s.filter(pl.col('amont') > 1, name='big').sink(CollectSink())\n"
    )
    proc = tideflow("run", "p.py", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "step 'p.big'" in proc.stderr and "amont" in proc.stderr


def test_help_lists_env_variables(tmp_path):
    proc = tideflow("run", "--help", cwd=tmp_path)
    assert "TIDEFLOW_WORKERS" in proc.stdout and "TIDEFLOW_BATCH_SIZE" in proc.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_stdin_pipeline_with_worker_processes(tmp_path, workers):
    (tmp_path / "p.py").write_text(
        "import polars as pl, tideflow as tf\n"
        "from tideflow.connectors import stdio\n"
        "flow = tf.Dataflow('stdin')\n"
        "flow.source(stdio.scan_stdin('text')).key_by('line').agg(pl.len().alias('n'))"
        ".sink(stdio.sink_stdout('jsonl'))\n"
    )
    proc = subprocess.run(
        [*TIDEFLOW, "run", "p.py", "--workers", workers, "--no-progress"],
        cwd=tmp_path,
        input="a\nb\na\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = sorted(json.loads(x)["line"] + str(json.loads(x)["n"]) for x in proc.stdout.splitlines())
    assert rows == ["a2", "b1"]
