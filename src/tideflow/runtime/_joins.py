"""Join operators: windowed and interval stream-stream joins, table joins and cached lookups.

Every join is vectorized: records are buffered as Polars frames (per window start for windowed
joins, per side for interval joins) and matched with Polars joins; nothing runs per record in
Python. Input 0 is the left (stream) side, input 1 the right (table) side; right key columns
are renamed to the left names on arrival.
"""

from __future__ import annotations

import io
import logging
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from tideflow._errors import JobError, StateError
from tideflow.api._graph import Node, fn_location
from tideflow.api._joins import SUFFIX, IntervalJoinOp, LookupOp, TableJoinOp, WindowJoinOp
from tideflow.runtime._frames import concat, frame_chunk, read_parts
from tideflow.runtime._keyindex import ChunkLog, KeyedRows
from tideflow.runtime._operators import OpContext, Operator
from tideflow.state._store import SnapshotChunk

__all__ = [
    "IntervalJoinOperator",
    "LookupOperator",
    "TableJoinOperator",
    "WindowJoinOperator",
    "build_join_operator",
]

log = logging.getLogger("tideflow.runtime")

#: Version of the join snapshots. 1 was a summary without state, written before joins were
#: checkpointed (restoring it starts the join empty, with a warning); 2 held each table as
#: Arrow IPC bytes; 3 holds each as a list of chunks (:class:`SnapshotChunk`, Arrow IPC
#: files shared by the checkpoints that hold them), a regular join's sides incrementally.
#: Versions 2 and 3 restore; a table field may hold bytes in both (a rescaled snapshot).
STATE_VERSION = 3
_RESTORES = (2, 3)

WM_MIN = -(2**63)
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


Part = SnapshotChunk | bytes


def _parts(value: Any) -> list[Part]:
    """The parts of a table field: a list (version 3), or one IPC bytes value or None (2)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value]


def _table(value: Any) -> tuple[pl.DataFrame | None, list[Part], int]:
    """A table field's rows (None without any), the parts read, and their rows in all."""
    frames, parts = read_parts(_parts(value))
    frames = [f for f in frames if f.height]
    rows = sum(f.height for f in frames)
    return (concat(frames) if frames else None), parts, rows


class _Held:
    """Table fields snapshotted as one chunk each, made again only when their frames change.

    A field's chunk is kept with weak references to the frame objects it was made of. While
    the field still consists of those very objects (the joins never change a buffered frame
    in place: they replace it), the next snapshot refers to the same chunk and a checkpoint
    writes nothing for it; a field that changed is written as a new chunk (streamed to its
    file by Polars). The references are weak: frames the operator dropped (a window that
    fired) are not kept alive until the next snapshot.

    Examples
    --------
    >>> held, rows = _Held(), pl.DataFrame({"k": [1]})
    >>> first = held.chunks("left", [rows], concat)
    >>> held.chunks("left", [rows], concat) == first
    True
    >>> held.chunks("left", [rows.clone()], concat) == first
    False
    """

    def __init__(self) -> None:
        self.fields: dict[str, tuple[list[weakref.ref[pl.DataFrame]], SnapshotChunk]] = {}

    def chunks(
        self,
        name: str,
        frames: list[pl.DataFrame],
        make: Callable[[list[pl.DataFrame]], pl.DataFrame],
    ) -> list[SnapshotChunk]:
        """The chunks of field ``name`` holding ``make(frames)`` (no chunk for no rows)."""
        frames = [f for f in frames if f.height]
        if not frames:
            self.fields.pop(name, None)
            return []
        held = self.fields.get(name)
        if held is not None and len(held[0]) == len(frames):
            refs, chunk = held
            if all(r() is f for r, f in zip(refs, frames, strict=True)):
                return [chunk]
        chunk = frame_chunk(make(frames))
        self.fields[name] = ([weakref.ref(f) for f in frames], chunk)
        return [chunk]

    def keep(self, name: str, frames: list[pl.DataFrame], parts: list[Part]) -> None:
        """After a restore of ``frames`` from ``parts``: refer to its chunk while unchanged."""
        self.fields.pop(name, None)
        if len(parts) == 1 and isinstance(parts[0], SnapshotChunk) and frames:
            self.fields[name] = ([weakref.ref(f) for f in frames], parts[0])


def _schema_ipc(schema: dict[str, pl.DataType] | None) -> bytes | None:
    return None if schema is None else _ipc(pl.DataFrame(schema=schema))


