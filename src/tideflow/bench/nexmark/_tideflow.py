"""The Nexmark queries as tideflow pipelines (the engine slot of the harness).

Queries that need event-time windows (q5, q7, q8, q9, q11, q12) wait for the event-time work
(issue 3) and raise a ConfigError saying so; they never return a made-up result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from tideflow._errors import ConfigError
from tideflow.bench.nexmark._reference import spec
from tideflow.connectors._base import (
    Sink,
    SinkContext,
    SinkWriter,
    Source,
    SourceBatch,
    SourceContext,
    SourceReader,
)

__all__ = ["NexmarkSource", "ParquetResultSink", "build_flow", "run_tideflow"]

WINDOWED_NOT_YET = ("q5", "q7", "q8", "q9", "q11", "q12")


@dataclasses.dataclass(frozen=True)
class NexmarkSource(Source):
    """Events of one kind from a generated Nexmark directory, in file (event-time) order.

    Row groups are dealt round-robin to the workers; the position is the next row group of each.
    With ``seq=True`` a ``seq`` column carries the row's position in the file (arrival order).
    """

    directory: Path
    kind: str
    seq: bool = False

    @property
    def bounded(self) -> bool:
        """Generated files end."""
        return True

    def validate(self, step_id: str) -> None:
        """Check the file exists."""
        path = Path(self.directory) / f"{self.kind}.parquet"
        if not path.exists():
            msg = (
                f"step {step_id!r}: nexmark input {str(path)!r} not found; create it with "
                f"`tideflow bench nexmark generate --out {self.directory}`"
            )
            raise ConfigError(msg)

    def build(self, ctx: SourceContext) -> SourceReader:
        """Open the file for this worker's row groups."""
        return _NexmarkReader(self, ctx)


class _NexmarkReader(SourceReader):
    def __init__(self, src: NexmarkSource, ctx: SourceContext) -> None:
        self._file = pq.ParquetFile(Path(src.directory) / f"{src.kind}.parquet")
        meta = self._file.metadata
        self._groups = list(range(ctx.worker_index, meta.num_row_groups, ctx.worker_count))
        self._starts = [0]
        for i in range(meta.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(i).num_rows)
        self._key = f"{src.kind}.parquet"
        self._next = int(ctx.resume.get(self._key, 0))
        self._seq = src.seq

    def poll(self) -> SourceBatch | None:
        if self._next >= len(self._groups):
            return None
        group = self._groups[self._next]
        self._next += 1
        frame = pl.from_arrow(self._file.read_row_group(group))
        assert isinstance(frame, pl.DataFrame)
        if self._seq:
            frame = frame.with_row_index("seq", offset=self._starts[group])
        return SourceBatch(frame)

    @property
    def finished(self) -> bool:
        return self._next >= len(self._groups)

    def snapshot(self) -> dict[str, Any]:
        return {self._key: self._next}


@dataclasses.dataclass(frozen=True)
class ParquetResultSink(Sink):
    """Collect every batch and write one Parquet file at the end (results are small or bounded)."""

    path: Path
    single_writer = True

    def build(self, ctx: SinkContext) -> SinkWriter:
        """A writer that buffers batches until close."""
        return _ParquetResultWriter(Path(self.path))


class _ParquetResultWriter(SinkWriter):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._parts: list[pl.DataFrame] = []
        self.rows = 0

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height:
            self._parts.append(batch)
            self.rows += batch.height

    def close(self) -> None:
        if self._parts:
            pl.concat(self._parts, how="vertical_relaxed").write_parquet(self._path)


def _engine() -> Any:
    import tideflow as tf

    if not hasattr(tf, "Dataflow") or not hasattr(tf, "run"):
        msg = (
            "nexmark: the tideflow engine (tideflow.Dataflow, tideflow.run) is not in this "
            "checkout yet; use --engine duckdb|polars|python|bytewax"
        )
        raise ConfigError(msg)
    return tf


def build_flow(query: str, input_dir: Path, output: Path) -> Any:
    """Build the tideflow dataflow of ``query`` (without running it)."""
    spec(query)
    if query in WINDOWED_NOT_YET:
        msg = (
            f"nexmark {query}: not yet available on tideflow: it needs event-time windows "
            f"(issue 3); run it with --engine duckdb|polars|bytewax meanwhile"
        )
        raise ConfigError(msg)
    _engine()
    msg = f"nexmark {query}: no tideflow pipeline written yet for this query"
    raise ConfigError(msg)


def run_tideflow(query: str, input_dir: Path, output: Path) -> int:
    """Run ``query`` on tideflow over ``input_dir``; write the final results to ``output``."""
    tf = _engine()
    flow = build_flow(query, Path(input_dir), Path(output))
    tf.run(flow)
    return pq.ParquetFile(output).metadata.num_rows if Path(output).exists() else 0


def run_latency(query: str, bids: Any, rate: float) -> tuple[list[float], float]:
    """Throttled run of ``query`` on tideflow (end-to-end latency); needs the engine."""
    _engine()
    msg = f"nexmark latency {query}: no tideflow throttled pipeline written yet"
    raise ConfigError(msg)
