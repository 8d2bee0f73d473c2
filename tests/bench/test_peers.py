"""The plain-Python loop and the Polars plans give the reference results."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tideflow import ConfigError
from tideflow.bench.nexmark._compare import check
from tideflow.bench.nexmark._peers import POLARS_QUERIES, run_polars, run_python
from tideflow.bench.nexmark._reference import QUERY_NAMES, run_reference


@pytest.mark.parametrize("query", ["q0", "q1", "q2"])
def test_python_loop_equals_the_reference(nexmark_dir: Path, tmp_path: Path, query: str) -> None:
    out = tmp_path / "out.parquet"
    rows = run_python(query, nexmark_dir, out)
    result = pl.read_parquet(out)
    assert rows == result.height > 0
    check(query, result, run_reference(query, nexmark_dir), label=f"{query} on python")


def test_python_loop_has_no_windowed_queries(nexmark_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no loop for q5"):
        run_python("q5", nexmark_dir, tmp_path / "x.parquet")


@pytest.mark.parametrize("query", QUERY_NAMES)
def test_polars_plan_equals_the_reference(nexmark_dir: Path, tmp_path: Path, query: str) -> None:
    assert query in POLARS_QUERIES
    out = tmp_path / "out.parquet"
    run_polars(query, nexmark_dir, out)
    check(
        query, pl.read_parquet(out), run_reference(query, nexmark_dir), label=f"{query} on polars"
    )
