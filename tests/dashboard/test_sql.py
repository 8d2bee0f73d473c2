"""Read-only SQL over live tables and output files: answers, refusals, limits, the CLI."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import polars as pl
import pytest

from tideflow.cli import main
from tideflow.dashboard import SqlError, check_read_only, load_files, run_query

TABLES = {
    "alerts": pl.DataFrame({"card": ["a", "b", "a", "c"], "rule": ["x", "y", "x", "x"]}),
    "stats": pl.DataFrame({"card": ["a", "b"], "spend": [10.5, 3.0]}),
}


def test_select_with_join_and_cte() -> None:
    r = run_query(
        "WITH n AS (SELECT card, count(*) AS k FROM alerts GROUP BY card) "
        "SELECT n.card, k, spend FROM n JOIN stats USING (card) ORDER BY card",
        TABLES,
    )
    assert r.columns == ["card", "k", "spend"]
    assert r.rows == [["a", 2, 10.5], ["b", 1, 3.0]]
    assert not r.truncated


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("INSERT INTO alerts VALUES ('z', 'q')", "only SELECT"),
        ("UPDATE alerts SET rule = 'q'", "only SELECT"),
        ("DELETE FROM alerts", "only SELECT"),
        ("CREATE TABLE t AS SELECT 1", "only SELECT"),
        ("DROP VIEW alerts", "only SELECT"),
        ("COPY alerts TO '/tmp/tideflow-stolen.csv'", "only SELECT"),
        ("ATTACH '/tmp/tideflow-x.db' AS x", "only SELECT"),
        ("INSTALL httpfs", "only SELECT"),
        ("LOAD sqlite_scanner", "only SELECT"),
        ("SET enable_external_access = true", "only SELECT"),
        ("PRAGMA database_list", "only SELECT"),
        ("EXPLAIN SELECT * FROM alerts", "only SELECT"),
        ("SELECT 1; DELETE FROM alerts", "exactly one"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM read_text('/etc/hostname')", "read_text"),
        ("SELECT * FROM read_parquet('x.parquet')", "read_parquet"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
        ("SELECT getenv('HOME')", "getenv"),
        (
            "SELECT * FROM alerts WHERE card IN (SELECT column0 FROM read_csv('/etc/passwd'))",
            "read_csv",
        ),
    ],
)
def test_writes_and_file_reads_are_refused(sql: str, match: str) -> None:
    with pytest.raises(SqlError, match=match):
        run_query(sql, TABLES)
    assert TABLES["alerts"].height == 4


def test_file_paths_as_tables_cannot_be_read(tmp_path: Path) -> None:
    # A quoted path is a "replacement scan" in DuckDB; external access is off, so it fails.
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(SqlError):
        run_query(f"SELECT * FROM '{secret}'", TABLES)


def test_row_limit_truncates() -> None:
    r = run_query("SELECT * FROM range(100)", {}, max_rows=7)
    assert len(r.rows) == 7 and r.truncated


def test_time_limit_interrupts_a_long_query() -> None:
    start = time.monotonic()
    with pytest.raises(SqlError, match="time limit"):
        run_query(
            "SELECT count(*) FROM range(10000000000) a, range(10) b WHERE a.range % 7 = b.range",
            {},
            timeout=0.5,
        )
    assert time.monotonic() - start < 5


def test_check_read_only_accepts_plain_selects() -> None:
    check_read_only("SELECT rule, count(*) FROM alerts GROUP BY ALL ORDER BY 2 DESC")
    check_read_only("SELECT * FROM range(3) UNION ALL SELECT 1")


def _outputs(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    pl.DataFrame({"word": ["a", "b"], "count": [3, 1]}).write_csv(d / "counts.csv")
    pl.DataFrame({"x": [1, 2, 3]}).write_parquet(d / "numbers.parquet")
    pl.DataFrame({"step": ["s"], "reason": ["bad"]}).write_ndjson(d / "dead-letters.jsonl")
    parts = d / "events"
    (parts / "day=1").mkdir(parents=True)
    pl.DataFrame({"v": [1, 2]}).write_parquet(parts / "day=1" / "part-0.parquet")
    (parts / "day=2").mkdir()
    pl.DataFrame({"v": [5]}).write_parquet(parts / "day=2" / "part-0.parquet")
    con = sqlite3.connect(d / "demo.sqlite")
    con.execute("CREATE TABLE alerts (card TEXT, rule TEXT)")
    con.executemany("INSERT INTO alerts VALUES (?, ?)", [("c1", "burst"), ("c2", "burst")])
    con.commit()
    con.close()
    return d


def test_load_files_one_table_per_file(tmp_path: Path) -> None:
    tables = load_files([_outputs(tmp_path)])
    assert set(tables) == {"counts", "numbers", "dead_letters", "events", "alerts"}
    assert tables["alerts"].rows() == [("c1", "burst"), ("c2", "burst")]
    assert sorted(tables["events"].select("day", "v").rows()) == [(1, 1), (1, 2), (2, 5)]


def test_cli_sql_over_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _outputs(tmp_path)
    code = main(["sql", "SELECT rule, count(*) AS n FROM alerts GROUP BY rule", str(d)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].split() == ["rule", "n"]
    assert out.splitlines()[2].split() == ["burst", "2"]
    code = main(["sql", "--json", "SELECT sum(count) AS s FROM counts", str(d)])
    assert json.loads(capsys.readouterr().out)["rows"] == [[4]]
    assert main(["sql", "DELETE FROM counts", str(d)]) == 1
    assert "only SELECT" in capsys.readouterr().err


def test_cli_sql_connect(running, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from dash_helpers import counting_flow

    from tideflow.dashboard import Dashboard, DashboardSettings

    with Dashboard(DashboardSettings(port=0)) as dash:
        t = running(counting_flow("cli_sql", events=2000, rate=20000), [dash])
        t.join(timeout=30)
        addr = "{}:{}".format(*dash.address)
        code = main(["sql", "--connect", addr, "SELECT count(*) AS n FROM per_key"])
        out = capsys.readouterr().out
        assert code == 0 and out.splitlines()[2].strip() == "5"
        assert main(["sql", "--connect", addr, "INSERT INTO per_key VALUES (1)"]) == 1
        assert "only SELECT" in capsys.readouterr().err
