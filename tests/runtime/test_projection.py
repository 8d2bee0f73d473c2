"""Projection pushdown: sources read only the columns the flow uses; results do not change."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors import files
from tideflow.connectors._base import Source, SourceContext, SourceReader
from tideflow.runtime._projection import project_sources
from tideflow.testing import CollectSink, TestingSource

ROWS = [
    {"a": i, "b": f"s{i % 7}", "c": i * 0.5, "d": i % 3, "e": "x" * (i % 4)} for i in range(500)
]


@dataclasses.dataclass(frozen=True)
class Recording(Source):
    """A testing source that supports ``project`` and records what it was asked for."""

    rows: tuple[dict[str, Any], ...]
    columns: frozenset[str] | None = None

    @property
    def bounded(self) -> bool:
        return True

    def project(self, columns: frozenset[str]) -> Recording:
        return dataclasses.replace(self, columns=columns)

    def build(self, ctx: SourceContext) -> SourceReader:
        frame = pl.DataFrame(list(self.rows))
        if self.columns is not None:
            frame = frame.select([c for c in frame.columns if c in self.columns])
        return TestingSource([frame], batch_size=64).build(ctx)


def _pipelines() -> dict[str, Any]:
    return {
        "select": lambda s: s.select("a", (pl.col("c") * 2).alias("c2")),
        "filter_select": lambda s: s.filter(pl.col("d") == 1).select("a", "b"),
        "with_columns": lambda s: s.with_columns(f=pl.col("a") + 1).select("f", "e"),
        "overwrite": lambda s: s.with_columns(a=pl.col("d") * 10).select("a"),
        "drop": lambda s: s.drop("e").select("a", "c"),
        "event_time_agg": lambda s: (
            s.with_columns(ts=pl.col("a") * 1000)
            .event_time("ts", unit="ms")
            .key_by("d")
            .agg(pl.col("c").sum().alias("total"))
        ),
        "n_unique": lambda s: s.key_by("d").agg(pl.col("b").n_unique().alias("nb")),
        "map_batches": lambda s: s.map_batches(
            lambda df: df.select(pl.col("a") - pl.col("d")), reads=["a", "d"]
        ),
        "all": lambda s: s.select(pl.all()),
        "user_fn": lambda s: s.map_batches(lambda df: df.select("a")),
    }


READS = {
    "select": {"a", "c"},
    "filter_select": {"a", "b", "d"},
    "with_columns": {"a", "e"},
    "overwrite": {"d"},
    "drop": {"a", "c", "e"},
    "event_time_agg": {"a", "c", "d"},
    "n_unique": {"b", "d"},
    "map_batches": {"a", "d"},
    "all": None,
    "user_fn": None,
}


@pytest.mark.parametrize("case", sorted(READS))
def test_sources_read_only_what_the_flow_uses(case: str, workers: int) -> None:
    build = _pipelines()[case]
    results = []
    for project in (True, False):
        flow = tf.Dataflow("proj")
        src = Recording(tuple(ROWS))
        out = CollectSink()
        build(flow.source(src, name="src")).sink(out)
        planned = project_sources(flow.nodes)
        got = planned.get(0)
        assert (got.columns if got is not None else None) == (
            None if READS[case] is None else frozenset(READS[case])
        )
        if not project:  # the same flow with a source that cannot project
            flow.nodes[0].spec = TestingSource(ROWS, batch_size=64)
        tf.run(flow, workers=workers, batch_size=64)
        frame = out.frame()
        results.append(frame.sort(frame.columns))
    assert results[0].equals(results[1])


def test_scan_parquet_reads_only_the_used_columns(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "in.parquet"
    pl.DataFrame(ROWS).write_parquet(path, row_group_size=100)
    flow = tf.Dataflow("pq")
    out = CollectSink()
    flow.source(files.scan_parquet(str(path)), name="src").filter(pl.col("d") == 2).select(
        "a", "e"
    ).sink(out)
    planned = project_sources(flow.nodes)
    assert planned[0].columns == frozenset({"a", "d", "e"})
    tf.run(flow, workers=workers)
    want = pl.DataFrame(ROWS).filter(pl.col("d") == 2).select("a", "e")
    assert out.frame().sort("a").equals(want)
