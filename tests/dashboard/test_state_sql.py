"""SQL over keyed state through the dashboard (POST /api/sql, tideflow sql --connect).

One query sees every keyed step and ``state_cut`` at the same consistent cut: the rows equal a
brute-force aggregation over the records each worker had pushed before it, with 1 and 2
workers.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import polars as pl
import pytest
from dash_helpers import Interleaved, http_json, interleaved_rows

import tideflow as tf
from tideflow.cli import main
from tideflow.dashboard import Dashboard, DashboardSettings
from tideflow.testing import CollectSink

# Keyed state and the cut, in one query (so at one cut).
QUERY = """
SELECT 'k' AS t, k AS a, n AS b, total AS c FROM {name}_per_k
UNION ALL
SELECT 'cut', CAST(worker AS VARCHAR), records, 0 FROM state_cut
"""


def _flow(name: str) -> tf.Dataflow:
    flow = tf.Dataflow(name)
    flow.source(Interleaved(150, 40, pause=0.01), name="src").key_by("k").agg(
        pl.len().alias("n"), pl.col("v").sum().alias("total"), name="per_k"
    ).sink(CollectSink(), name="out")
    return flow


def _start(flow: tf.Dataflow, dash: Dashboard, workers: int) -> threading.Thread:
    job = threading.Thread(
        target=tf.run, args=(flow,), kwargs={"observers": [dash], "workers": workers}
    )
    job.start()
    deadline = time.monotonic() + 60  # worker processes start slowly on a busy machine
    while dash.snapshot()["totals"]["records_in"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def _check(rows: list[list[Any]], workers: int) -> int:
    cut = {int(a): b for t, a, b, _ in rows if t == "cut"}
    assert sorted(cut) == list(range(workers))
    parts = [interleaved_rows(w, workers, 0, n) for w, n in cut.items() if n]
    seen = pl.concat(parts) if parts else pl.DataFrame(schema={"k": pl.String, "v": pl.Int64})
    want = seen.group_by("k").agg(pl.len().alias("n"), pl.col("v").sum().alias("total"))
    got = sorted((a, b, c) for t, a, b, c in rows if t == "k")
    assert got == sorted(want.rows())
    return sum(cut.values())


@pytest.mark.parametrize("workers", [1, 2])
def test_sql_over_keyed_state_is_one_consistent_cut(workers: int) -> None:
    name = f"sq{workers}"
    with Dashboard(DashboardSettings(port=0)) as dash:
        job = _start(_flow(name), dash, workers)
        try:
            seen = []
            while job.is_alive() and len(seen) < 4:
                status, ans = http_json(dash.url + "api/sql", QUERY.format(name=name).encode())
                if status == 200:
                    seen.append(_check(ans["rows"], workers))
                else:  # only once workers start finishing
                    assert "ending" in ans["error"] or "ended" in ans["error"], ans
                time.sleep(0.1)
            assert len(seen) >= 2 and seen == sorted(seen)
            _, tables = http_json(dash.url + "api/tables")
            assert tables[f"{name}_per_k"]["state_of"] == f"{name}.per_k"
            status, ans = http_json(dash.url + "api/sql", f"DELETE FROM {name}_per_k".encode())
            assert status == 400 and "only SELECT" in ans["error"]
            state = dash.snapshot()
            (agg,) = [s for s in state["steps"] if s["id"] == f"{name}.per_k"]
            assert agg["state_table"] == f"{name}_per_k"
        finally:
            job.join(timeout=60)
        status, ans = http_json(dash.url + "api/sql", f"SELECT * FROM {name}_per_k".encode())
        assert status == 400 and "run has ended" in ans["error"]


def test_cli_sql_connect_reads_keyed_state(capsys: pytest.CaptureFixture[str]) -> None:
    with Dashboard(DashboardSettings(port=0)) as dash:
        job = _start(_flow("cli"), dash, 1)
        try:
            host, port = dash.address
            code = main(["sql", "--json", "--connect", f"{host}:{port}", QUERY.format(name="cli")])
            assert code == 0
            _check(json.loads(capsys.readouterr().out)["rows"], 1)
        finally:
            job.join(timeout=60)