def _schema(data: bytes | None) -> dict[str, pl.DataType] | None:
    frame = _frame(data)
    return None if frame is None else dict(frame.schema)


def _with_starts(starts: list[int]) -> Callable[[list[pl.DataFrame]], pl.DataFrame]:
    """What makes the table of frames, each with its window start ``__ws``, one after the other."""

    def make(frames: list[pl.DataFrame]) -> pl.DataFrame:
        tagged = [
            f.with_columns(__ws=pl.lit(ws, pl.Int64)) for f, ws in zip(frames, starts, strict=True)
        ]
        return pl.concat(tagged, how="diagonal_relaxed")

    return make


def _check(step: str, snap: dict[str, Any], kind: str) -> bool:
    """True when ``snap`` holds state to restore; False for a version 1 summary."""
    version = snap.get("version")
    if version == 1:
        log.warning(
            "step '%s': the checkpoint holds no join state (written by an older tideflow); "
            "the join starts empty",
            step,
        )
        return False
    if version not in _RESTORES or snap.get("kind") != kind:
        msg = (
            f"step '{step}': join state {snap.get('kind')!r} version {version!r} cannot be "
            f"restored into a {kind} (expected version {STATE_VERSION}); was the join changed "
            "since the checkpoint?"
        )
        raise StateError(msg)
    return True


