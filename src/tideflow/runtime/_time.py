"""Event time: normalizing timestamp columns and generating watermarks.

Times travel as ``Datetime("us", "UTC")`` columns; watermarks as int64 microseconds since the
epoch. A watermark W promises that no more records with a time below W are expected: a record
below it is *late*.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import polars as pl

from tideflow._errors import JobError
from tideflow.api._dataflow import EventTimeOp
from tideflow.api._graph import Node
from tideflow.connectors._base import dead_letters
from tideflow.runtime._frames import set_column
from tideflow.runtime._operators import OpContext, Operator

__all__ = ["EventTimeOperator", "to_utc_micros"]

WM_MAX = 2**63 - 1
TIME_DTYPE = pl.Datetime("us", "UTC")


def to_utc_micros(col: pl.Series, unit: str | None) -> pl.Series:
    """Convert a column to ``Datetime("us", "UTC")``; unparsable values become null."""
    dtype = col.dtype
    if dtype == TIME_DTYPE:
        return col  # already normalized (the common case downstream of a source): no copy
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            msg = f"column {col.name!r} is a timestamp without a time zone"
            raise ValueError(msg)
        if dtype.time_zone == "UTC":
            return col.cast(TIME_DTYPE)
        return col.dt.convert_time_zone("UTC").cast(TIME_DTYPE)
    if dtype.is_integer():
        if unit is None:
            msg = f"column {col.name!r} holds integers; an event-time unit is needed"
            raise ValueError(msg)
        epoch_unit = cast(Literal["ns", "us", "ms", "s"], unit)
        times = pl.from_epoch(col, time_unit=epoch_unit)
        return times.dt.replace_time_zone("UTC").cast(TIME_DTYPE)
    if dtype == pl.String:
        parsed = col.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
        return parsed.cast(TIME_DTYPE)
    msg = f"column {col.name!r} of type {dtype} cannot be an event time"
    raise ValueError(msg)


class EventTimeOperator(Operator):
    """Normalizes the time column, rejects records without a time, and emits watermarks."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: EventTimeOp = node.spec
        self.delay = int(self.op.delay.total_seconds() * 1_000_000)
        self.idle_after = self.op.idle.total_seconds() if self.op.idle is not None else None
        self.max_seen: int | None = None
        self.last_data = ctx.now()
        self.idle = False
        # With ``per``: the largest time and the last arrival (processing time) of each part.
        self.part_max: dict[Any, int] = {}
        self.part_seen: dict[Any, float] = {}

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        col = self.op.column
        if col not in batch.columns:
            msg = (
                f"step '{self.node.step_id}': no column {col!r} for event time; "
                f"batch columns are {batch.columns}"
            )
            raise JobError(msg, step_id=self.node.step_id)
        raw = batch.get_column(col)
        times = to_utc_micros(raw, self.op.unit)
        if times is not raw:
            batch = set_column(batch, times.alias(col))
        if times.null_count():
            missing = times.is_null()
            bad = batch.filter(missing)
            raws = bad.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_list()
            step = self.node.step_id
            self.ctx.dead(
                dead_letters(
                    step,
                    [step] * bad.height,
                    [f"no valid event time in {col!r}"] * bad.height,
                    raws,
                )
            )
            batch = batch.filter(~missing)
        self.last_data = self.ctx.now()
        if batch.height == 0:
            return
        self.ctx.emit(batch)
        self.idle = False
        if self.op.per is not None:
            self._per_part(batch)
            return
        top_us = _micros(batch.get_column(col))
        if self.max_seen is None or top_us > self.max_seen:
            self.max_seen = top_us
        self.ctx.watermark(self.max_seen - self.delay, False)

    def _per_part(self, batch: pl.DataFrame) -> None:
        per = self.op.per
        assert per is not None
        if per not in batch.columns:
            msg = (
                f"step '{self.node.step_id}': no column {per!r} to track watermarks per; "
                f"batch columns are {batch.columns}"
            )
            raise JobError(msg, step_id=self.node.step_id)
        tops = batch.group_by(per).agg(pl.col(self.op.column).dt.epoch("us").max().alias("top"))
        now = self.ctx.now()
        for part, top in tops.iter_rows():
            old = self.part_max.get(part)
            self.part_max[part] = top if old is None or top > old else old
            self.part_seen[part] = now
        self._emit_part_watermark()

    def _emit_part_watermark(self) -> None:
        live = [
            m
            for p, m in self.part_max.items()
            if self.idle_after is None or self.ctx.now() - self.part_seen[p] < self.idle_after
        ]
        if not live:
            return
        low = min(live)
        if self.max_seen is None or low > self.max_seen:
            self.max_seen = low
        self.ctx.watermark(self.max_seen - self.delay, False)

    def on_watermark(self, wm: int, idle: bool) -> None:
        if wm == WM_MAX:  # the input ended
            self.ctx.watermark(WM_MAX, False)

    def on_tick(self) -> None:
        if self.idle_after is None or self.idle:
            return
        if self.op.per is not None and len(self.part_max) > 1:
            self._emit_part_watermark()  # a part gone quiet stops holding the others back
        if self.ctx.now() - self.last_data >= self.idle_after:
            self.idle = True
            self.ctx.watermark(self.ctx.current_watermark, True)

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"version": 1, "max_seen": self.max_seen}
        if self.op.per is not None:
            snap["parts"] = [[p, m] for p, m in self.part_max.items()]
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        self.max_seen = snap.get("max_seen")
        now = self.ctx.now()
        for part, top in snap.get("parts", []):
            old = self.part_max.get(part)
            self.part_max[part] = top if old is None or top > old else old
            self.part_seen[part] = now


def _micros(col: pl.Series) -> int:
    """The largest time of a ``Datetime("us")`` column, in epoch microseconds."""
    value = col.cast(pl.Int64).max()
    assert isinstance(value, int)
    return value
