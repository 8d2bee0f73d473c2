"""The Bytewax peer flows (bench-only dependency: skipped when bytewax is not installed)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("bytewax")

from tideflow.bench.nexmark._compare import check
from tideflow.bench.nexmark._reference import run_reference
from tideflow.bench.nexmark._worker import peer_module


@pytest.mark.parametrize("query", ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q11"])
def test_bytewax_flow_equals_the_reference(nexmark_dir: Path, tmp_path: Path, query: str) -> None:
    flows = peer_module("bytewax_flows")
    out = tmp_path / "out.parquet"
    flows.run(query, nexmark_dir, out)
    check(
        query, pl.read_parquet(out), run_reference(query, nexmark_dir), label=f"{query} on bytewax"
    )
