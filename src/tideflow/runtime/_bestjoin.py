"""The interval join that keeps only each left record's best match (``best=BestMatch``).

State is laid out so that a batch costs work in proportion to the batch, not to the open
left records: the open rows are a key-indexed row store (:class:`KeyedRows`) that a batch of
right rows probes and that only grows (a closed row is marked, and the store is rebuilt once
most of it is closed), and the best match of each open row is an index into a store of
matched right rows, which a batch appends its winners to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from tideflow._errors import JobError
from tideflow.api._graph import Node
from tideflow.api._joins import SUFFIX
from tideflow.runtime._frames import concat, frame_chunk
from tideflow.runtime._joins import (
    WM_MAX,
    WM_MIN,
    IntervalJoinOperator,
    _best_settings,
    _check,
    _check_best,
    _Held,
    _table,
)
from tideflow.runtime._keyindex import KeyedRows, _take, stable_lexsort
from tideflow.runtime._operators import OpContext, _run_starts, _sort_keys
from tideflow.state._store import SnapshotChunk

__all__ = ["BestIntervalJoinOperator"]

#: A store (open rows, matched right rows) is rebuilt from its live rows once it holds more
#: than twice as many rows as are live, and at least this many.
_COMPACT_MIN = 4096


class BestIntervalJoinOperator(IntervalJoinOperator):
    """An interval join keeping, per left record, only its best match (``best=BestMatch``).

    State: ``open``, the left records as they came (their columns, ``__t``, ``__end``) in a
    key-indexed store, with ``live`` telling which are still open and ``best`` the row of each
    one's best match so far in ``matches`` (-1: none yet), the matched right rows laid out as
    in the results; and the right buffer of the plain join (right rows a later left record
    may still meet). A batch of right rows probes the open rows' key index; the pairs within
    their intervals are ranked on narrow columns only (order columns): a stable sort by (left
    row, order, arrival) and the first row per left row; those candidates
    replace the kept best where they rank before it (ties keep the kept row, the earlier
    arrival). When the watermark passes a left record's end, its row goes out if it has a
    match. Snapshots hold one row per open left record with its match (the right columns,
    null before a match) and ``__m`` (matched).
    """

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        best = self.op.best
        assert best is not None
        by = [self.rename.get(c, c) for c in best.by]
        # Key columns are equal among one left record's matches: they do not order them.
        pairs = [(c, d) for c, d in zip(by, best.descending, strict=True) if c not in self.keys]
        self.order = [c for c, _ in pairs]
        self.desc = [d for _, d in pairs]
        self.checked = False
        self._clear()

    def _clear(self) -> None:
        self.open = KeyedRows(self.keys)
        self.live: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)
        self.n_live = 0
        self.best: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self.starts: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self.ends: npt.NDArray[np.int64] = np.zeros(0, np.int64)  # a null end: WM_MAX
        self.bounded_end: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)  # the end is not null
        self.matches: list[pl.DataFrame] = []
        self.n_matches = 0
        # Bumped by every change of the open rows or their matches: a snapshot is made again
        # only after one (the previous chunk is referred to otherwise).
        self.version = 0
        self.snapped: tuple[int, list[SnapshotChunk]] | None = None

    def buffered(self, index: int) -> int:
        """Open left records (0) or buffered right rows (1)."""
        if index == 0:
            return self.n_live
        return sum(f.height for f in self.buffers[1])

    def _right_names(self, right: list[str]) -> dict[str, str]:
        """Right column -> its name in the results (``_right`` where it clashes on the left)."""
        left = self.schemas[0] or {}
        cols = [c for c in right if c not in self.keys and not c.startswith("__")]
        return {c: c + SUFFIX if c in left else c for c in cols}

    def _matched(self) -> pl.DataFrame:
        """The store of matched right rows as one frame."""
        if len(self.matches) > 1:
            self.matches[:] = [concat(self.matches)]
        return self.matches[0]

    def _best_of(self, left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
        """``__l``, ``__r`` (row positions) and the order columns of the best match in
        ``right`` of each row of ``left`` that has one."""
        lo = left.select(*self.keys, "__t", "__end").with_row_index("__l")
        ro = right.select(*self.keys, pl.col("__t").alias("__rt"), *self.order)
        pairs = lo.join(ro.with_row_index("__r"), on=self.keys, how="inner")
        cond = pl.col("__rt") <= pl.col("__end")
        if self.lower is not None:
            cond = cond & (pl.col("__rt") >= pl.col("__t") + self.lower)
        pairs = pairs.filter(cond).select("__l", "__r", *self.order)
        return self._first(pairs, "__r")

    def _first(self, rows: pl.DataFrame, tie: str) -> pl.DataFrame:
        """The first row per ``__l`` in the order (``tie`` breaks what the order leaves),
        by ``__l``."""
        keys = _sort_keys(rows, self.order, self.desc) if rows.height > 1 else None
        if keys is not None:  # integer and time columns without nulls: one NumPy sort
            lids = rows.get_column("__l").to_numpy()
            order = stable_lexsort([lids, *keys, rows.get_column(tie).to_numpy()])
            return _take(rows, order[_run_starts(lids[order])])
        if self.order and rows.height > 1 and not rows.schema[self.order[0]].is_float():
            # Only rows holding the best value of the first order column can come first: keep
            # those (a window aggregate, no sort), then sort the few that remain. Nulls come
            # last, so a group's best is its max/min over non-null values (null if all are).
            first = pl.col(self.order[0])
            best = (first.max() if self.desc[0] else first.min()).over("__l")
            rows = rows.filter(first.eq_missing(best))
        rows = rows.sort(
            ["__l", *self.order, tie], descending=[False, *self.desc, False], nulls_last=True
        )
        return rows.unique(subset="__l", keep="first", maintain_order=True)

    def _add_matches(self, right: pl.DataFrame, at: pl.Series) -> npt.NDArray[np.int64]:
        """Append the ``right`` rows at ``at`` to the match store; their rows in it."""
        names = self._right_names(right.columns)
        won = right.select(list(names)).select(pl.all().gather(at)).rename(names)
        rows = np.arange(self.n_matches, self.n_matches + won.height, dtype=np.int64)
        self.matches.append(won)
        self.n_matches += won.height
        return rows

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        batch = self._arrive(index, batch)
        if index == 1 and not self.checked:
            missing = [c for c in self.order if c not in batch.columns]
            if missing:
                msg = (
                    f"step '{self.node.step_id}': BestMatch orders by {missing}, which the "
                    f"right side does not have (its columns are {batch.columns})"
                )
                raise JobError(msg, step_id=self.node.step_id)
            self.checked = True
        rows = self._rows(index, batch)
        if rows is None:
            return
        if index == 0:
            self._left(rows)
        else:
            self._right(rows)

    def _left(self, rows: pl.DataFrame) -> None:
        """New left records: their best match among the buffered right rows, then open."""
        right = self._buffer(1)
        best = np.full(rows.height, -1, np.int64)
        if right is not None and right.height:
            found = self._best_of(rows, right)
            if found.height:
                best[found.get_column("__l").to_numpy()] = self._add_matches(
                    right, found.get_column("__r")
                )
            if self.op.left_unique:
                # Right rows of a key whose (only) left record is there need no buffer.
                keys = rows.select(self.keys)
                self.buffers[1][:] = [right.join(keys, on=self.keys, how="anti")]
        self.open.append(rows)
        self._grow(rows, best)

    def _grow(self, rows: pl.DataFrame, best: npt.NDArray[np.int64]) -> None:
        """Follow ``rows`` appended to the open store (``best``: their matches)."""
        ends = rows.get_column("__end")
        self.live = np.concatenate([self.live, np.ones(rows.height, np.bool_)])
        self.n_live += rows.height
        self.best = np.concatenate([self.best, best])
        self.starts = np.concatenate([self.starts, rows.get_column("__t").to_numpy()])
        self.ends = np.concatenate([self.ends, ends.fill_null(WM_MAX).to_numpy()])
        self.bounded_end = np.concatenate([self.bounded_end, ends.is_not_null().to_numpy()])
        self.version += 1

    def _right(self, rows: pl.DataFrame) -> None:
        """New right records: the best per open left record, merged with the kept best."""
        if self.n_live:
            b, at = self.open.pairs(rows)
            if b.size:
                # Pairs within the left record's interval: [t + lower, end].
                t = rows.get_column("__t").to_numpy()[b]
                ok = self.bounded_end[at] & (t <= self.ends[at])
                if self.lower is not None:
                    ok &= t >= self.starts[at] + self.lower
                if self.op.left_unique:
                    # Right rows of a key whose (only) left record is open need no buffer.
                    keep = np.ones(rows.height, np.bool_)
                    keep[b] = False
                if not ok.all():
                    b, at = b[ok], at[ok]
                if b.size:
                    pairs = rows.select(*self.order).select(pl.all().gather(pl.Series(b)))
                    pairs = pairs.with_columns(pl.Series("__l", at), pl.Series("__r", b)).select(
                        "__l", "__r", *self.order
                    )
                    cand = self._first(pairs, "__r")
                    self._merge(rows, cand)
                if self.op.left_unique:
                    rows = rows.filter(pl.Series(keep))
        if rows.height:
            self.buffers[1].append(rows)

    def _merge(self, rows: pl.DataFrame, cand: pl.DataFrame) -> None:
        """Replace the kept best of the open rows where a candidate of ``rows`` ranks first."""
        lids = cand.get_column("__l").to_numpy()
        both = cand.select("__l", *self.order, pl.col("__r").cast(pl.Int64).alias("__src"))
        kept_at = self.best[lids]
        has = kept_at >= 0
        if has.any():
            names = self._right_names(rows.columns)
            kept = (
                self._matched()
                .select([pl.col(names[c]).alias(c) for c in self.order])
                .select(pl.all().gather(pl.Series(kept_at[has])))
                .with_columns(
                    pl.Series("__l", lids[has]).cast(both.schema["__l"]),
                    __src=pl.lit(-1, pl.Int64),
                )
                .select("__l", *self.order, "__src")
            )
            both = pl.concat([kept, both], how="vertical_relaxed")
        won = self._first(both, "__src").filter(pl.col("__src") >= 0)
        if won.height == 0:
            return
        at = self._add_matches(rows, won.get_column("__src"))
        self.best[won.get_column("__l").to_numpy()] = at
        self.version += 1

    def on_watermark(self, wm: int, idle: bool) -> None:
        self._advance(wm)
        out = wm
        if wm not in (WM_MIN, WM_MAX) and self.n_live:
            # Rows still to come belong to open left records: hold at the oldest of them.
            out = min(wm, int(self.starts[self.live].min()))
        self.ctx.watermark(out, idle)

    def _advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        self.wm = wm
        if self.lower is not None:
            self._prune(1, pl.col("__t") - self.lower >= wm)
        if self.n_live == 0:
            return
        # The end of input closes every interval, unbounded ones too.
        done = self.live if wm == WM_MAX else self.live & (self.ends < wm)
        closed = np.flatnonzero(done)
        if closed.size == 0:
            return
        self.live[closed] = False
        self.n_live -= closed.size
        self.open.remove(closed, compact=False)
        self.version += 1
        matched = closed[self.best[closed] >= 0]
        if matched.size:
            self.ctx.emit(self._layout(self._with_matches(matched), []))
        self.best[closed] = -1  # their matches are no longer held
        self._compact()

    def _with_matches(self, rows: npt.NDArray[np.int64]) -> pl.DataFrame:
        """The open rows at ``rows`` with their matches (the right columns, null where none),
        then ``__m``; the columns in one order whatever the rows (results and snapshots of
        every worker concatenate)."""
        left = self.open.take(rows)
        at = self.best[rows]
        has = at >= 0
        parts = [left]
        if self.n_matches:
            index = pl.select(pl.when(pl.Series(has)).then(pl.Series(at))).to_series()
            parts.append(self._matched().select(pl.all().gather(index)))
        right = self.schemas[1]
        frame = pl.concat(parts, how="horizontal").with_columns(__m=pl.Series(has))
        if right is None:
            return frame
        names = self._right_names(list(right))
        missing = [pl.lit(None, right[c]).alias(n) for c, n in names.items() if n not in frame]
        if missing:
            frame = frame.with_columns(missing)
        cols = [c for c in frame.columns if c not in names.values() and c != "__m"]
        return frame.select(*cols, *names.values(), "__m")

    def _compact(self) -> None:
        """Rebuild the open rows and the match store from their live rows when mostly dead."""
        size = self.live.size
        if size > max(_COMPACT_MIN, 2 * self.n_live):
            keep = np.flatnonzero(self.live)
            self.open.compact()  # the row at keep[i] moves to i
            self.live = np.ones(keep.size, np.bool_)
            self.best = self.best[keep]
            self.starts, self.ends = self.starts[keep], self.ends[keep]
        held = np.flatnonzero(self.best >= 0)
        if self.n_matches > max(_COMPACT_MIN, 2 * held.size):
            if held.size:
                self.matches = [_take(self._matched(), self.best[held])]
            else:
                self.matches = []
            self.best[held] = np.arange(held.size, dtype=np.int64)
            self.n_matches = held.size

    def snapshot(self) -> dict[str, Any]:
        """Open left rows with their best match so far and ``__m`` (``left``), the right
        buffer (``right``), each a list of one chunk (the previous one while unchanged), and
        the ``best`` settings; O(open rows) state."""
        out = self._snap_common("interval_join")
        out["best"] = _best_settings(self.op)
        if self.snapped is None or self.snapped[0] != self.version:
            rows = np.flatnonzero(self.live)
            chunks = [frame_chunk(self._with_matches(rows))] if rows.size else []
            self.snapped = (self.version, chunks)
        out["left"] = list(self.snapped[1])
        self._buffer(1)
        out["right"] = self.held.chunks("right", self.buffers[1], concat)
        out["pending"] = []
        return out

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (replaces the open rows and the right buffer)."""
        self.buffers = ([], [])
        self._clear()
        self.held = _Held()
        if not _check(self.node.step_id, snap, "interval_join"):
            return
        _check_best(self.node.step_id, snap, self.op)
        self._restore_common(snap)
        opened, parts, _ = _table(snap.get("left"))
        if opened is not None:
            self._reopen(opened)
            if len(parts) == 1 and isinstance(parts[0], SnapshotChunk):
                self.snapped = (self.version, [parts[0]])
        right, parts, _ = _table(snap.get("right"))
        if right is not None:
            self.buffers[1].append(right)
            self.held.keep("right", [right], parts)

    def _reopen(self, laid_out: pl.DataFrame) -> None:
        """The state of open rows laid out as :meth:`_with_matches` makes them."""
        right = self.schemas[1] or {}
        names = set(self._right_names(list(right)).values())
        mine = [c for c in laid_out.columns if c not in names and c != "__m"]
        theirs = [c for c in laid_out.columns if c in names]
        matched = laid_out.get_column("__m").fill_null(False).to_numpy()
        opened = laid_out.select(mine)
        best = np.full(laid_out.height, -1, np.int64)
        rows = np.flatnonzero(matched)
        if rows.size and theirs:
            self.matches = [_take(laid_out.select(theirs), rows)]
            self.n_matches = rows.size
            best[rows] = np.arange(rows.size, dtype=np.int64)
        self.open.append(opened)
        self._grow(opened, best)
