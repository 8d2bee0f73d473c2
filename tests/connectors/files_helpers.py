"""Helpers for the connector tests: drive sources and sinks without the engine."""

from __future__ import annotations

from typing import Any

import polars as pl

from tideflow.connectors._base import Source, SourceContext, SourceReader


def concat(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    frames = [f for f in frames if f is not None]
    if not frames:
        return None
    return pl.concat(frames, how="vertical_relaxed")


def build(
    source: Source,
    *,
    worker: int = 0,
    workers: int = 1,
    batch_size: int = 1000,
    resume: dict[str, Any] | None = None,
    step: str = "read",
) -> SourceReader:
    return source.build(SourceContext(step, worker, workers, batch_size, resume or {}))


def drain(
    reader: SourceReader, *, max_polls: int | None = None
) -> tuple[pl.DataFrame | None, pl.DataFrame | None, int]:
    """Poll a bounded reader until it finishes (or ``max_polls`` batches)."""
    data, dead = [], []
    polls = 0
    while not reader.finished:
        if max_polls is not None and polls >= max_polls:
            break
        batch = reader.poll()
        if batch is None:
            assert reader.finished, "a bounded file reader returned None before finishing"
            break
        polls += 1
        assert batch.data.height <= reader._ctx.batch_size
        data.append(batch.data)
        if batch.dead is not None:
            dead.append(batch.dead)
    return concat(data), concat(dead), polls


def read_all(source: Source, **kw: Any) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    reader = build(source, **kw)
    data, dead, _ = drain(reader)
    reader.close()
    return data, dead


def read_workers(
    source: Source, workers: int, **kw: Any
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    datas, deads = [], []
    for w in range(workers):
        d, x = read_all(source, worker=w, workers=workers, **kw)
        datas.append(d)
        deads.append(x)
    return concat(datas), concat(deads)
