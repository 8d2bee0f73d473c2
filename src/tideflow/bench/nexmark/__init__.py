"""Nexmark: event generator, DuckDB reference queries, peers and the benchmark harness."""

from __future__ import annotations

from tideflow.bench.nexmark._generator import (
    EventBatch,
    generate,
    generate_tables,
    iter_batches,
    write_events,
)
from tideflow.bench.nexmark._model import GeneratorSettings

__all__ = [
    "EventBatch",
    "GeneratorSettings",
    "generate",
    "generate_tables",
    "iter_batches",
    "write_events",
]
