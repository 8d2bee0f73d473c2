"""The state of ``top_n(..., emit="final")``: ranks in NumPy, the wide rows written once.

:class:`TopTable` keeps, for every key, its kept rows' order values and row references in one
slot of NumPy arrays (``n`` entries per slot, in rank order), and the kept rows themselves,
every column, in :class:`WideRows`: frames appended once per merge and never copied again
until half of them is dead. Merging a batch ranks only integers: the batch's own top rows per
key (one sort of the key codes and order values), then those together with the kept entries of
the same keys (a gather of their slots), and writes the winners back into the slots. Only the
batch rows that win a place are gathered, once, in arrival order; kept rows that lose theirs
are tombstones. Nothing proportional to the whole state is sorted or copied, apart from the
compaction of the wide rows (amortized).

A key's slot is its integer key value when the step has one integer key column whose values
stay in a compact range (direct address), otherwise a dense id from a
:class:`~tideflow.runtime._keyed.KeyIndex` (any key columns; null is a key value). Order
columns must be integers, times or Booleans without nulls (:func:`order_values`); a batch
that has others makes the owner move the state to its general store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from tideflow.runtime._frames import concat
from tideflow.runtime._keyed import KeyIndex
from tideflow.runtime._keyindex import Codes, Positions, Tombstones, stable_lexsort

__all__ = ["TopTable", "WideRows", "order_values"]

#: Slots a direct address may hold per key seen, plus this many (as the key index's rule).
_SLOTS_PER_KEY = 4
_FREE_SLOTS = 1 << 16

_NONE = np.zeros(0, np.int64)

#: Steps with a larger ``n`` keep their rows in the general store (a slot holds ``n`` entries).
MOST_N = 32

#: Slots holding more than this many bytes, of which fewer than a quarter of the entries are
#: filled (many keys with few rows, a large ``n``, a sparse range of direct addresses): the
#: owner keeps the rows in its general store instead (16 to 24 bytes a row).
SPARSE_BYTES = 64 << 20


def order_values(
    frame: pl.DataFrame, columns: list[str], descending: list[bool]
) -> list[npt.NDArray[np.int64]] | None:
    """The order columns as int64 values that sort ascending in the step's order.

    Integers, times and Booleans without nulls; a descending column is inverted (``~x``
    reverses the order and never overflows). None for any other column (the general path
    sorts those with Polars: nulls last, NaN, text). Unsigned 64-bit values above the int64
    range are None as well.

    Examples
    --------
    >>> frame = pl.DataFrame({"a": [3, 1], "b": [True, False]})
    >>> [v.tolist() for v in order_values(frame, ["a", "b"], [True, False])]
    [[-4, -2], [1, 0]]
    >>> order_values(pl.DataFrame({"a": [1.5]}), ["a"], [False]) is None
    True
    """
    out: list[npt.NDArray[np.int64]] = []
    for name, desc in zip(columns, descending, strict=True):
        col = frame.get_column(name)
        if col.null_count():
            return None
        if col.dtype == pl.Boolean:
            col = col.cast(pl.UInt8)
        elif not (col.dtype.is_integer() or col.dtype.is_temporal()):
            return None
        values = col.to_physical().to_numpy()
        if values.dtype == np.uint64 and values.size and int(values.max()) >> 63:
            return None
        values = values.astype(np.int64, copy=False)
        out.append(~values if desc else values)
    return out


class WideRows(Tombstones):
    """The kept rows, every column: frames appended in arrival order, with tombstones.

    Positions are handed out in order; a removed row stays in its frame (flagged) until
    :meth:`compact` gathers the live ones into one frame. The methods are those
    :class:`~tideflow.runtime._keyindex.ChunkLog` snapshots a store with.

    Examples
    --------
    >>> rows = WideRows()
    >>> rows.append(pl.DataFrame({"v": ["a", "b"]}))
    0
    >>> rows.append(pl.DataFrame({"v": ["c"]}))
    2
    >>> rows.remove(np.array([1]))
    >>> rows.live()["v"].to_list(), rows.live_before(2)
    (['a', 'c'], 1)
    """

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[pl.DataFrame] = []

    def append(self, rows: pl.DataFrame) -> int:
        """Add ``rows`` after the others; returns the position of the first."""
        base = self.size
        if rows.height == 0:
            return base
        self.frames.append(rows)
        self.added(rows.height)
        return base

    def compact(self) -> None:
        """Keep the live rows only, as one frame (the row at ``p`` moves to ``live_before(p)``).

        The live rows are gathered, not filtered: a gather copies the text of the rows it
        takes, so the removed rows' text is freed (a filter could keep views into it).
        """
        if not self.n_dead:
            return
        keep = pl.Series(np.flatnonzero(~self.dead), dtype=pl.Int64)
        whole = concat(self.frames)
        live = whole.select(pl.all().gather(keep))
        self.frames = [live] if live.height else []
        self.size, self.n_dead = live.height, 0
        self._flags = np.zeros(live.height, np.bool_)
        self.dead = self._flags

    def live_parts(self, position: int = 0) -> Iterator[pl.DataFrame]:
        """The live rows at ``position`` and after, in order: a frame per appended frame."""
        base = 0
        for frame in self.frames:
            end = base + frame.height
            if end > position:
                start = max(position - base, 0)
                part = frame.slice(start) if start else frame
                if self.n_dead:
                    part = part.filter(pl.Series(~self.dead[base + start : end]))
                if part.height:
                    yield part
            base = end

    def live_since(self, position: int) -> pl.DataFrame:
        """The live rows at ``position`` and after, in order."""
        frames = list(self.live_parts(position))
        if frames:
            return concat(frames)
        return self.frames[0].clear() if self.frames else pl.DataFrame()

    def live(self) -> pl.DataFrame:
        """Every live row, in order."""
        return self.live_since(0)

    def take(self, positions: Positions, columns: list[str]) -> pl.DataFrame:
        """``columns`` of the rows at ``positions`` (live or removed), in that order."""
        whole = concat([f.select(columns) for f in self.frames]) if self.frames else None
        if whole is None:
            return pl.DataFrame()
        return whole.select(pl.all().gather(pl.Series(positions, dtype=pl.Int64)))


class _CodeIds:
    """Dense ids of exact key codes: sorted runs of codes with their ids, merged geometrically.

    Examples
    --------
    >>> ids = _CodeIds()
    >>> ids.lookup(np.array([40, 7])).tolist(), ids.lookup(np.array([7, 9, 40])).tolist()
    ([0, 1], [1, 2, 0])
    """

    def __init__(self) -> None:
        self.runs: list[Codes] = []
        self.ids: list[Positions] = []
        self.count = 0

    def lookup(self, codes: Codes) -> Positions:
        """The ids of ``codes`` (distinct); new codes get the next ids, in their order."""
        order = None
        if codes.size > 1 and not bool((codes[1:] > codes[:-1]).all()):
            order = np.argsort(codes)  # sorted needles: each search starts near the last
        needles = codes if order is None else codes[order]
        got = np.full(codes.size, -1, np.int64)
        for run, ids in zip(self.runs, self.ids, strict=True):
            pos = np.searchsorted(run, needles)
            np.minimum(pos, run.size - 1, out=pos)
            hit = run[pos] == needles
            got[hit] = ids[pos[hit]]
        new = got < 0
        fresh = int(np.count_nonzero(new))
        if fresh:
            if order is None:
                got[new] = self.count + np.arange(fresh, dtype=np.int64)
            else:  # numbered in the order the codes came
                came = np.sort(order[new])
                rank = np.empty(codes.size, np.int64)
                rank[came] = np.arange(fresh, dtype=np.int64)
                got[new] = self.count + rank[order[new]]
            self.count += fresh
            self._add(needles[new], got[new])
        if order is None:
            return got
        out = np.empty(codes.size, np.int64)
        out[order] = got
        return out

    def _add(self, codes: Codes, ids: Positions) -> None:
        self.runs.append(codes)
        self.ids.append(ids)
        runs, run_ids = self.runs, self.ids
        while len(runs) > 1 and runs[-2].size <= 2 * runs[-1].size:
            last, last_ids = runs.pop(), run_ids.pop()
            runs[-1], run_ids[-1] = _merged(runs[-1], run_ids[-1], last, last_ids)


def _merged(a: Codes, a_ids: Positions, b: Codes, b_ids: Positions) -> tuple[Codes, Positions]:
    """Two sorted runs of distinct codes (with their ids) merged into one, without a sort.

    Examples
    --------
    >>> codes, ids = _merged(np.array([2, 9]), np.array([0, 1]), np.array([5]), np.array([2]))
    >>> codes.tolist(), ids.tolist()
    ([2, 5, 9], [0, 2, 1])
    """
    at = np.searchsorted(a, b) + np.arange(b.size)  # where b's codes go in the merged run
    from_a = np.ones(a.size + b.size, np.bool_)
    from_a[at] = False
    codes, ids = np.empty(from_a.size, np.int64), np.empty(from_a.size, np.int64)
    codes[at], ids[at] = b, b_ids
    codes[from_a], ids[from_a] = a, a_ids
    return codes, ids


#: How slots stand for keys: the key value itself (one integer key column, compact values),
#: a dense id of the exact key code, or a dense id from a key index (any key columns).
SlotKind = Literal["direct", "codes", "index"]


@dataclass(frozen=True)
class _Tops:
    """A batch's top rows per key, key by key in rank order (``n == 1``: one per key)."""

    #: The slot of each key, and how many entries it held before the batch.
    slots: Positions
    have: Positions
    #: The top rows (batch row numbers), their order values and 0-based ranks in the batch.
    rows: Positions
    values: list[npt.NDArray[np.int64]]
    ranks: Positions


