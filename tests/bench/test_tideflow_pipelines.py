"""The tideflow pipelines of the Nexmark queries give the reference results."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tideflow import ConfigError
from tideflow.bench.nexmark._compare import check
from tideflow.bench.nexmark._reference import QUERY_NAMES, run_reference
from tideflow.bench.nexmark._tideflow import PIPELINES, WINDOWED_NOT_YET, run_tideflow


def test_every_query_is_a_pipeline_or_waits_for_windows() -> None:
    assert set(PIPELINES) | set(WINDOWED_NOT_YET) == set(QUERY_NAMES)
    assert not set(PIPELINES) & set(WINDOWED_NOT_YET)


@pytest.mark.parametrize("query", sorted(PIPELINES, key=lambda q: int(q[1:])))
def test_pipeline_equals_the_reference(nexmark_dir: Path, tmp_path: Path, query: str) -> None:
    out = tmp_path / "out.parquet"
    rows = run_tideflow(query, nexmark_dir, out)
    result = pl.read_parquet(out)
    assert rows == result.height
    check(query, result, run_reference(query, nexmark_dir), label=f"{query} on tideflow")


@pytest.mark.parametrize("query", WINDOWED_NOT_YET)
def test_windowed_queries_say_they_are_not_available(
    nexmark_dir: Path, tmp_path: Path, query: str
) -> None:
    with pytest.raises(ConfigError, match=rf"nexmark {query}: not yet available on tideflow"):
        run_tideflow(query, nexmark_dir, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