class _TwoSided(Operator):
    """What the stream-stream joins share: key renaming, schemas, the result layout, late rows."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        op: WindowJoinOp | IntervalJoinOp = node.spec
        self.keys = list(op.keys)
        self.rename = {r: k for r, k in zip(op.right_keys, op.keys, strict=True) if r != k}
        self.time_cols = (op.left_time, self.rename.get(op.right_time, op.right_time))
        right = op.right_schema
        if right is not None:
            right = {self.rename.get(c, c): t for c, t in right.items()}
        self.schemas: list[dict[str, pl.DataType] | None] = [op.left_schema, right]
        self.wm = WM_MIN
        self.held = _Held()

    def _arrive(self, index: int, batch: pl.DataFrame) -> pl.DataFrame:
        if index == 1 and self.rename:
            batch = batch.rename(self.rename)
        left = self.schemas[0]
        if index == 1 and left is not None:
            casts = {k: left[k] for k in self.keys if k in left and batch.schema[k] != left[k]}
            if casts:
                batch = batch.cast(casts)  # type: ignore[arg-type]
        if self.schemas[index] is None:
            self.schemas[index] = dict(batch.schema)
        return batch

    def _empty(self, index: int) -> pl.DataFrame:
        schema = self.schemas[index]
        if schema is None:
            other = self.schemas[1 - index] or {}
            schema = {k: other.get(k, pl.Null()) for k in self.keys}
        return pl.DataFrame(schema=schema)

    def _layout(self, joined: pl.DataFrame, extra: list[str]) -> pl.DataFrame:
        rest = [c for c in joined.columns if c not in self.keys and not c.startswith("__")]
        rest = [c for c in rest if c not in extra]
        return joined.select(*self.keys, *extra, *rest)

    def _full(self, left: pl.DataFrame, right: pl.DataFrame, on: list[str]) -> pl.DataFrame:
        """Full outer join of both sides with ``__l``/``__r`` flags telling which side matched."""
        left = left.with_columns(__l=pl.lit(True))
        right = right.with_columns(__r=pl.lit(True))
        return left.join(
            right, on=on, how="full", coalesce=True, suffix=SUFFIX, maintain_order="left_right"
        )

    def _late(self, rows: pl.DataFrame, index: int, reason: str) -> None:
        if rows.height == 0:
            return
        rows = rows.drop([c for c in rows.columns if c.startswith("__")])
        other = self._empty(1 - index)
        pair = (rows, other) if index == 0 else (other, rows)
        joined = self._full(*pair, self.keys)
        out = self._layout(joined, []).with_columns(
            late_side=pl.lit("left" if index == 0 else "right"), late_reason=pl.lit(reason)
        )
        self.ctx.emit(out, "late")

    def _times(self, batch: pl.DataFrame, index: int) -> pl.Series:
        col = self.time_cols[index]
        if col not in batch.columns:
            msg = f"step '{self.node.step_id}': no event-time column {col!r} in {batch.columns}"
            raise JobError(msg, step_id=self.node.step_id)
        return batch.get_column(col).dt.epoch("us").alias("__t")

    def on_watermark(self, wm: int, idle: bool) -> None:
        self._advance(wm)
        self.ctx.watermark(wm, idle)

    def on_end(self) -> None:
        self._advance(WM_MAX)

    def _advance(self, wm: int) -> None:
        raise NotImplementedError

    def _snap_common(self, kind: str) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kind": kind,
            "wm": self.wm,
            "schemas": [_schema_ipc(s) for s in self.schemas],
        }

    def _restore_common(self, snap: dict[str, Any]) -> None:
        self.wm = int(snap["wm"])
        for i, data in enumerate(snap.get("schemas", [None, None])):
            got = _schema(data)
            if got is not None:
                self.schemas[i] = got


class WindowJoinOperator(_TwoSided):
    """Buffers both sides per window start; joins a window when the watermark passes its end."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: WindowJoinOp = node.spec
        self.size, self.hop, self.offset = self.op.size_us, self.op.hop_us, self.op.offset_us
        self.copies = -(-self.size // self.hop)
        self.buckets: dict[int, tuple[list[pl.DataFrame], list[pl.DataFrame]]] = {}

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        batch = self._arrive(index, batch).with_row_index("__rid")
        base = batch.with_columns(self._times(batch, index))
        start = ((pl.col("__t") - self.offset) // self.hop) * self.hop + self.offset
        if self.copies == 1:
            rows = base.with_columns(__ws=start)
        else:
            parts = [base.with_columns(__ws=start - j * self.hop) for j in range(self.copies)]
            rows = pl.concat(parts).filter(pl.col("__t") < pl.col("__ws") + self.size)
        live = rows.filter(pl.col("__ws") + self.size > self.wm)
        if live.height < rows.height:
            lost = batch.join(live.select("__rid").unique(), on="__rid", how="anti")
            self._late(lost, index, "its windows closed: the watermark passed their end")
        if live.height == 0:
            return
        live = live.drop("__rid", "__t")
        if index == 1 and self.op.how in ("semi", "anti"):
            # Only whether a key has a right record in the window matters: keep each key once.
            live = live.select(*self.keys, "__ws").unique()
        for (ws,), part in live.partition_by("__ws", as_dict=True, include_key=False).items():
            bucket = self.buckets.setdefault(int(ws), ([], []))[index]
            bucket.append(part)
            if len(bucket) >= _COMPACT_AT:
                bucket[:] = [concat(bucket)]

    def _advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        self.wm = wm
        ready = sorted(ws for ws in self.buckets if ws + self.size <= wm)
        out: list[pl.DataFrame] = []
        how = self.op.how
        for ws in ready:
            lefts, rights = self.buckets.pop(ws)
            if how in ("inner", "semi") and not (lefts and rights):
                continue
            left = concat(lefts) if lefts else self._empty(0)
            if how in ("semi", "anti"):
                if left.height == 0:
                    continue
                if rights:
                    seen = concat(rights).select(self.keys)
                    left = left.join(seen, on=self.keys, how=how, maintain_order="left")
                if left.height:
                    out.append(self._windowed(left, ws))
                continue
            right = concat(rights) if rights else self._empty(1)
            joined = self._full(left, right, self.keys)
            if how == "inner":
                joined = joined.filter(pl.col("__l").is_not_null() & pl.col("__r").is_not_null())
            elif how == "left":
                joined = joined.filter(pl.col("__l").is_not_null())
            elif how == "right":
                joined = joined.filter(pl.col("__r").is_not_null())
            if joined.height == 0:
                continue
            out.append(self._windowed(joined, ws))
        if out:
            self.ctx.emit(pl.concat(out, how="diagonal_relaxed"))

    def _windowed(self, rows: pl.DataFrame, ws: int) -> pl.DataFrame:
        rows = rows.with_columns(
            window_start=pl.lit(ws).cast(TIME), window_end=pl.lit(ws + self.size).cast(TIME)
        )
        return self._layout(rows, ["window_start", "window_end"])

    def snapshot(self) -> dict[str, Any]:
        """Both sides' buffered rows with their window start ``__ws``, the watermark.

        Each side is a list of one chunk (Arrow IPC, streamed to its file), the same chunk as
        the previous snapshot's while the side has not changed (a checkpoint then writes
        nothing for it).

        Examples
        --------
        >>> from datetime import timedelta
        >>> import tideflow as tf
        >>> from tideflow import windows
        >>> from tideflow.testing import TestingSource
        >>> flow = tf.Dataflow("doc_wj")
        >>> s = flow.source(TestingSource([{"k": "a", "t": 5}])).event_time("t", unit="s")
        >>> j = s.key_by("k").join_window(s.key_by("k"), windows.tumbling(timedelta(seconds=10)))
        >>> op = WindowJoinOperator(j.results.node, None)  # no context needed to buffer
        >>> op.on_batch(0, pl.DataFrame({"k": ["a"], "t": [5_000_000]}).with_columns(
        ...     pl.col("t").cast(pl.Datetime("us", "UTC"))))
        >>> again = WindowJoinOperator(j.results.node, None)
        >>> snap = op.snapshot()
        >>> again.restore(snap)
        >>> {ws: [sum(f.height for f in side) for side in b] for ws, b in again.buckets.items()}
        {0: [1, 0]}
        >>> op.snapshot()["left"] == snap["left"]  # unchanged: the same chunk
        True
        """
        out = self._snap_common("window_join")
        for index, name in ((0, "left"), (1, "right")):
            starts, frames = self._side(index)
            out[name] = self.held.chunks(name, frames, _with_starts(starts))
        return out

    def _side(self, index: int) -> tuple[list[int], list[pl.DataFrame]]:
        """The window starts and frames of side ``index``'s buffered rows."""
        owned = [(ws, f) for ws, sides in self.buckets.items() for f in sides[index] if f.height]
        return [ws for ws, _ in owned], [f for _, f in owned]

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (replaces the buffered state)."""
        self.buckets = {}
        self.held = _Held()
        if not _check(self.node.step_id, snap, "window_join"):
            return
        self._restore_common(snap)
        parts = []
        for index, name in ((0, "left"), (1, "right")):
            frame, got, _ = _table(snap.get(name))
            parts.append(got)
            if frame is None:
                continue
            for (ws,), part in frame.partition_by(
                "__ws", as_dict=True, include_key=False, maintain_order=True
            ).items():
                self.buckets.setdefault(int(ws), ([], []))[index].append(part)
        for index, name in ((0, "left"), (1, "right")):
            self.held.keep(name, self._side(index)[1], parts[index])


class IntervalJoinOperator(_TwoSided):
    """Left record at t meets right records of its key in [t+lower, end], once.

    ``end`` is ``t + upper``, the left record's own end column, or unbounded. Left rows carry
    ``__t`` and ``__end``, right rows ``__t`` (µs). With ``emit="close"`` pairs wait in
    ``pending`` until the watermark passes their left record's end.
    """

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: IntervalJoinOp = node.spec
        self.lower, self.upper = self.op.lower_us, self.op.upper_us
        self.at_close = self.op.emit == "close"
        where = self.op.left_where
        self.where = None if where is None else where.fill_null(False)
        self.bounded = not (
            self.lower is None and self.upper is None and self.op.upper_column is None
        )
        self.buffers: tuple[list[pl.DataFrame], list[pl.DataFrame]] = ([], [])
        self.pending: list[pl.DataFrame] = []
        # A regular join keeps every record: each side is a row store with a key index that
        # a batch of the other side probes (O(batch) work, not a join against the buffer).
        self.sides = (KeyedRows(self.keys), KeyedRows(self.keys))
        # Their snapshots: one chunk per checkpoint of each side's rows appended since.
        self.logs = (ChunkLog(), ChunkLog())
        self.oldest_left: int | None = None

    def buffered(self, index: int) -> int:
        """Rows buffered on side ``index`` (0: left, 1: right)."""
        if not self.bounded:
            return self.sides[index].height
        return sum(f.height for f in self.buffers[index])

    def _buffer(self, index: int) -> pl.DataFrame | None:
        frames = self.buffers[index]
        if not frames:
            return None
        if len(frames) > 1:
            frames[:] = [concat(frames)]
        return frames[0]

    def _end(self) -> pl.Expr:
        """The inclusive end (µs) of a left row's interval."""
        if self.op.upper_column is not None:
            return pl.col(self.op.upper_column).dt.epoch("us")
        if self.upper is None:
            return pl.lit(WM_MAX, pl.Int64)
        end: pl.Expr = pl.col("__t") + self.upper
        return end

    def _rows(self, index: int, batch: pl.DataFrame) -> pl.DataFrame | None:
        """An arrived batch with ``__t`` (and ``__end`` on the left), late rows sent to
        ``late``; None when nothing is left."""
        rows = batch.with_columns(self._times(batch, index))
        if index == 0:
            col = self.op.upper_column
            if col is not None and not isinstance(batch.schema.get(col), pl.Datetime):
                msg = (
                    f"step '{self.node.step_id}': upper={col!r} must be a UTC timestamp column "
                    f"of the left side, got {batch.schema.get(col, 'no such column')}"
                )
                raise JobError(msg, step_id=self.node.step_id)
            rows = rows.with_columns(self._end().alias("__end"))
        if self.bounded:  # a regular join (no bound on either side) has no late records
            late = rows.filter(pl.col("__t") < self.wm)
            if late.height:
                self._late(late, index, "its time is below the watermark")
                rows = rows.filter(pl.col("__t") >= self.wm)
                if rows.height == 0:
                    return None
        return rows

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        got = self._rows(index, self._arrive(index, batch))
        if got is None:
            return
        rows = got
        if not self.bounded:
            self._regular(index, rows)
            return
        other = self._buffer(1 - index)
        if other is not None and other.height:
            left, right = (rows, other) if index == 0 else (other, rows)
            if self.op.left_unique:
                # Right records of a key whose (only) left record is there need no buffer.
                keys = left.select(self.keys)
                if index == 0:
                    self.buffers[1][:] = [other.join(keys, on=self.keys, how="anti")]
                else:
                    rows = rows.join(keys, on=self.keys, how="anti")
            pairs = left.join(right, on=self.keys, how="inner", suffix=SUFFIX)
            tl, tr = pl.col("__t"), pl.col("__t" + SUFFIX)
            cond = tr <= pl.col("__end")
            if self.lower is not None:
                cond = cond & (tr >= tl + self.lower)
            pairs = pairs.filter(cond if self.where is None else cond & self.where)
            if pairs.height:
                if self.at_close:
                    self.pending.append(pairs.select(pl.exclude("__t" + SUFFIX)))
                else:
                    self.ctx.emit(self._layout(pairs, []))
        self.buffers[index].append(rows)

    def _regular(self, index: int, rows: pl.DataFrame) -> None:
        """A regular join: ``rows`` probe the other side's key index, then join their own."""
        other = self.sides[1 - index]
        narrow = None
        if self.where is not None:
            # Only left records meeting it make pairs: the other side's rows are gathered
            # whole for those only (first the columns that tell which, with the keys).
            read = self.where.meta.root_names() if index == 1 else []
            narrow = list(dict.fromkeys([*self.keys, *read]))
        probe, theirs, found = other.probe(rows, narrow)
        if probe.size:
            picked = probe
            if self.where is not None:
                ok = self._meets(rows)[probe] if index == 0 else self._meets(theirs)
                picked, theirs = probe[ok], other.take(found[ok])
            if picked.size:
                mine = rows.select(pl.all().gather(pl.Series(picked)))
                self._pairs(*((mine, theirs) if index == 0 else (theirs, mine)))
            if self.op.left_unique:
                # Right records of a key whose (only) left record is there need no buffer.
                if index == 0:
                    self.logs[1].remove(other, found)
                else:
                    keep = np.ones(rows.height, np.bool_)
                    keep[probe] = False
                    rows = rows.filter(pl.Series(keep))
        self.sides[index].append(rows)
        if index == 0 and rows.height:
            oldest = int(rows.get_column("__t").min())  # type: ignore[arg-type]
            self.oldest_left = oldest if self.oldest_left is None else min(self.oldest_left, oldest)

    def _meets(self, left: pl.DataFrame) -> npt.NDArray[np.bool_]:
        """Which ``left`` rows meet ``left_where`` (a constant condition: all or none)."""
        assert self.where is not None
        ok: npt.NDArray[np.bool_] = left.select(self.where).to_series().to_numpy()
        return ok if ok.shape[0] == left.height else np.full(left.height, bool(ok[0]))

    def _pairs(self, left: pl.DataFrame, right: pl.DataFrame) -> None:
        """Emit (or hold until close) matched rows side by side, as a Polars inner join would
        lay them out: left columns, then the right's non-key columns (``_right`` on clashes)."""
        cols = [c for c in right.columns if c not in self.keys]
        clash = {c: c + SUFFIX for c in cols if c in left.columns}
        pairs = pl.concat([left, right.select(cols).rename(clash)], how="horizontal")
        if self.at_close:
            self.pending.append(pairs.drop("__t" + SUFFIX))
        else:
            self.ctx.emit(self._layout(pairs, []))

    def on_watermark(self, wm: int, idle: bool) -> None:
        self._advance(wm)
        if wm in (WM_MIN, WM_MAX):
            out = wm
        elif self.upper is not None and self.op.upper_column is None and not self.at_close:
            # A pair found when its right record arrives has a left time >= wm - upper: hold
            # the output watermark back by upper so left times in results are never late.
            out = max(WM_MIN, wm - max(self.upper, 0))
        else:
            # Pairs still to come belong to buffered left records: hold the watermark at the
            # oldest of them.
            if not self.bounded:
                oldest = self.oldest_left
            else:
                left = self._buffer(0)
                first = left.get_column("__t").min() if left is not None and left.height else None
                oldest = None if first is None else int(first)  # type: ignore[arg-type]
            out = wm if oldest is None else min(wm, oldest)
        self.ctx.watermark(out, idle)

    def _advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        self.wm = wm
        # A left record waits for right times up to its end; a right record at r for left
        # times down to r - lower (future left records are not below the watermark).
        if self.upper is not None or self.op.upper_column is not None:
            self._prune(0, pl.col("__end") >= wm)
        if self.lower is not None:
            self._prune(1, pl.col("__t") - self.lower >= wm)
        if self.pending and (self.bounded or wm == WM_MAX):  # regular: all pairs at the end
            pending = concat(self.pending)
            # End of input (WM_MAX) closes every interval, unbounded ones too.
            done = (
                pending.get_column("__end") < wm
                if wm < WM_MAX
                else pl.repeat(True, pending.height, eager=True)
            )
            self.pending = [pending.filter(~done)] if not done.all() else []
            closed = pending.filter(done)
            if closed.height:
                self.ctx.emit(self._layout(closed, []))

    def _prune(self, index: int, keep: pl.Expr) -> None:
        """Keep the buffered rows of side ``index`` meeting ``keep`` (the frame stays the same
        object when all do: its snapshot chunk is then still good)."""
        rows = self._buffer(index)
        if rows is not None:
            kept = rows.filter(keep)
            if kept.height < rows.height:
                self.buffers[index][:] = [kept]

    def snapshot(self) -> dict[str, Any]:
        """Both sides' buffered rows with ``__t``/``__end``, held pairs, the watermark.

        Every table is a list of chunks (Arrow IPC, streamed to their files). A regular
        join's side is the chunks of the earlier snapshots and one of the rows appended
        since (right rows removed since, met by their unique left record, are told on
        restore: their key is on the left); once the chunks hold more than twice the live
        rows, the live rows replace them. A bounded join's side and the held pairs are one
        chunk each, the previous one while they have not changed.
        """
        out = self._snap_common("interval_join")
        for index, name in ((0, "left"), (1, "right")):
            if self.bounded:
                self._buffer(index)
                out[name] = self.held.chunks(name, self.buffers[index], concat)
            else:
                out[name] = self.logs[index].snapshot(self.sides[index])
        out["pending"] = self.held.chunks("pending", self.pending, concat)
        return out

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (replaces the buffered state)."""
        self.buffers = ([], [])
        self.pending = []
        for side in self.sides:
            side.restore(None)
        self.logs = (ChunkLog(), ChunkLog())
        self.held = _Held()
        self.oldest_left = None
        if not _check(self.node.step_id, snap, "interval_join"):
            return
        _check_best(self.node.step_id, snap, self.op)
        self._restore_common(snap)
        for index, name in ((0, "left"), (1, "right")):
            frame, parts, rows = _table(snap.get(name))
            if frame is None:
                continue
            if index == 0 and "__end" not in frame.columns:  # written before ``__end``
                frame = frame.with_columns(self._end().alias("__end"))
            if self.bounded:
                self.buffers[index].append(frame)
                self.held.keep(name, [frame], parts)
                continue
            if index == 1 and self.op.left_unique:
                # The chunks still hold right rows met by their unique left record since.
                probe, _, _ = self.sides[0].probe(frame, self.keys)
                if probe.size:
                    keep = np.ones(frame.height, np.bool_)
                    keep[probe] = False
                    frame = frame.filter(pl.Series(keep))
            self.sides[index].restore(frame)
            self.logs[index].restored(self.sides[index], parts, rows)
            if index == 0:
                self.oldest_left = int(frame.get_column("__t").min())  # type: ignore[arg-type]
        pending, parts, _ = _table(snap.get("pending"))
        if pending is not None:
            self.pending.append(pending)
            self.held.keep("pending", [pending], parts)


def _best_settings(op: IntervalJoinOp) -> dict[str, list[Any]] | None:
    best = op.best
    return None if best is None else {"by": list(best.by), "descending": list(best.descending)}


def _check_best(step: str, snap: dict[str, Any], op: IntervalJoinOp) -> None:
    """Refuse a snapshot taken with other ``best=`` settings (pairs vs best rows)."""
    want, got = _best_settings(op), snap.get("best")
    if got != want:
        msg = (
            f"step '{step}': the checkpoint's interval join was written with best={got!r}, this "
            f"join has best={want!r}; its state cannot be restored (resume with the same "
            "settings, or start without the checkpoint)"
        )
        raise StateError(msg)


class TableJoinOperator(Operator):
    """Enriches stream records with the latest table row of their key (input 1 is the table).

    A bounded table is loaded fully first: stream records (and the stream's watermark) wait
    until the table input ends. A changelog table is upserted as it comes; stream records join
    with the rows current when they arrive.
    """

    #: Only the stream side's watermark moves this step's output watermark.
    watermark_inputs = (0,)

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: TableJoinOp = node.spec
        self.keys = list(self.op.on)
        self.rename = {r: k for r, k in zip(self.op.table_on, self.op.on, strict=True) if r != k}
        schema = self.op.table_schema
        self.table: pl.DataFrame | None = pl.DataFrame(schema=schema) if schema else None
        self.pending: list[pl.DataFrame] = []
        self.table_ended = False
        self.held_wm: tuple[int, bool] | None = None
        self.held = _Held()

    @property
    def _waiting(self) -> bool:
        return self.op.bounded and not self.table_ended

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if index == 0:
            if self._waiting:
                self.pending.append(batch)
            else:
                self._emit(batch)
            return
        if self.rename:
            batch = batch.rename(self.rename)
        rows = batch.unique(subset=self.keys, keep="last", maintain_order=True)
        if self.table is None:
            self.table = rows
        else:
            kept = self.table.join(rows.select(self.keys), on=self.keys, how="anti")
            self.table = pl.concat([kept, rows], how="vertical_relaxed")

    def _emit(self, batch: pl.DataFrame) -> None:
        if self.table is None:
            if self.op.how == "left":
                self.ctx.emit(batch)
            return
        out = batch.join(
            self.table, on=self.keys, how=self.op.how, suffix=SUFFIX, maintain_order="left"
        )
        if out.height:
            self.ctx.emit(out)

    def on_input_end(self, index: int) -> None:
        if index == 1 and not self.table_ended:
            self.table_ended = True
            pending, self.pending = self.pending, []
            for batch in pending:
                self._emit(batch)
            if self.held_wm is not None:
                self.ctx.watermark(*self.held_wm)
                self.held_wm = None

    def on_watermark(self, wm: int, idle: bool) -> None:
        if self._waiting:
            self.held_wm = (wm, idle)
        else:
            self.ctx.watermark(wm, idle)

    def on_end(self) -> None:
        self.on_input_end(1)

    def snapshot(self) -> dict[str, Any]:
        """The table, stream rows waiting for a bounded table (each a list of one chunk, the
        previous one while unchanged), the held watermark."""
        table = [] if self.table is None else [self.table]
        return {
            "version": STATE_VERSION,
            "kind": "table_join",
            "table": self.held.chunks("table", table, concat),
            "pending": self.held.chunks("pending", self.pending, _relaxed),
            "table_ended": self.table_ended,
            "held_wm": None if self.held_wm is None else list(self.held_wm),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (replaces the table and the waiting rows)."""
        self.held = _Held()
        if not _check(self.node.step_id, snap, "table_join"):
            return
        table, parts, _ = _table(snap.get("table"))
        if table is not None:
            self.table = table
            self.held.keep("table", [table], parts)
        pending, parts, _ = _table(snap.get("pending"))
        self.pending = [pending] if pending is not None else []
        self.held.keep("pending", self.pending, parts)
        self.table_ended = bool(snap.get("table_ended", False))
        held = snap.get("held_wm")
        self.held_wm = None if held is None else (int(held[0]), bool(held[1]))


class LookupOperator(Operator):
    """Calls the lookup function once per batch for the keys missing from the cache.

    The cache is a frame of keys, looked-up columns, ``__found`` (the function returned a row),
    ``__at`` (when it was fetched, processing time) and ``__used`` (a batch counter for LRU).
    """

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: LookupOp = node.spec
        self.keys = list(self.op.on)
        self.cache: pl.DataFrame | None = None
        self.tick = 0
        self.calls = 0
        self.hits = 0
        self.misses = 0
        self.where = fn_location(self.op.fn)
        self.held = _Held()

    def _fetch(self, missing: pl.DataFrame, now: float) -> pl.DataFrame:
        try:
            got = self.op.fn(missing)
        except Exception as exc:
            msg = f"step '{self.node.step_id}': {self.where} raised {type(exc).__name__}: {exc}"
            raise JobError(msg, step_id=self.node.step_id) from exc
        if not isinstance(got, pl.DataFrame) or any(k not in got.columns for k in self.keys):
            msg = (
                f"step '{self.node.step_id}': {self.where} must return a polars.DataFrame "
                f"with the key columns {self.keys}"
            )
            raise JobError(msg, step_id=self.node.step_id)
        self.calls += 1
        got = got.unique(subset=self.keys, keep="last", maintain_order=True)
        got = got.cast({k: missing.schema[k] for k in self.keys})
        fresh = missing.join(
            got.with_columns(__found=pl.lit(True)), on=self.keys, how="left"
        ).with_columns(pl.col("__found").fill_null(False), __at=pl.lit(now), __used=pl.lit(0))
        return fresh

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        now = self.ctx.now()
        self.tick += 1
        cache = self.cache
        if cache is not None and self.op.ttl_s is not None:
            cache = cache.filter(pl.col("__at") > now - self.op.ttl_s)
        wanted = batch.select(self.keys).unique(maintain_order=True)
        if cache is not None and cache.height:
            missing = wanted.join(cache.select(self.keys), on=self.keys, how="anti")
        else:
            missing = wanted
        self.misses += missing.height
        self.hits += wanted.height - missing.height
        if missing.height:
            fresh = self._fetch(missing, now)
            cache = fresh if cache is None else pl.concat([cache, fresh], how="diagonal_relaxed")
        assert cache is not None
        used = wanted.with_columns(__hit=pl.lit(True))
        cache = (
            cache.join(used, on=self.keys, how="left")
            .with_columns(
                __used=pl.when(pl.col("__hit")).then(pl.lit(self.tick)).otherwise(pl.col("__used"))
            )
            .drop("__hit")
        )
        how = self.op.how
        values = cache.filter(pl.col("__found")) if how == "inner" else cache
        values = values.drop("__found", "__at", "__used")
        out = batch.join(values, on=self.keys, how=how, suffix=SUFFIX, maintain_order="left")
        if self.op.max_size is not None and cache.height > self.op.max_size:
            cache = cache.sort("__used", descending=True, maintain_order=True).head(
                self.op.max_size
            )
        self.cache = cache
        if out.height:
            self.ctx.emit(out)

    def snapshot(self) -> dict[str, Any]:
        """The cache (a list of one chunk: keys, values, ``__found``, ``__at``, ``__used``),
        counters."""
        cache = [] if self.cache is None else [self.cache]
        return {
            "version": STATE_VERSION,
            "kind": "lookup",
            "cache": self.held.chunks("cache", cache, concat),
            "tick": self.tick,
            "calls": self.calls,
            "hits": self.hits,
            "misses": self.misses,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (replaces the cache)."""
        self.held = _Held()
        if not _check(self.node.step_id, snap, "lookup"):
            return
        self.cache, parts, _ = _table(snap.get("cache"))
        self.held.keep("cache", [] if self.cache is None else [self.cache], parts)
        self.tick = int(snap.get("tick", 0))
        self.calls = int(snap.get("calls", 0))
        self.hits = int(snap.get("hits", 0))
        self.misses = int(snap.get("misses", 0))


def _relaxed(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames, how="diagonal_relaxed")


def build_join_operator(node: Node, ctx: OpContext) -> Operator:
    """Make the runtime operator of a join node."""
    if node.kind == "join_window":
        return WindowJoinOperator(node, ctx)
    if node.kind == "join_interval":
        if node.spec.best is not None:
            from tideflow.runtime._bestjoin import BestIntervalJoinOperator

            return BestIntervalJoinOperator(node, ctx)
        return IntervalJoinOperator(node, ctx)
    if node.kind == "join_table":
        return TableJoinOperator(node, ctx)
    if node.kind == "lookup":
        return LookupOperator(node, ctx)
    msg = f"no join operator for step kind {node.kind!r}"
    raise AssertionError(msg)