class TopTable:
    """Each key's top ``n`` entries (order values and a row reference) in NumPy slots.

    ``count[s]`` entries of slot ``s`` are filled, in rank order, at flat positions
    ``s * n + j``: ``order[c]`` the ``c``-th order value (ascending in the step's order) and
    ``ref`` the position of the row in :attr:`rows`. Ties rank in arrival order: a slot's
    entries come before a new batch's in a merge, and a batch's own rows in arrival order.
    With direct addressing, batch rows that cannot enter a full slot (not better than its
    last entry) are left out before anything is sorted.

    Examples
    --------
    >>> table = TopTable(["k"], 2)
    >>> batch = pl.DataFrame({"k": [1, 1, 2, 1], "v": [5, 9, 1, 7]})
    >>> table.merge(batch, [-batch["v"].to_numpy() - 1], batch["k"].to_numpy()).tolist()
    []
    >>> rows, ranks = table.ranked()
    >>> sorted(zip(rows["k"].to_list(), rows["v"].to_list(), ranks.tolist()))
    [(1, 7, 1), (1, 9, 0), (2, 1, 0)]
    >>> batch = pl.DataFrame({"k": [1, 2], "v": [8, 0]})
    >>> table.merge(batch, [-batch["v"].to_numpy() - 1], batch["k"].to_numpy()).tolist()
    [2]
    """

    def __init__(self, keys: list[str], n: int) -> None:
        self.keys = keys
        self.n = n
        self.rows = WideRows()
        # The 0-based rank of the kept row at each position of ``rows`` (set by the merge
        # that last ranked its key; the first ``rows.size`` entries of a buffer grown by
        # doubling), so the end reads the ranks in the rows' order.
        self.rank_at: npt.NDArray[np.uint8] = np.zeros(0, np.uint8)
        self.count: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self.ref: npt.NDArray[np.int64] = _NONE
        self.order: list[npt.NDArray[np.int64]] = []
        self.kind: SlotKind = "direct" if len(keys) == 1 else "codes"
        self.codes = _CodeIds()
        self.index = KeyIndex(tuple(keys))
        self.keys_seen = 0  # slots holding entries
        self.entries = 0  # filled entries in all slots

    # -- slots ----------------------------------------------------------------------------------
    def _grow(self, size: int, columns: int) -> None:
        """Room for slots below ``size`` (doubling), with ``columns`` order values each."""
        n, have = self.n, self.count.size
        while len(self.order) < columns:
            self.order.append(np.zeros(have * n, np.int64))
        if size <= have:
            return
        cap = max(size, 2 * have, 1024)
        count = np.zeros(cap, np.int32)
        count[:have] = self.count
        self.count = count
        self.ref = _grown(self.ref, cap * n)
        self.order = [_grown(values, cap * n) for values in self.order]

    def sparse(self) -> bool:
        """Whether the slots hold more than :data:`SPARSE_BYTES`, a quarter of them filled."""
        entries = self.count.size * self.n
        size = entries * 8 * (len(self.order) + 1) + self.count.size * 4
        return size > SPARSE_BYTES and self.entries * 4 < entries

    def _renumber(self, kind: SlotKind, held: Positions, slots: Positions) -> None:
        """Move the entries of slots ``held`` to ``slots`` (a new kind of slot)."""
        n = self.n
        flat = (held[:, None] * n + np.arange(n)).ravel()
        count, ref, order = self.count[held], self.ref[flat], [v[flat] for v in self.order]
        self.kind, self.count, self.ref = kind, np.zeros(0, np.int32), _NONE
        self.order = [_NONE for _ in order]
        self._grow(int(slots.max()) + 1 if slots.size else 0, len(order))
        new_flat = (slots[:, None] * n + np.arange(n)).ravel()
        self.count[slots], self.ref[new_flat] = count, ref
        for mine, theirs in zip(self.order, order, strict=True):
            mine[new_flat] = theirs

    def _leave_direct(self) -> None:
        """Direct addresses (the key values) become dense ids of the codes."""
        held = np.flatnonzero(self.count > 0)
        self._renumber("codes", held, self.codes.lookup(held))

    def _to_index(self) -> None:
        """Slots become dense ids of a key index (keys read from each slot's first row)."""
        held = np.flatnonzero(self.count > 0)
        keys = self.rows.take(self.ref[held * self.n], self.keys)
        self._renumber("index", held, self.index.lookup(keys)[0] if held.size else held)

    def _compact(self, group: Codes) -> bool:
        """Whether the codes ``group`` may stay direct addresses."""
        lo, hi = int(group.min()), int(group.max())
        return lo >= 0 and hi < _SLOTS_PER_KEY * (self.keys_seen + group.size) + _FREE_SLOTS

    # -- merging --------------------------------------------------------------------------------
    def merge(
        self,
        batch: pl.DataFrame,
        values: list[npt.NDArray[np.int64]],
        group: Codes | None,
    ) -> Positions | None:
        """Merge ``batch`` (its :func:`order_values` and exact key codes, if any).

        Returns the positions of the kept rows that lost their place (for the owner to
        remove from :attr:`rows`), or None, changing nothing, when the batch has another
        number of order columns than the ones before or the slots are :meth:`sparse`.
        """
        if self.order and len(values) != len(self.order):
            return None
        if self.sparse():
            return None
        if batch.height == 0:
            return _NONE
        self._grow(0, len(values))
        if group is None and self.kind != "index":
            self._to_index()
        if self.kind == "direct" and group is not None and not self._compact(group):
            self._leave_direct()
        row_slots = None  # each row's slot, when known before ranking the batch
        if self.kind == "index":
            group = row_slots = self.index.lookup(batch.select(self.keys))[0]
        elif self.kind == "direct":
            row_slots = group
        assert group is not None
        rows = None  # the rows that may enter (None: all)
        if row_slots is not None:
            self._grow(int(row_slots.max()) + 1, len(values))
            rows = self._contenders(values, row_slots)
        if rows is not None:
            values, group = [v[rows] for v in values], group[rows]
        top, ranks = self._best(values, group)
        if top.size == 0:
            return _NONE
        lead = top[ranks == 0]
        if row_slots is None:
            slots = self.codes.lookup(group[lead])
            self._grow(int(slots.max()) + 1, len(values))
        else:
            slots = row_slots[lead if rows is None else rows[lead]]
        have = self.count[slots].astype(np.int64)
        self.keys_seen += int(np.count_nonzero(have == 0))
        tops = _Tops(
            slots, have, top if rows is None else rows[top], [v[top] for v in values], ranks
        )
        return self._merge_one(batch, tops) if self.n == 1 else self._merge_n(batch, tops)

    def _merge_one(self, batch: pl.DataFrame, tops: _Tops) -> Positions:
        """``n == 1``: each key's best batch row replaces its entry if strictly better."""
        slots, have, top_rows, top_values = tops.slots, tops.have, tops.rows, tops.values
        better = np.ones(slots.size, np.bool_)
        held = np.flatnonzero(have)
        better[held] = self._better([v[held] for v in top_values], slots[held])
        lost = self.ref[slots[held[better[held]]]]
        win = np.flatnonzero(better)
        flat = slots[win]
        refs = self._append(batch, top_rows[win])
        self.ref[flat] = refs
        self.rank_at[refs] = 0
        for mine, theirs in zip(self.order, top_values, strict=True):
            mine[flat] = theirs[win]
        self.count[flat] = 1
        self.entries += int(np.count_nonzero(have[win] == 0))
        out: Positions = lost
        return out

    def _merge_n(self, batch: pl.DataFrame, tops: _Tops) -> Positions:
        """The kept entries of the batch's keys and its top rows ranked together.

        Keys without entries take the batch's top rows as they are; the others rank their
        entries and the batch's top rows in one sort.
        """
        slots, have, top_rows, top_values = tops.slots, tops.have, tops.rows, tops.values
        ranks = tops.ranks
        n = self.n
        run = np.cumsum(ranks == 0) - 1  # the key (0..k-1) of each top row
        is_old = (have > 0)[run]
        fresh, old = np.flatnonzero(~is_old), np.flatnonzero(is_old)
        # The slots' entries, key by key in rank order, then the batch's top rows likewise:
        # a stable sort ranks a tie of a kept entry and a batch row in arrival order.
        held = int(have.sum())
        ex_key = np.repeat(np.arange(slots.size), have)
        ex_flat = slots[ex_key] * n + (np.arange(held) - np.repeat(np.cumsum(have) - have, have))
        both_key = np.concatenate([ex_key, run[old]])
        both = [
            np.concatenate([mine[ex_flat], theirs[old]])
            for mine, theirs in zip(self.order, top_values, strict=True)
        ]
        kept, rank = self._first_n(stable_lexsort([both_key, *both]), both_key)
        ex_ref = self.ref[ex_flat]
        from_batch = kept >= held
        refs = self._append(batch, top_rows[np.concatenate([fresh, old[kept[from_batch] - held]])])
        flat = slots[run[fresh]] * n + ranks[fresh]
        self.ref[flat] = refs[: fresh.size]
        self.rank_at[refs[: fresh.size]] = ranks[fresh]
        for mine, theirs in zip(self.order, top_values, strict=True):
            mine[flat] = theirs[fresh]
        kept_refs = np.empty(kept.size, np.int64)
        kept_refs[~from_batch] = ex_ref[kept[~from_batch]]
        kept_refs[from_batch] = refs[fresh.size :]
        flat = slots[both_key[kept]] * n + rank
        self.ref[flat] = kept_refs
        self.rank_at[kept_refs] = rank
        for mine, theirs in zip(self.order, both, strict=True):
            mine[flat] = theirs[kept]
        counts = np.concatenate([run[fresh], both_key[kept]])
        now = np.bincount(counts, minlength=slots.size)
        self.entries += int(now.sum() - have.sum())
        self.count[slots] = now
        lost = np.ones(held, np.bool_)
        lost[kept[~from_batch]] = False
        out: Positions = ex_ref[lost]
        return out

    def _append(self, batch: pl.DataFrame, won: Positions) -> Positions:
        """Append the batch rows ``won`` (distinct) to :attr:`rows`; their positions.

        They are gathered in arrival order: a gather in order reads the batch's text columns
        several times faster than one in rank order.
        """
        wins = np.zeros(batch.height, np.bool_)
        wins[won] = True
        base = self.rows.append(batch[np.flatnonzero(wins)])
        if self.rows.size > self.rank_at.size:
            grown = np.zeros(max(self.rows.size, 2 * self.rank_at.size), np.uint8)
            grown[: self.rank_at.size] = self.rank_at
            self.rank_at = grown
        out: Positions = (base - 1 + np.cumsum(wins))[won]
        return out

    def _better(
        self, values: list[npt.NDArray[np.int64]], flat: Positions
    ) -> npt.NDArray[np.bool_]:
        """Whether ``values`` come strictly before the entries at ``flat`` (tuple order)."""
        less = np.zeros(flat.size, np.bool_)
        tied = np.ones(flat.size, np.bool_)
        for mine, theirs in zip(self.order, values, strict=True):
            kept = mine[flat]
            less |= tied & (theirs < kept)
            tied &= theirs == kept
        return less

    def _contenders(
        self, values: list[npt.NDArray[np.int64]], slots: Positions
    ) -> Positions | None:
        """The rows that may enter their slot (None: all): not the ones that are not better
        than the last entry of a full slot (a tie loses: the kept row came first)."""
        full = np.flatnonzero(self.count[slots] >= self.n)
        if full.size == 0:
            return None
        last = slots[full] * self.n + (self.n - 1)
        out = self._better([v[full] for v in values], last)
        if bool(out.all()):
            return None
        keep = np.ones(slots.size, np.bool_)
        keep[full[~out]] = False
        return np.flatnonzero(keep)

    def _first_n(self, order: Positions, group: Codes) -> tuple[Positions, Positions]:
        """The entries of ``order`` (sorted by ``group``, then rank) within each group's first
        ``n``, and their 0-based ranks."""
        sorted_group = group[order]
        starts = np.empty(order.size, np.bool_)
        starts[:1] = True
        np.not_equal(sorted_group[1:], sorted_group[:-1], out=starts[1:])
        at = np.arange(order.size, dtype=np.int64)
        ranks = at - np.maximum.accumulate(np.where(starts, at, 0))
        keep = ranks < self.n
        return order[keep], ranks[keep]

    def _best(
        self, values: list[npt.NDArray[np.int64]], group: Codes
    ) -> tuple[Positions, Positions]:
        """Each key's first ``n`` rows (``group``: a key's integer) and their ranks.

        Key by key in rank order; with ``n == 1`` in order of the values (one sort of
        the order columns, then each key's first row).
        """
        if self.n == 1:
            order = stable_lexsort(values)
            first = pl.Series(group[order]).is_first_distinct().to_numpy()
            top = order[first]
            return top, np.zeros(top.size, np.int64)
        return self._first_n(stable_lexsort([group, *values]), group)

    def moved(self, alive: npt.NDArray[np.bool_]) -> None:
        """The rows were compacted (``alive``: which positions were live): follow them."""
        new_pos = np.cumsum(alive) - 1
        filled = self._filled()
        self.ref[filled] = new_pos[self.ref[filled]]
        self.rank_at = self.rank_at[: alive.size][alive]

    def _filled(self) -> Positions:
        """The flat positions of the filled entries."""
        mask = np.arange(self.n) < self.count[:, None]
        return np.flatnonzero(mask)

    # -- reading --------------------------------------------------------------------------------
    def rank_of(self) -> npt.NDArray[np.int64]:
        """The 0-based rank of the live row at each position of :attr:`rows` (removed rows:
        the rank they last had)."""
        return self.rank_at[: self.rows.size].astype(np.int64)

    def ranked(self) -> tuple[pl.DataFrame, Positions]:
        """The kept rows in arrival order and their 0-based ranks."""
        ranks = self.rank_of()
        return self.rows.live(), ranks[~self.rows.dead]

    def ranked_parts(self) -> Iterator[tuple[pl.DataFrame, Positions]]:
        """:meth:`ranked` a frame at a time (no copy of the whole state)."""
        ranks = self.rank_of()
        if self.rows.n_dead:
            ranks = ranks[~self.rows.dead]
        at = 0
        for part in self.rows.live_parts():
            yield part, ranks[at : at + part.height]
            at += part.height


def _grown(values: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.int64]:
    out = np.zeros(size, np.int64)
    out[: values.size] = values
    return out
