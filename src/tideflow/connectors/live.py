"""Live tables: a sink that publishes the latest rows of a stream to the run's observers.

The dashboard (``tideflow run/demo --dashboard``) shows every published topic as a live table
and lets SQL query it (``POST /api/sql``). Only a bounded number of rows travels: the last
``keep`` rows of each micro-batch; the observer keeps the last ``keep`` rows overall (or, with
``key``, the latest row per key, like an upsert).

Examples
--------
>>> import polars as pl
>>> from tideflow.connectors import live
>>> from tideflow.connectors._base import SinkContext
>>> got = []
>>> ctx = SinkContext("alerts_live", 0, 1, publish=lambda t, rows: got.append((t, rows.height)))
>>> w = live.sink_live("alerts", keep=2).build(ctx)
>>> w.write(pl.DataFrame({"card": ["a", "b", "c"]})); w.close()
>>> got
[('alerts', 2)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import polars as pl

from tideflow._errors import ConfigError
from tideflow.connectors._base import Sink, SinkContext, SinkWriter

__all__ = ["KEY_META", "SinkLive", "sink_live"]

#: Column carrying ``{"keep": int, "key": [str]}`` to the observer (dropped there).
KEY_META = "__tideflow_key"


@dataclasses.dataclass(frozen=True, slots=True)
class SinkLive(Sink):
    """Settings of :func:`sink_live`."""

    topic: str
    keep: int
    key: tuple[str, ...] | None

    def validate(self, step_id: str) -> None:
        """Check the topic name and the row bound."""
        if not self.topic.isidentifier():
            msg = (
                f"step {step_id!r}: live topic {self.topic!r} must be a plain name (letters, "
                "digits, underscore): it becomes a SQL table name"
            )
            raise ConfigError(msg)
        if not 1 <= self.keep <= 100_000:
            msg = f"step {step_id!r}: keep must be between 1 and 100000, got {self.keep}"
            raise ConfigError(msg)

    def build(self, ctx: SinkContext) -> SinkWriter:
        """Make the writer that publishes through ``ctx.publish``."""
        return _LiveWriter(self, ctx)


class _LiveWriter(SinkWriter):
    def __init__(self, spec: SinkLive, ctx: SinkContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.meta = {"keep": spec.keep, "key": list(spec.key) if spec.key else []}

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if self.spec.key:
            batch = batch.unique(subset=list(self.spec.key), keep="last", maintain_order=True)
        rows = batch.tail(self.spec.keep).with_columns(pl.lit(self.meta).alias(KEY_META))
        self.ctx.publish(self.spec.topic, rows)

    def close(self) -> None:
        pass


def sink_live(topic: str, *, keep: int = 200, key: str | Sequence[str] | None = None) -> SinkLive:
    """Publish a stream's latest rows as the live table ``topic`` (dashboard, live SQL).

    Parameters
    ----------
    topic
        The table's name (a plain identifier).
    keep
        How many rows the live table holds: the latest ones.
    key
        Keep only the latest row per key (for streams of updates, such as ``agg(emit="updates")``).

    Examples
    --------
    >>> sink_live("spend_per_minute", key="minute").key
    ('minute',)
    """
    keys = (key,) if isinstance(key, str) else (None if key is None else tuple(key))
    return SinkLive(topic, keep, keys)
