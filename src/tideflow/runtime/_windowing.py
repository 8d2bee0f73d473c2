"""Window operators: tumbling/sliding (aligned buckets), sessions, count windows.

Aligned windows keep, per window start, a list of *partial* frames (one row per key with
mergeable partial aggregates, computed vectorized per batch). When the watermark passes a
window's end, its partials are merged with one ``group_by`` and finalized. Nothing per record
or per key runs in Python for Polars aggregations; user functions (reduce/fold/apply) keep the
window's raw records instead and run per key at firing time.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from tideflow._errors import JobError, StateError
from tideflow.api._aggs import AggSpec
from tideflow.api._graph import Node, fn_location
from tideflow.api._windows import (
    Count,
    Session,
    Sliding,
    Tumbling,
    WindowCombineOp,
    WindowOp,
    WindowSelectOp,
    _us,
)
from tideflow.runtime._frames import (
    concat,
    epoch_us,
    filter_mask,
    frame_of,
    series_of,
    set_column,
    without,
)
from tideflow.runtime._operators import OpContext, Operator
from tideflow.runtime._smallagg import (
    SMALL_AGG_ROWS,
    SmallPartials,
    WindowAccumulator,
    accumulates,
    exact_partials,
    partial_columns,
)
from tideflow.state._backends import DiskState

__all__ = ["WindowCombiner", "WindowSelector", "build_window_operator"]

log = logging.getLogger("tideflow.runtime")

WM_MAX = 2**63 - 1
TIME = pl.Datetime("us", "UTC")
_COMPACT_AT = 16


def _ipc(frame: pl.DataFrame | None) -> bytes | None:
    if frame is None:
        return None
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _frame(data: bytes | None) -> pl.DataFrame | None:
    return None if data is None else pl.read_ipc(io.BytesIO(data))


def _check(step: str, snap: dict[str, Any], kind: str) -> None:
    if snap.get("version") != 2 or snap.get("kind") != kind:
        msg = (
            f"step '{step}': window state {snap.get('kind')!r} version {snap.get('version')!r} "
            f"cannot be restored into a {kind} window (expected version 2); was the window "
            "changed since the checkpoint?"
        )
        raise StateError(msg)


# -- aggregations as partial -> merge -> final expressions ---------------------------------------
def _p(s: AggSpec) -> str:
    return f"__{s.name}"


def partial_exprs(specs: Iterable[AggSpec]) -> list[pl.Expr]:
    """Raw rows -> one partial row per group."""
    out: list[pl.Expr] = []
    for s in specs:
        p = _p(s)
        col = pl.col(s.column) if s.column else None
        if s.kind == "count":
            out.append(pl.len().cast(pl.Int64).alias(p))
        elif s.kind == "count_non_null":
            assert col is not None
            out.append(col.count().cast(pl.Int64).alias(p))
        elif s.kind == "sum":
            assert col is not None
            out.append(col.sum().alias(p))
        elif s.kind == "mean":
            assert col is not None
            out += [
                col.sum().cast(pl.Float64).alias(p + "_s"),
                col.count().cast(pl.Int64).alias(p + "_n"),
            ]
        elif s.kind in ("min", "max"):
            assert col is not None
            out.append((col.min() if s.kind == "min" else col.max()).alias(p))
        elif s.kind == "n_unique":
            assert col is not None
            out.append(col.unique().alias(p))
        elif s.kind == "top_k":
            assert col is not None
            out.append(col.drop_nulls().top_k(s.k).alias(p))
    return out


def merge_exprs(specs: Iterable[AggSpec]) -> list[pl.Expr]:
    """Partial rows of one group -> one partial row."""
    out: list[pl.Expr] = []
    for s in specs:
        p = _p(s)
        if s.kind == "mean":
            out += [pl.col(p + "_s").sum(), pl.col(p + "_n").sum()]
        elif s.kind == "min":
            out.append(pl.col(p).min())
        elif s.kind == "max":
            out.append(pl.col(p).max())
        elif s.kind == "n_unique":
            out.append(pl.col(p).list.explode(keep_nulls=False, empty_as_null=False).unique())
        elif s.kind == "top_k":
            out.append(pl.col(p).list.explode(keep_nulls=False, empty_as_null=False).top_k(s.k))
        else:
            out.append(pl.col(p).sum())
    return out


def final_exprs(specs: Iterable[AggSpec]) -> list[pl.Expr]:
    """Partial row -> the aggregate values."""
    out: list[pl.Expr] = []
    for s in specs:
        p = _p(s)
        if s.kind == "mean":
            n = pl.col(p + "_n")
            out.append(pl.when(n > 0).then(pl.col(p + "_s") / n).alias(s.name))
        elif s.kind == "n_unique":
            out.append(pl.col(p).list.len().cast(pl.Int64).alias(s.name))
        elif s.kind == "top_k":
            out.append(pl.col(p).list.sort(descending=True).alias(s.name))
        elif s.kind in ("count", "count_non_null"):
            out.append(pl.col(p).cast(pl.Int64).alias(s.name))
        else:
            out.append(pl.col(p).alias(s.name))
    return out


# -- the shared part -------------------------------------------------------------------------------
class _WindowBase(Operator):
    """Time handling shared by the window operators: clock, watermark, late records."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: WindowOp = node.spec
        self.keys = list(self.op.keys)
        self.wm = -(2**63)
        self.processing = self.op.clock == "processing"
        self.time_col = self.op.time_column
        self.lateness = self.op.lateness_us
        early = self.op.early
        self.early_every_s = early.total_seconds() if hasattr(early, "total_seconds") else None
        self.early_every_n = early if isinstance(early, int) else None
        self.since_early = 0
        self.last_early = ctx.now()
        if self.op.aggs is not None:
            self.partials = partial_exprs(self.op.aggs)
            self.merges = merge_exprs(self.op.aggs)
            self.finals = final_exprs(self.op.aggs)
            self.agg_names = [s.name for s in self.op.aggs]

    # times -------------------------------------------------------------------------------
    def _times(self, batch: pl.DataFrame) -> pl.Series:
        if self.processing:
            now = int(self.ctx.now() * 1_000_000)
            self._advance(now)  # windows that ended before this batch arrived fire first
            return pl.Series("__t", [now] * batch.height, dtype=pl.Int64)
        assert self.time_col is not None
        if self.time_col not in batch.columns:
            msg = f"step '{self.node.step_id}': no event-time column {self.time_col!r} in {batch.columns}"
            raise JobError(msg, step_id=self.node.step_id)
        return batch.get_column(self.time_col).dt.epoch("us").alias("__t")

    def _late(self, rows: pl.DataFrame, reason: str) -> None:
        if rows.height:
            drop = [c for c in rows.columns if c.startswith("__")]
            self.ctx.emit(rows.drop(drop).with_columns(late_reason=pl.lit(reason)), "late")

    def _mark(self, frame: pl.DataFrame, result: str) -> pl.DataFrame:
        return frame.with_columns(result=pl.lit(result)) if self.op.mark else frame

    # grouping ------------------------------------------------------------------------------
    def _partial(self, rows: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        if self.op.aggs is not None:
            return rows.group_by(by).agg(self.partials)
        return self._leaders(rows, by)

    def _leaders(self, rows: pl.DataFrame, by: list[str]) -> pl.DataFrame:
        """``max_by``: only the records tied for the largest value per group can still win."""
        if self.op.fn is not None and self.op.fn[0] == "max_by":
            col = pl.col(self.op.fn[1])
            return rows.filter(col == col.max().over(by))
        return rows

    def _merge(
        self, frames: list[pl.DataFrame], by: list[str], *, force: bool = False
    ) -> pl.DataFrame:
        """Partials of the same groups -> one partial row per group (``force``: even of one
        frame, whose rows may repeat a group)."""
        merged = concat(frames)
        if self.op.aggs is not None:
            return merged.group_by(by).agg(self.merges)
        return self._leaders(merged, by) if len(frames) > 1 or force else merged

    def _compact(self, bucket: list[pl.DataFrame], by: list[str]) -> list[pl.DataFrame]:
        """A bucket of partials (oldest first) with its newest ones merged: at least half of
        ``_COMPACT_AT``, and older ones while they hold at most twice the rows merged so far.

        Each frame left before the merged one then holds more than twice the rows of all
        newer ones, so a bucket keeps a few frames of geometrically growing size and a
        compaction merges a bucket's large old frames only once the new rows have grown to
        their size (merging all of them every time cost a group-by of a pane's every key per
        ``_COMPACT_AT`` micro-batches: most of a small-batch job's window time).
        """
        start = len(bucket) - _COMPACT_AT // 2
        rows = sum(f.height for f in bucket[start:])
        while start > 0 and bucket[start - 1].height <= 2 * rows:
            start -= 1
            rows += bucket[start].height
        return [*bucket[:start], self._merge(bucket[start:], by)]

    def _finalize(self, merged: pl.DataFrame, window_cols: list[str]) -> pl.DataFrame:
        """Partials (or raw records) of windows -> result rows: keys, window columns, values."""
        by = [*self.keys, *window_cols]
        if self.op.aggs is not None:
            return merged.select(*by, *self.finals)
        assert self.op.fn is not None
        kind, fn = self.op.fn
        if kind == "max_by":  # the leaders, merged already
            return merged
        where = fn_location(fn if kind != "fold" else fn[1])
        rows: list[dict[str, Any]] = []
        frames: list[pl.DataFrame] = []
        for part in merged.partition_by(by, maintain_order=True):
            head = {c: part.get_column(c)[0] for c in by}
            records = part.drop([c for c in part.columns if c.startswith("__")])
            try:
                if kind == "apply":
                    out = fn(records)
                    frames.append(
                        out.with_columns(**{c: pl.lit(v) for c, v in head.items()}).select(
                            *by, *[c for c in out.columns if c not in by]
                        )
                    )
                elif kind == "reduce":
                    acc: Any = None
                    for rec in records.iter_rows(named=True):
                        acc = rec if acc is None else fn(acc, rec)
                    rows.append({**head, **{k: v for k, v in acc.items() if k not in head}})
                else:
                    init, step = fn
                    acc = init()
                    for rec in records.iter_rows(named=True):
                        acc = step(acc, rec)
                    rows.append({**head, **(acc if isinstance(acc, dict) else {"value": acc})})
            except Exception as exc:
                msg = f"step '{self.node.step_id}': {where} raised {type(exc).__name__}: {exc}"
                raise JobError(msg, step_id=self.node.step_id) from exc
        if frames:
            return pl.concat(frames, how="diagonal_relaxed")
        return pl.from_dicts(rows, infer_schema_length=None) if rows else pl.DataFrame()

    # clocks --------------------------------------------------------------------------------
    def on_watermark(self, wm: int, idle: bool) -> None:
        if not self.processing or wm == WM_MAX:
            self._advance(wm)
        self.ctx.watermark(wm, idle)

    def on_tick(self) -> None:
        now = self.ctx.now()
        if self.processing:
            self._advance(int(now * 1_000_000))
        if self.early_every_s is not None and now - self.last_early >= self.early_every_s:
            self.last_early = now
            self._early()

    def _count_for_early(self, n: int) -> None:
        if self.early_every_n is not None:
            self.since_early += n
            if self.since_early >= self.early_every_n:
                self.since_early = 0
                self._early()

    def _advance(self, wm: int) -> None:
        raise NotImplementedError

    def _early(self) -> None:
        """Emit current results of windows that changed since the last early firing."""


# -- tumbling and sliding ------------------------------------------------------------------------
class AlignedWindowOperator(_WindowBase):
    """Tumbling and sliding windows: buckets of partials per window start."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        spec = self.op.spec
        assert isinstance(spec, Tumbling | Sliding)
        self.size = _us(spec.size)
        self.hop = _us(spec.hop) if isinstance(spec, Sliding) else self.size
        self.offset = _us(spec.offset)
        self.copies = -(-self.size // self.hop)
        self.pending: dict[int, list[pl.DataFrame]] = {}
        self.fired: dict[int, pl.DataFrame] = {}
        self.dirty: set[int] = set()
        #: Sliding windows fed by the combiner: partials kept once per pane (keys and partial
        #: columns, by pane start), merged into each window containing the pane when it fires,
        #: instead of copied into every such window per batch. Only without allowed lateness
        #: and early results (those read and update windows between firings).
        self.panes: dict[int, list[pl.DataFrame]] = {}
        self.pane_mode = (
            type(self) is AlignedWindowOperator
            and self.copies > 1
            and not self.lateness
            and self.early_every_s is None
            and self.early_every_n is None
        )
        #: Windows fed by small partial frames (a low-latency job's micro-batches): each
        #: window's partials merged per key as they come, so that its firing reads finished
        #: aggregates instead of merging a list of tiny frames. Integer keys and partials,
        #: aggregations merged exactly (``accumulates``), final results (no allowed lateness,
        #: no early results); other partials are filed as frames, merged with these at firing.
        self.acc: dict[int, WindowAccumulator] = {}
        self.acc_mode = (
            type(self) is AlignedWindowOperator
            and accumulates(self.op.aggs)
            and not self.lateness
            and self.early_every_s is None
            and self.early_every_n is None
        )
        self.acc_columns = partial_columns(self.op.aggs) if self.acc_mode and self.op.aggs else []
        #: The dtypes of the key and partial columns the accumulators hold (the first small
        #: partial frame's); frames of other dtypes are filed as frames.
        self.acc_dtypes: list[Any] | None = None

    def _assign(self, base: pl.DataFrame) -> pl.DataFrame:
        """Rows with a time ``__t`` -> one row per window containing it (``__ws``)."""
        start = ((pl.col("__t") - self.offset) // self.hop) * self.hop + self.offset
        if self.copies == 1:
            return base.with_columns(__ws=start)
        parts = [base.with_columns(__ws=start - j * self.hop) for j in range(self.copies)]
        out = pl.concat(parts)
        return out.filter(pl.col("__t") < pl.col("__ws") + self.size)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if index == 1:  # partials of panes from the combiner before the exchange
            self._on_partials(batch)
            return
        batch = batch.with_row_index("__rid")
        rows = self._assign(batch.with_columns(self._times(batch)))
        end = pl.col("__ws") + self.size
        wm, late = self.wm, self.lateness
        live = rows.filter(end > wm)
        update = rows.filter((end <= wm) & (end + late > wm)) if late else rows.clear()
        if live.height + update.height < rows.height:
            kept = pl.concat([live.select("__rid"), update.select("__rid")]).unique()
            lost = batch.join(kept, on="__rid", how="anti")
            self._late(
                lost, "its windows closed: the watermark passed their end plus the allowed lateness"
            )
        by = [*self.keys, "__ws"]
        self._add(
            self._partial(live.drop("__rid", "__t"), by) if live.height else None,
            self._partial(update.drop("__rid", "__t"), by) if update.height else None,
        )
        self._count_for_early(batch.height)

    def _windows_of(self, pane: int) -> list[int]:
        """Starts of the windows that contain the pane starting at ``pane``."""
        last = ((pane - self.offset) // self.hop) * self.hop + self.offset
        return [
            ws for ws in (last - j * self.hop for j in range(self.copies)) if pane < ws + self.size
        ]

    def _on_pane_partials(self, batch: pl.DataFrame) -> bool:
        """File pane partials by pane (``pane_mode``); False if a pane's window has closed."""
        panes = [int(p) for p in np.unique(batch.get_column("__pane").to_numpy())]
        if any(min(self._windows_of(p)) + self.size <= self.wm for p in panes):
            return False
        keys = self.keys
        parts = (
            {panes[0]: without(batch, "__pane")}
            if len(panes) == 1
            else {
                int(p): part
                for (p,), part in batch.partition_by(
                    "__pane", as_dict=True, include_key=False
                ).items()
            }
        )
        for pane, part in parts.items():
            bucket = self.panes.setdefault(pane, [])
            bucket.append(part)
            if len(bucket) >= _COMPACT_AT:
                self.panes[pane] = self._compact(bucket, keys)
        return True

    def _in_window(self, part: pl.DataFrame, ws: int) -> pl.DataFrame:
        """A pane partial as a partial of window ``ws``, in the column order of window
        partials (merged partials: keys, ``__ws``, values; ``max_by`` rows: ``__ws`` last)."""
        col = pl.lit(ws, pl.Int64).alias("__ws")
        if self.op.aggs is None:
            return part.with_columns(col)
        return part.select(*self.keys, col, pl.exclude(self.keys))

    def _fold_panes(self) -> None:
        """Move the pane partials and the accumulators into the open windows' partials
        (before a snapshot, which holds window partials only)."""
        by = [*self.keys, "__ws"]
        for ws, acc in self.acc.items():
            self.pending.setdefault(ws, []).append(self._in_window(acc.frame(), ws))
        self.acc.clear()
        for pane, frames in self.panes.items():
            part = self._merge(frames, self.keys, force=True)
            for ws in self._windows_of(pane):
                if ws + self.size > self.wm:
                    bucket = self.pending.setdefault(ws, [])
                    bucket.append(self._in_window(part, ws))
                    if len(bucket) >= _COMPACT_AT:
                        self.pending[ws] = self._compact(bucket, by)
        self.panes.clear()

    def _accumulate(self, batch: pl.DataFrame) -> bool:
        """Merge a small frame of pane partials into the accumulators of the windows holding
        its panes; False (nothing done) where it cannot: another dtype, a null, a closed
        window."""
        names = [*self.keys, *(name for name, _ in self.acc_columns)]
        cols = [batch.get_column(c) for c in names]
        dtypes = [c.dtype for c in cols]
        if self.acc_dtypes is None:
            if not exact_partials(dtypes, len(self.keys)):
                self.acc_mode = False
                return False
            self.acc_dtypes = dtypes
        if dtypes != self.acc_dtypes or any(c.null_count() for c in cols):
            return False
        pane = batch.get_column("__pane").to_numpy()
        panes = np.unique(pane).tolist()
        if any(min(self._windows_of(p)) + self.size <= self.wm for p in panes):
            return False
        ids, arrays = WindowAccumulator.rows(batch, self.keys, self.acc_columns)
        for p in panes:
            if len(panes) > 1:  # a pane's rows (its keys are distinct)
                at = np.flatnonzero(pane == p)
                ids_p, arrays_p = [ids[i] for i in at.tolist()], [a[at] for a in arrays]
            else:
                ids_p, arrays_p = ids, arrays
            for ws in self._windows_of(p):
                acc = self.acc.get(ws)
                if acc is None:
                    acc = self.acc[ws] = WindowAccumulator(self.keys, self.acc_columns, dtypes)
                acc.add(ids_p, arrays_p)
        return True

    def _on_partials(self, batch: pl.DataFrame) -> None:
        """Pane partials -> partials of the windows containing each pane."""
        if self.acc_mode and batch.height <= SMALL_AGG_ROWS and self._accumulate(batch):
            return
        if self.pane_mode and self._on_pane_partials(batch):
            return
        rows = self._assign(batch.rename({"__pane": "__t"})).drop("__t")
        end = pl.col("__ws") + self.size
        live = rows.filter(end > self.wm)
        update = rows.filter((end <= self.wm) & (end + self.lateness > self.wm))
        if live.height + update.height < rows.height:  # impossible when the combiner runs
            log.warning(
                "step '%s': pre-aggregated records reached windows that had closed; dropped",
                self.node.step_id,
            )
        by = [*self.keys, "__ws"]
        # Tumbling windows are their own panes: a batch holds one partial per key and window.
        force = self.copies > 1 or self.hop != self.size
        self._add(
            self._merge([live], by, force=force) if live.height else None,
            self._merge([update], by, force=force) if update.height else None,
        )

    def _add(self, partial: pl.DataFrame | None, update: pl.DataFrame | None) -> None:
        """File partial rows (keys, ``__ws``, partial columns) into the open and fired windows."""
        by = [*self.keys, "__ws"]
        if partial is not None:
            for (ws,), part in partial.partition_by("__ws", as_dict=True).items():
                bucket = self.pending.setdefault(int(ws), [])
                bucket.append(part)
                self.dirty.add(int(ws))
                if len(bucket) >= _COMPACT_AT:
                    self.pending[int(ws)] = self._compact(bucket, by)
        if update is not None:
            out: list[pl.DataFrame] = []
            for (ws,), part in update.partition_by("__ws", as_dict=True).items():
                ws = int(ws)
                merged = (
                    self._merge([self.fired[ws], part], by)
                    if ws in self.fired
                    else self._merge([part], by)
                )
                self.fired[ws] = merged
                touched = part.select(self.keys).unique()
                out.append(self._result(merged.join(touched, on=self.keys, how="semi")))
            self._emit_results(out, "update")

    def _result(self, merged: pl.DataFrame) -> pl.DataFrame:
        res = self._finalize(merged, ["__ws"])
        return res.with_columns(
            window_start=pl.col("__ws").cast(TIME),
            window_end=(pl.col("__ws") + self.size).cast(TIME),
        ).select(
            *self.keys,
            "window_start",
            "window_end",
            pl.exclude([*self.keys, "__ws", "window_start", "window_end"]),
        )

    def _emit_results(self, frames: list[pl.DataFrame], result: str) -> None:
        frames = [f for f in frames if f.height]
        if frames:
            self.ctx.emit(self._mark(concat(frames), result))

    def _ends_between(self, before: int, wm: int) -> bool:
        """Whether some window end (``offset + size + k * hop``) lies in ``(before, wm]``."""
        base = self.offset + self.size
        return (wm - base) // self.hop > (before - base) // self.hop

    def _advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        before, self.wm = self.wm, wm
        if not self._ends_between(before, wm):
            # No window ends in (before, wm]: nothing fires and no pane expires (the common
            # case of a watermark that moved within a hop). Updates kept for allowed lateness
            # are released once the watermark passes their end plus the lateness.
            if self.fired:
                for ws in [w for w in self.fired if w + self.size + self.lateness <= wm]:
                    del self.fired[ws]
            return
        by = [*self.keys, "__ws"]
        ready = {ws for ws in self.pending if ws + self.size <= wm}
        for pane in self.panes:
            ready.update(ws for ws in self._windows_of(pane) if before < ws + self.size <= wm)
        ready.update(ws for ws in self.acc if ws + self.size <= wm)
        out: list[pl.DataFrame] = []
        step = math.gcd(self.size, self.hop)
        for ws in sorted(ready):
            frames = self.pending.pop(ws, [])
            # The window's panes are merged by key first and get their window column once:
            # one merge per firing, however many partials the panes hold.
            parts = [
                p for pane in range(ws, ws + self.size, step) for p in self.panes.get(pane, ())
            ]
            self.dirty.discard(ws)
            acc = self.acc.pop(ws, None)
            if acc is not None and not parts and not frames:
                assert self.op.aggs is not None
                keys, values = acc.finals(self.op.aggs, self.op.select)
                out.append(self._window_columns(ws, keys, values))
                continue
            if acc is not None:
                parts.append(acc.frame())
            if self.op.aggs is not None and not self.lateness:
                out.append(self._fire(ws, parts, frames))
                continue
            if parts:
                pane_rows = self._merge(parts, self.keys, force=len(parts) > 1)
                frames.append(self._in_window(pane_rows, ws))
            merged = self._merge(frames, by, force=len(frames) > 1)
            out.append(self._result(merged))
            if self.lateness and ws + self.size + self.lateness > wm:
                self.fired[ws] = merged
        self._emit_results(out, "final")
        for ws in [w for w in self.fired if w + self.size + self.lateness <= wm]:
            del self.fired[ws]
        for pane in [p for p in self.panes if max(self._windows_of(p)) + self.size <= wm]:
            del self.panes[pane]

    def _fire(self, ws: int, parts: list[pl.DataFrame], frames: list[pl.DataFrame]) -> pl.DataFrame:
        """The result of aggregation window ``ws``: its pane partials (``parts``, keys and
        partial columns) and window partials (``frames``, with ``__ws``) merged by key,
        finalized, with ``max_per_window`` only the rows carrying the largest value, and the
        window columns (a window whose result is final: no allowed lateness).

        Two eager Polars calls (the merge and the finals); the selection and the window
        columns are NumPy and column moves. One lazy query of all of it cost twice as much for
        a few thousand keys (about 0.5 ms against 0.25 ms for q5's windows).
        """
        rows = [*parts, *(without(f, "__ws") for f in frames)]
        merged = concat(rows)
        if len(rows) > 1:  # one frame holds one row per key already
            merged = merged.group_by(self.keys).agg(self.merges)
        res = merged.select(*self.keys, *self.finals)
        if self.op.select is not None and res.height:
            res = _largest(res, self.op.select)
        n = len(self.keys)
        cols = res.get_columns()
        return self._window_columns(ws, cols[:n], cols[n:])

    def _window_columns(
        self, ws: int, keys: list[pl.Series], values: list[pl.Series]
    ) -> pl.DataFrame:
        """Result rows of window ``ws``: the keys, ``window_start``, ``window_end``, values."""
        h = len(keys[0]) if keys else 0
        start = series_of("window_start", np.full(h, ws, dtype=np.int64)).cast(TIME)
        end = series_of("window_end", np.full(h, ws + self.size, dtype=np.int64)).cast(TIME)
        return frame_of([*keys, start, end, *values])

    def _early(self) -> None:
        by = [*self.keys, "__ws"]
        out = []
        for ws in sorted(self.dirty):
            if ws in self.pending:
                merged = self._merge(self.pending[ws], by)
                self.pending[ws] = [merged]
                out.append(self._result(merged))
        self.dirty.clear()
        self._emit_results(out, "early")

    def snapshot(self) -> dict[str, Any]:
        by = [*self.keys, "__ws"]
        self._fold_panes()  # the snapshot holds window partials only, as without panes
        for ws, frames in self.pending.items():
            if len(frames) > 1:
                self.pending[ws] = [self._merge(frames, by)]
        pending = [f[0] for f in self.pending.values() if f and f[0].height]
        fired = [f for f in self.fired.values() if f.height]
        return {
            "version": 2,
            "kind": "aligned",
            "wm": self.wm,
            "since_early": self.since_early,
            "dirty": sorted(self.dirty),
            "pending": _ipc(concat(pending)) if pending else None,
            "fired": _ipc(concat(fired)) if fired else None,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        _check(self.node.step_id, snap, "aligned")
        self.wm = int(snap["wm"])
        self.since_early = int(snap.get("since_early", 0))
        self.dirty = {int(w) for w in snap.get("dirty", [])}
        self.pending, self.fired = {}, {}
        pending, fired = _frame(snap.get("pending")), _frame(snap.get("fired"))
        if pending is not None:
            for (ws,), part in pending.partition_by("__ws", as_dict=True).items():
                self.pending[int(ws)] = [part]
        if fired is not None:
            for (ws,), part in fired.partition_by("__ws", as_dict=True).items():
                self.fired[int(ws)] = part
        # Windows an on-disk (spilling) operator had written to files: read them in.
        share = snap.get("share")
        for e in snap.get("spilled") or []:
            frame = pl.read_ipc(e["file"])
            if share is not None and share[1] > 1 and frame.height:
                k = self.keys
                h = pl.col(k[0]).hash(seed=7) if len(k) == 1 else pl.struct(k).hash(seed=7)
                frame = frame.filter((h % share[1]) == share[0])
            self.pending.setdefault(int(e["ws"]), []).append(frame)


# -- the combiner before the exchange ----------------------------------------------------------------
class WindowCombiner(Operator):
    """Pre-aggregates on-time records per key and pane before a window's exchange.

    A pane is ``gcd(size, hop)`` long and aligned like the windows, so all its records belong
    to the same windows and its partial can be merged into each of them. A record is on time
    when the earliest window containing it ends after the watermark seen here. That watermark
    bounds the one the window has when these records reach it (the window takes the minimum
    over the workers, and this worker's later watermarks follow its records), so on-time
    records are on time there too, and their partials can be merged without a per-record
    lateness check. Other records go on unchanged, and the window sorts them into results,
    updates and ``late``.

    The bound fails once this input has been idle: the other workers' watermarks may then
    have moved on without it, and records it sends later may be late at the window, where
    they must reach ``late`` one by one. After its first idle watermark the combiner
    therefore passes every record through unchanged for the rest of the run.
    """

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        op: WindowOp = node.spec.window
        spec = op.spec
        assert isinstance(spec, Tumbling | Sliding)
        self.keys = list(op.keys)
        self.size = _us(spec.size)
        self.hop = _us(spec.hop) if isinstance(spec, Sliding) else self.size
        self.offset = _us(spec.offset)
        self.pane = math.gcd(self.size, self.hop)
        assert op.time_column is not None
        self.time_col = op.time_column
        self.wm = -(2**63)
        self.partials = partial_exprs(op.aggs) if op.aggs is not None else None
        self.max_by = op.fn[1] if op.fn is not None and op.fn[0] == "max_by" else None
        self.idle_seen = False
        #: Small batches' partials in NumPy (the aggregations it computes exactly).
        self.small = (
            SmallPartials(self.keys, op.aggs, self.partials)
            if op.aggs is not None and self.partials is not None
            else None
        )

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if self.idle_seen:
            self.ctx.emit(batch)
            return
        # NumPy on the physical times: a handful of microseconds per batch, where the same
        # arithmetic as Polars Series operations costs a planned query each.
        t = epoch_us(batch.get_column(self.time_col))
        pane = ((t - self.offset) // self.pane) * self.pane + self.offset
        # The earliest window holding the pane ends at the first aligned end after the pane.
        first_end = ((pane - self.offset - self.size) // self.hop + 1) * self.hop
        closing = first_end + (self.offset + self.size) <= self.wm
        if closing.any():
            self.ctx.emit(filter_mask(batch, closing))
            batch, pane = filter_mask(batch, ~closing), pane[~closing]
            if batch.height == 0:
                return
        if self.small is not None and batch.height <= SMALL_AGG_ROWS:
            part = self.small.partials(batch, pane)
            if part is not None:
                self.ctx.emit(part, "partial")
                return
        rows = set_column(batch, pl.Series("__pane", pane))
        by = [*self.keys, "__pane"]
        if self.partials is not None:
            self.ctx.emit(rows.group_by(by).agg(self.partials), "partial")
        else:
            col = pl.col(str(self.max_by))
            self.ctx.emit(rows.filter(col == col.max().over(by)), "partial")

    def on_watermark(self, wm: int, idle: bool) -> None:
        if idle and not self.idle_seen and wm < WM_MAX:
            self.idle_seen = True
            log.info(
                "step '%s': input idle; records pass to the window without pre-aggregation "
                "from now on",
                self.node.step_id,
            )
        self.wm = max(self.wm, wm)
        self.ctx.watermark(wm, idle)

    def snapshot(self) -> dict[str, Any]:
        return {"version": 2, "kind": "combine", "wm": self.wm, "idle_seen": self.idle_seen}

    def restore(self, snap: dict[str, Any]) -> None:
        _check(self.node.step_id, snap, "combine")
        self.wm = int(snap["wm"])
        self.idle_seen = bool(snap.get("idle_seen", False))


def _largest(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """The rows of ``frame`` carrying the largest ``column`` (all of them on ties; nulls never
    win). Integers without nulls are compared in NumPy; other types by Polars."""
    col = frame.get_column(column)
    if col.dtype.is_integer() and not col.null_count():
        values = col.to_numpy()
        return frame[np.flatnonzero(values == values.max())]
    top = pl.col(column)
    return frame.filter(top == top.max())


# -- the selection across workers after max_per_window ---------------------------------------------
class WindowSelector(Operator):
    """Merges the per-window selections of ``agg(..., max_per_window=column)`` from all workers.

    Each worker's window keeps, when it fires, the results carrying the largest value among
    its own keys, and emits them before its watermark passes the window's end. This step gets
    a window's rows from every worker (exchanged by window start), holds them until the
    watermark reaches the window's end, then keeps the rows carrying the largest value. With
    one worker, the window's own selection is final: rows pass on at once.
    """

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.column = str(node.spec.column)
        self.wm = -(2**63)
        #: Candidate rows per window end (epoch microseconds).
        self.pending: dict[int, list[pl.DataFrame]] = {}

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if self.ctx.worker_count == 1 and not self.pending:
            self.ctx.emit(batch)
            return
        self._hold(batch)

    def _hold(self, rows: pl.DataFrame) -> None:
        """File candidate rows by their window's end."""
        t = epoch_us(rows.get_column("window_end"))
        ends = np.unique(t)
        for end in ends.tolist():
            part = rows if ends.size == 1 else filter_mask(rows, t == end)
            self.pending.setdefault(int(end), []).append(part)

    def on_watermark(self, wm: int, idle: bool) -> None:
        self.wm = max(self.wm, wm)
        due = sorted(end for end in self.pending if end <= self.wm)
        if due:
            out = [_largest(concat(self.pending.pop(end)), self.column) for end in due]
            self.ctx.emit(concat(out))
        self.ctx.watermark(wm, idle)

    def snapshot(self) -> dict[str, Any]:
        rows = [f for frames in self.pending.values() for f in frames if f.height]
        return {
            "version": 2,
            "kind": "select",
            "wm": self.wm,
            "pending": _ipc(concat(rows)) if rows else None,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        _check(self.node.step_id, snap, "select")
        self.wm = int(snap["wm"])
        self.pending = {}
        rows = _frame(snap.get("pending"))
        if rows is not None and rows.height:
            self._hold(rows)


# -- sessions -------------------------------------------------------------------------------------
class SessionWindowOperator(_WindowBase):
    """Per-key sessions merged vectorized: sort by key and start, cut where a gap opens."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        spec = self.op.spec
        assert isinstance(spec, Session)
        self.gap = _us(spec.gap)
        self.open: pl.DataFrame | None = None  # keys, __start, __end, __fired, __new, partials
        self.dirty = False

    def _merge_sessions(self, frame: pl.DataFrame) -> pl.DataFrame:
        frame = frame.sort([*self.keys, "__start"])
        key_change = pl.any_horizontal(
            [pl.col(k).ne_missing(pl.col(k).shift(1)) for k in self.keys]
        ).fill_null(True)
        # Within a key's run (sorted by start), a session continues while the next start is
        # before the largest end so far.
        frame = frame.with_columns(__run=key_change.cum_sum())
        frame = frame.with_columns(__pend=pl.col("__end").cum_max().shift(1).over("__run"))
        cut = key_change | (pl.col("__start") >= pl.col("__pend")).fill_null(True)
        frame = frame.with_columns(__sid=cut.cum_sum())
        aggs: list[pl.Expr] = [
            pl.col("__start").min(),
            pl.col("__end").max(),
            pl.col("__fired").any(),
            pl.col("__new").any(),
            pl.col("__emitted").any(),
        ]
        if self.op.aggs is not None:
            aggs += self.merges
        else:
            aggs.append(pl.col("__records").list.explode(keep_nulls=False, empty_as_null=False))
        return frame.group_by([*self.keys, "__sid"], maintain_order=True).agg(aggs).drop("__sid")

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        rows = batch.with_columns(self._times(batch))
        wm, late = self.wm, self.lateness
        by = [*self.keys, "__t"]
        if self.op.aggs is not None:
            mini = rows.group_by(by).agg(self.partials)
        else:
            mini = rows.group_by(by, maintain_order=True).agg(
                __records=pl.struct(pl.exclude("__t"))
            )
        mini = mini.rename({"__t": "__start"}).with_columns(
            __end=pl.col("__start") + self.gap,
            __fired=pl.lit(False),
            __new=pl.lit(True),
            __emitted=pl.lit(False),
        )
        # Records whose own session is past the lateness bound survive only if they fall into a
        # session that is still kept (open, or fired within the allowed lateness).
        too_late = (pl.col("__end") + late) <= wm
        cand = mini.filter(too_late)
        if cand.height:
            keep = self._overlapping(cand)
            lost_keys = cand.join(keep, on=[*self.keys, "__start"], how="anti")
            if lost_keys.height:
                lost = rows.join(
                    lost_keys.select(*self.keys, pl.col("__start").alias("__t")), on=by, how="semi"
                )
                self._late(
                    lost,
                    "its session closed: the watermark passed its end plus the allowed lateness",
                )
            mini = pl.concat([mini.filter(~too_late), keep], how="diagonal_relaxed")
        if mini.height == 0:
            return
        if self.open is not None and self.open.height:
            touched = mini.select(self.keys).unique()
            mine = self.open.join(touched, on=self.keys, how="semi")
            rest = self.open.join(touched, on=self.keys, how="anti")
            merged = self._merge_sessions(pl.concat([mine, mini], how="diagonal_relaxed"))
            self.open = pl.concat([rest, merged], how="diagonal_relaxed")
        else:
            self.open = self._merge_sessions(mini)
        # Fired sessions that took new records within the lateness emit an update now.
        upd = self.open.filter(pl.col("__fired") & pl.col("__new"))
        if upd.height:
            self._emit(upd, "update")
        self.open = self.open.with_columns(__new=pl.lit(False))
        self._fire(self.wm)  # sessions that ended before the current watermark fire now
        self.dirty = True
        self._count_for_early(batch.height)

    def _overlapping(self, cand: pl.DataFrame) -> pl.DataFrame:
        """The candidate mini-sessions that overlap a kept session of their key."""
        if self.open is None or self.open.height == 0:
            return cand.clear()
        sessions = self.open.select(
            *self.keys, pl.col("__start").alias("__os"), pl.col("__end").alias("__oe")
        )
        hits = cand.join(sessions, on=self.keys, how="inner").filter(
            (pl.col("__start") < pl.col("__oe")) & (pl.col("__end") > pl.col("__os"))
        )
        return cand.join(
            hits.select(*self.keys, "__start").unique(), on=[*self.keys, "__start"], how="semi"
        )

    def _emit(self, sessions: pl.DataFrame, result: str) -> None:
        if self.op.aggs is not None:
            res = sessions.select(
                *self.keys,
                pl.col("__start").cast(TIME).alias("window_start"),
                pl.col("__end").cast(TIME).alias("window_end"),
                *self.finals,
            )
        else:
            flat = (
                sessions.select(*self.keys, "__start", "__end", "__records")
                .explode("__records")
                .unnest("__records")
            )
            res = self._finalize(flat, ["__start", "__end"])
            res = res.with_columns(
                window_start=pl.col("__start").cast(TIME), window_end=pl.col("__end").cast(TIME)
            ).drop("__start", "__end")
            res = res.select(
                *self.keys,
                "window_start",
                "window_end",
                pl.exclude([*self.keys, "window_start", "window_end"]),
            )
        self.ctx.emit(self._mark(res, result))

    def _advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        self.wm = wm
        self._fire(wm)

    def _fire(self, wm: int) -> None:
        if self.open is None or self.open.height == 0:
            return
        due = (pl.col("__end") <= wm) & ~pl.col("__fired")
        ready = self.open.filter(due)
        if ready.height:
            self._emit(ready, "final")
        self.open = self.open.with_columns(__fired=pl.col("__fired") | due).filter(
            (pl.col("__end") + self.lateness) > wm
        )

    def _early(self) -> None:
        if self.dirty and self.open is not None:
            live = self.open.filter(~pl.col("__fired"))
            if live.height:
                self._emit(live, "early")
        self.dirty = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 2,
            "kind": "session",
            "wm": self.wm,
            "since_early": self.since_early,
            "dirty": self.dirty,
            "open": _ipc(self.open),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        _check(self.node.step_id, snap, "session")
        self.wm = int(snap["wm"])
        self.since_early = int(snap.get("since_early", 0))
        self.dirty = bool(snap.get("dirty", False))
        self.open = _frame(snap.get("open"))


# -- count windows ----------------------------------------------------------------------------------
class CountWindowOperator(_WindowBase):
    """Every n records of a key (in arrival order) form a window, emitted when full."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        spec = self.op.spec
        assert isinstance(spec, Count)
        self.n = spec.n
        self.open: pl.DataFrame | None = None  # keys, __w, __c, partials (or __records)
        self.counts: pl.DataFrame | None = None  # keys, __seen

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        rows = batch.with_row_index("__rid").sort([*self.keys, "__rid"])
        if self.counts is not None:
            rows = rows.join(self.counts, on=self.keys, how="left", maintain_order="left")
        else:
            rows = rows.with_columns(__seen=pl.lit(None, dtype=pl.Int64))
        idx = pl.int_range(pl.len(), dtype=pl.Int64)
        starts = pl.any_horizontal(
            [pl.col(k).ne_missing(pl.col(k).shift(1)) for k in self.keys]
        ).fill_null(True)
        rows = rows.with_columns(__pos=idx - pl.when(starts).then(idx).forward_fill())
        rows = rows.with_columns(__w=(pl.col("__seen").fill_null(0) + pl.col("__pos")) // self.n)
        seen = rows.group_by(self.keys).agg(__seen=pl.col("__seen").fill_null(0).first() + pl.len())
        self.counts = (
            seen
            if self.counts is None
            else pl.concat(
                [self.counts.join(seen, on=self.keys, how="anti"), seen], how="vertical_relaxed"
            )
        )
        by = [*self.keys, "__w"]
        body = rows.drop("__rid", "__seen", "__pos")
        if self.op.aggs is not None:
            part = body.group_by(by).agg(pl.len().alias("__c"), *self.partials)
            merges: list[pl.Expr] = [pl.col("__c").sum(), *self.merges]
        else:
            part = body.group_by(by, maintain_order=True).agg(
                __c=pl.len(), __records=pl.struct(pl.exclude(by))
            )
            merges = [
                pl.col("__c").sum(),
                pl.col("__records").list.explode(keep_nulls=False, empty_as_null=False),
            ]
        allw = part if self.open is None else pl.concat([self.open, part], how="vertical_relaxed")
        allw = allw.group_by(by, maintain_order=True).agg(merges)
        full = allw.filter(pl.col("__c") >= self.n)
        self.open = allw.filter(pl.col("__c") < self.n)
        if full.height:
            self._emit(full, "final")

    def _emit(self, windows: pl.DataFrame, result: str) -> None:
        if self.op.aggs is not None:
            res = windows.select(*self.keys, pl.col("__w").alias("window"), *self.finals)
        else:
            flat = (
                windows.select(*self.keys, "__w", "__records")
                .explode("__records")
                .unnest("__records")
            )
            res = self._finalize(flat, ["__w"]).rename({"__w": "window"})
        self.ctx.emit(self._mark(res, result))

    def _advance(self, wm: int) -> None:
        if wm == WM_MAX and self.open is not None and self.open.height:
            self._emit(self.open, "final")
            self.open = self.open.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 2,
            "kind": "count",
            "wm": self.wm,
            "open": _ipc(self.open),
            "counts": _ipc(self.counts),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        _check(self.node.step_id, snap, "count")
        self.wm = int(snap["wm"])
        self.open = _frame(snap.get("open"))
        self.counts = _frame(snap.get("counts"))


def build_window_operator(node: Node, ctx: OpContext) -> Operator:
    """The runtime operator for a window step."""
    if isinstance(node.spec, WindowCombineOp):
        return WindowCombiner(node, ctx)
    if isinstance(node.spec, WindowSelectOp):
        return WindowSelector(node, ctx)
    spec = node.spec.spec
    if isinstance(node.spec.state, DiskState):
        from tideflow.runtime._diskwindow import SpillingWindowOperator

        return SpillingWindowOperator(node, ctx, node.spec.state)
    if isinstance(spec, Session):
        return SessionWindowOperator(node, ctx)
    if isinstance(spec, Count):
        return CountWindowOperator(node, ctx)
    return AlignedWindowOperator(node, ctx)
