"""The tideflow pipelines of the Nexmark queries give the reference results."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tideflow.bench.nexmark._compare import check
from tideflow.bench.nexmark._reference import QUERY_NAMES, run_reference
from tideflow.bench.nexmark._tideflow import PIPELINES, run_tideflow


def test_every_query_is_a_pipeline() -> None:
    assert set(PIPELINES) == set(QUERY_NAMES)


@pytest.mark.parametrize("query", sorted(PIPELINES, key=lambda q: int(q[1:])))
def test_pipeline_equals_the_reference(nexmark_dir: Path, tmp_path: Path, query: str) -> None:
    out = tmp_path / "out.parquet"
    rows = run_tideflow(query, nexmark_dir, out)
    result = pl.read_parquet(out)
    assert rows == result.height
    check(query, result, run_reference(query, nexmark_dir), label=f"{query} on tideflow")


JOIN_QUERIES = ("q3", "q4", "q6", "q9", "q18", "q19", "q20")
WINDOW_QUERIES = ("q5", "q7", "q8", "q11", "q12")


@pytest.fixture(scope="module")
def small_groups(nexmark_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small data set rewritten in small row groups: many batches per input, so that
    auctions close across batches, bids arrive before their auctions' batches and two workers
    take turns (row groups are dealt round-robin)."""
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("nexmark-small-groups")
    for kind, rows in (("person", 40), ("auction", 120), ("bid", 1_500)):
        table = pq.read_table(nexmark_dir / f"{kind}.parquet")
        pq.write_table(table, out / f"{kind}.parquet", row_group_size=rows)
    return out


@pytest.fixture(scope="module")
def spread_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 events over 48 s of event time (250/s), in row groups of 700 rows.

    Many windows and sessions, and with 2 workers each reads every other row group, so their
    streams interleave at the exchanges.
    """
    import pyarrow.parquet as pq

    from tideflow.bench.nexmark import GeneratorSettings, write_events

    out = tmp_path_factory.mktemp("nexmark_spread")
    write_events(GeneratorSettings(events=12_000, seed=3, event_rate=250), out)
    for kind in ("person", "auction", "bid"):
        path = out / f"{kind}.parquet"
        pq.write_table(pq.read_table(path), path, row_group_size=700)
    return out


def _run_and_check(
    query: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run ``query`` on tideflow with ``workers``; check it against DuckDB; both results."""
    monkeypatch.setenv("TIDEFLOW_NEXMARK_WORKERS", str(workers))
    out = tmp_path / "out.parquet"
    # Small batches: the source reads blocks of row groups up to the batch size.
    run_tideflow(query, data, out, batch_size=256)
    result, reference = pl.read_parquet(out), run_reference(query, data)
    check(query, result, reference, label=f"{query} on tideflow, {workers} workers")
    return result, reference


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("query", JOIN_QUERIES)
def test_join_queries_equal_the_reference_in_many_batches(
    small_groups: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str, workers: int
) -> None:
    result, _ = _run_and_check(query, small_groups, tmp_path, monkeypatch, workers)
    assert result.height > 0


@pytest.mark.parametrize("query", JOIN_QUERIES + WINDOW_QUERIES)
def test_join_queries_run_without_per_record_steps(
    nexmark_dir: Path, tmp_path: Path, query: str
) -> None:
    from tideflow.bench.nexmark._tideflow import build_flow

    flow = build_flow(query, nexmark_dir, tmp_path / "out.parquet")
    assert not [n.step_id for n in flow.nodes if n.kind in ("record", "stateful_map")]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("query", WINDOW_QUERIES)
def test_window_queries_equal_the_reference_with_workers(
    spread_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str, workers: int
) -> None:
    _, reference = _run_and_check(query, spread_dir, tmp_path, monkeypatch, workers)
    assert reference.height > (1 if query == "q7" else 20)  # many windows, not a trivial case


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("query", ["q21", "q22"])
def test_string_queries_equal_the_reference_in_many_batches(
    small_groups: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str, workers: int
) -> None:
    result, _ = _run_and_check(query, small_groups, tmp_path, monkeypatch, workers)
    assert result.height > 1_000
