"""A growing, probe-able buffer of rows: the state of a regular (unbounded) join side.

A join side that keeps every record (a regular join on a key) must not be joined as a whole
against every new batch of the other side: that costs O(buffer) per batch. :class:`KeyedRows`
keeps the rows in segments, each a Polars chunk of consecutive row positions with its key index
(the rows' integer key codes, sorted, with their offsets in the chunk). Every appended batch is a
segment, merged into the previous one while that one is at most twice as large (as the runs of
an LSM tree), so there are O(log n) segments and a row is copied O(log n) times in its life.
Probing a batch is a NumPy ``searchsorted`` per segment and a gather of the matched rows from
its chunk: O(batch x log n) work, whatever the buffer's size. Exact integer codes in a compact
range (ids: at most four slots per key, plus 65,536) skip the sorting and searching: the store
indexes them by direct address (:class:`_Direct`: a key's first row at ``code - lo``, its
further rows chained), so probing a unique side is one gather and appending new keys a few
scatters. A store whose codes turn sparse, hashed, or hold more than 32 rows of one key moves to
the sorted segments for good.

Key codes are the key values themselves for one integer key column; for two to four integer key
columns whose values fit (non-negative, below 2**(63 // columns)), the values packed into one
non-negative integer; otherwise a 64-bit hash of the key columns (negative when it stands in for
a key that does not fit a packing). Matches of hashed codes are confirmed by comparing the key
values of the gathered rows.
Rows with a null key never match (as in SQL) and are not indexed, unless the buffer is made
with ``nulls_equal=True`` (a grouping, as ``top_n``'s state: null is a key value like any other).
Rows can be removed (a tombstone per position); the segments are rebuilt without them once they
are more than half of the rows. The index lives in memory only: a snapshot is the live rows, and
:meth:`KeyedRows.restore` indexes them again. :class:`ChunkLog` snapshots a store
incrementally: one chunk per checkpoint of the rows appended since the previous one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from tideflow.runtime._frames import concat, frame_chunk, frame_of
from tideflow.state._store import SnapshotChunk

__all__ = [
    "ChunkLog",
    "CodeKind",
    "KeyedRows",
    "LogRows",
    "Tombstones",
    "codes_exact",
    "key_codes",
    "stable_argsort",
    "stable_lexsort",
]

Codes = npt.NDArray[np.int64]
Positions = npt.NDArray[np.int64]

#: How key codes stand for keys: the value of one integer key column (``"value"``), the values
#: of several integer key columns packed into one integer (``"packed"``, hashes for the rows
#: that do not fit), or a hash of the key columns (``"hash"``).
CodeKind = Literal["value", "packed", "hash"]

_INTEGER = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)

#: Up to this many integer key columns are packed into one code (each then has 63 // columns
#: bits: 31 for two, 21 for three, 15 for four).
_PACK_COLUMNS = 4

#: The code of a null integer key when nulls are key values (``nulls_equal``); a real key with
#: this value has it too, so matches on it are confirmed.
NULL_CODE = np.iinfo(np.int64).min


def key_codes(
    frame: pl.DataFrame, keys: list[str], *, nulls_equal: bool = False
) -> tuple[Codes, npt.NDArray[np.bool_], CodeKind]:
    """Integer codes of the rows' keys, which rows have no null key, and how codes stand for keys.

    With ``nulls_equal`` every row is valid (null is a key value): a null integer key has the
    code :data:`NULL_CODE`, and hashed codes hash the nulls too. Several integer key columns
    are packed (each value in its own bits) when every value is non-negative and fits its
    bits; a row with a null or another value gets a hash with the sign bit set, so it never
    equals a packed code (:func:`codes_exact` tells whether codes may be trusted).

    Examples
    --------
    >>> codes, valid, kind = key_codes(pl.DataFrame({"k": [3, None, 5]}), ["k"])
    >>> codes[valid].tolist(), valid.tolist(), kind
    ([3, 5], [True, False, True], 'value')
    >>> key_codes(pl.DataFrame({"k": ["a"]}), ["k"])[2]  # hashed: matches are confirmed
    'hash'
    >>> key_codes(pl.DataFrame({"k": [3, None]}), ["k"], nulls_equal=True)[1].tolist()
    [True, True]
    >>> codes, _, kind = key_codes(pl.DataFrame({"a": [1, 2, -1], "b": [5, 6, 7]}), ["a", "b"])
    >>> kind, codes[:2].tolist() == [(1 << 31) | 5, (2 << 31) | 6], bool(codes[2] < 0)
    ('packed', True, True)
    """
    if frame.height == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.bool_), "value"
    kind: CodeKind = "hash"
    if all(isinstance(frame.schema[k], _INTEGER) for k in keys):
        kind = "value" if len(keys) == 1 else "packed" if len(keys) <= _PACK_COLUMNS else "hash"
    if kind == "value":
        col = frame.get_column(keys[0])
        valid = col.is_not_null().to_numpy()
        codes = col.cast(pl.Int64).fill_null(NULL_CODE if nulls_equal else 0).to_numpy()
    elif kind == "packed":
        bits = 63 // len(keys)
        codes = np.zeros(frame.height, np.int64)
        fits = np.ones(frame.height, np.bool_)
        for k in keys:
            col = frame.get_column(k)
            if col.null_count():  # a null is -1 here: it does not fit
                col = col.cast(pl.Int64).fill_null(-1)
            values = col.to_numpy()
            if values.dtype != np.int64:
                values = values.astype(np.int64)
            if int(values.min()) < 0 or int(values.max()) >> bits:
                fits &= (values >> bits) == 0  # negative values shift to -1
                values = values & ((1 << bits) - 1)
            np.left_shift(codes, bits, out=codes)
            np.bitwise_or(codes, values, out=codes)
        valid = fits
        if not fits.all():
            rest = np.flatnonzero(~fits)
            other = frame[rest]
            rest_hash = other.select(pl.struct(keys).hash(seed=11)).to_series().to_numpy()
            codes[rest] = rest_hash.view(np.int64) | NULL_CODE  # the sign bit: never packed
            flags = other.select(pl.all_horizontal(pl.col(k).is_not_null() for k in keys))
            valid = fits.copy()
            valid[rest] = flags.to_series().to_numpy()
    else:
        flags = frame.select(pl.all_horizontal(pl.col(k).is_not_null() for k in keys))
        valid = flags.to_series().to_numpy()
        hashed = pl.col(keys[0]).hash(seed=11) if len(keys) == 1 else pl.struct(keys).hash(seed=11)
        codes = frame.select(hashed).to_series().to_numpy().view(np.int64)
    if nulls_equal:
        valid = np.ones(frame.height, np.bool_)
    return np.ascontiguousarray(codes, np.int64), np.asarray(valid, np.bool_), kind


def codes_exact(codes: Codes, kind: CodeKind, *, nulls_equal: bool = False) -> bool:
    """Whether equal ``codes`` (valid rows' codes of :func:`key_codes`) mean equal keys.

    Examples
    --------
    >>> codes_exact(np.array([4, 7]), "value"), codes_exact(np.array([4, -7]), "packed")
    (True, False)
    """
    if kind == "value":
        return not (nulls_equal and bool((codes == NULL_CODE).any()))
    if kind == "packed":
        return codes.size == 0 or int(codes.min()) >= 0
    return False


def stable_argsort(values: Codes) -> Positions:
    """``np.argsort(values, kind="stable")``, in about a quarter of its time on unsorted data.

    NumPy's stable sort of 64-bit integers is a merge sort; its default (quick) sort uses the
    CPU's vector instructions and is several times faster, but does not keep ties in order.
    So: sorted input as it is; values within a range of 2**16 (row numbers of a batch, codes
    of a compact range) as 16-bit integers, which NumPy's stable sort orders by radix sort,
    in linear time; values whose range leaves room for the positions' bits (key
    ids, most integer keys) packed with their position into one integer each, which are
    distinct, and one quick sort of those; otherwise a quick sort, and when it found ties a
    second one of (rank of the value, position) pairs.

    Examples
    --------
    >>> stable_argsort(np.array([5, 1, 5, 0, 1])).tolist()
    [3, 1, 4, 0, 2]
    """
    n = values.size
    if n < 2 or bool((values[1:] >= values[:-1]).all()):
        return np.arange(n, dtype=np.int64)
    bits = (n - 1).bit_length()
    lo = int(values.min())
    span = int(values.max()) - lo
    if span < 1 << 16:
        small = (values - lo).astype(np.uint16)
        return np.argsort(small, kind="stable").astype(np.int64, copy=False)
    if span < 1 << (63 - bits):  # (value, position) fits one int64
        packed = (values.astype(np.int64, copy=False) - lo) << bits
        packed |= np.arange(n, dtype=np.int64)
        packed.sort()
        packed &= (1 << bits) - 1
        return packed
    order = np.argsort(values)
    ranked = values[order]
    same = ranked[1:] == ranked[:-1]
    if not same.any():
        return order.astype(np.int64, copy=False)
    if n >= 1 << 31:  # the pairs would not fit one integer
        return np.argsort(values, kind="stable").astype(np.int64, copy=False)
    rank = np.empty(n, np.int64)
    rank[0] = 0
    np.cumsum(~same, out=rank[1:])
    by_position = np.empty(n, np.int64)
    by_position[order] = rank
    pairs = (by_position << 32) | np.arange(n, dtype=np.int64)
    return np.argsort(pairs).astype(np.int64, copy=False)


def stable_lexsort(columns: list[npt.NDArray[Any]]) -> Positions:
    """The rows in order of ``columns`` (the first the primary key), ties in row order.

    The order of ``np.lexsort(columns[::-1])``, cheaper in the usual cases: the last columns
    are dropped while they are already in ascending order along the rows (arrival numbers
    breaking ties: the row order does it), and the first ones are packed into one integer
    ordered as their tuples while their ranges fit 63 bits together; one column left is
    sorted by :func:`stable_argsort` (one quick sort), several by ``lexsort`` (a merge sort
    per column). When the first column already descends along the rows (the latest rows
    first, by descending times and arrival numbers), ``lexsort`` as it is: its merge sorts
    take runs in linear time. Columns of integers (any width; unsigned 64-bit ones are not
    packed).

    Examples
    --------
    >>> stable_lexsort([np.array([2, 1, 2, 1]), np.array([-5, 9, 3, 9])]).tolist()
    [1, 3, 0, 2]
    >>> stable_lexsort([np.array([1, 0, 1]), np.array([7, 8, 9])]).tolist()  # 2nd in order
    [1, 0, 2]
    >>> stable_lexsort([np.array([9, 9, 4]), np.array([-1, -2, -3])]).tolist()  # descending
    [2, 1, 0]
    """
    n = columns[0].size if columns else 0
    keys = list(columns)
    while keys and (n < 2 or bool((keys[-1][1:] >= keys[-1][:-1]).all())):
        keys.pop()
    if not keys:
        return np.arange(n, dtype=np.int64)
    if bool((keys[0][1:] <= keys[0][:-1]).all()):
        return np.lexsort(keys[::-1]).astype(np.int64, copy=False)
    packed: Codes | None = None
    used = taken = 0
    for col in keys:
        if col.dtype == np.uint64:
            break
        low, high = int(col.min()), int(col.max())
        bits = (high - low).bit_length()
        if used + bits > 63:
            break
        # Differences below 2**63 come out right in wrapping int64 arithmetic.
        values = col.astype(np.int64) - np.int64(low)
        if packed is None:
            packed = values
        else:
            np.left_shift(packed, np.int64(bits), out=packed)
            np.bitwise_or(packed, values, out=packed)
        used += bits
        taken += 1
    rest = keys[taken:]
    if packed is None:
        return np.lexsort(rest[::-1]).astype(np.int64, copy=False)
    if not rest:
        return stable_argsort(packed)
    return np.lexsort([*rest[::-1], packed]).astype(np.int64, copy=False)


#: A direct index keeps at most this many slots per distinct key (plus :data:`_FREE_SLOTS`);
#: a sparser range of codes goes to the sorted segments. A worker of N holds about 1/N of
#: the ids in its range (hash partitioning): up to four workers' shares of dense ids fit.
#: A slot costs 20 bytes (first and last row, row count), a row 8 (its chain link): the
#: sorted segments cost 16 bytes a row.
_SLOTS_PER_KEY = 4
_FREE_SLOTS = 1 << 16

#: A direct index follows chains of at most this many rows per key (removed ones included);
#: a longer one sends the store to the sorted segments for good.
_MOST_PER_KEY = 32

_NONE = np.zeros(0, np.int64)


class _Direct:
    """Exact integer key codes in a compact range, indexed by direct address.

    ``head[code - lo]`` is the position of the first row with that code (-1: none), ``tail``
    the last, ``count`` how many rows; ``chain[position]`` the next row of the same code
    (positions ascending, -1 at the end). A unique key is one gather; appending a batch of
    new distinct codes is a few scatters, no sort.
    """

    __slots__ = ("chain", "count", "depth", "head", "hi", "keys", "lo", "tail")

    def __init__(self) -> None:
        self.lo, self.hi = 0, -1  # the codes seen: lo..hi (none yet when hi < lo)
        self.head, self.tail = _NONE, _NONE
        self.count: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self.chain = _NONE
        self.keys = 0  # slots holding a row
        self.depth = 0  # most rows of one slot

    def fits(self, codes: Codes, more: int) -> bool:
        """Whether ``codes`` (exact) keep the range compact with up to ``more`` new keys."""
        if codes.size == 0:
            return True
        lo, hi = int(codes.min()), int(codes.max())
        if self.hi >= self.lo:
            lo, hi = min(lo, self.lo), max(hi, self.hi)
        return hi - lo + 1 <= _SLOTS_PER_KEY * (self.keys + more) + _FREE_SLOTS

    def sparse(self) -> bool:
        """Whether the range holds too many slots per key, or a chain is too long."""
        slots = self.hi - self.lo + 1
        return self.depth > _MOST_PER_KEY or slots > _SLOTS_PER_KEY * self.keys + _FREE_SLOTS

    def _reserve(self, lo: int, hi: int, size: int) -> None:
        """Make room for codes ``lo..hi`` and positions below ``size``."""
        if self.hi < self.lo:  # empty: start at lo
            self.lo = self.hi = lo
        hi = max(hi, self.hi)
        new_lo = min(lo, self.lo)
        shift = self.lo - new_lo
        need = hi - new_lo + 1
        if shift or need > self.head.size:
            cap = max(need, shift + self.head.size * 3 // 2)  # amortized, 20 bytes a slot
            head, tail = np.full(cap, -1, np.int64), np.full(cap, -1, np.int64)
            count = np.zeros(cap, np.int32)
            n = self.head.size
            head[shift : shift + n], tail[shift : shift + n] = self.head, self.tail
            count[shift : shift + n] = self.count
            self.head, self.tail, self.count, self.lo = head, tail, count, new_lo
        self.hi = hi
        if size > self.chain.size:
            chain = np.full(max(size, 2 * self.chain.size), -1, np.int64)
            chain[: self.chain.size] = self.chain
            self.chain = chain

    def add(self, codes: Codes, positions: Positions) -> None:
        """Index rows at ``positions`` (ascending, after every indexed one) by ``codes``."""
        if codes.size == 0:
            return
        self._reserve(int(codes.min()), int(codes.max()), int(positions[-1]) + 1)
        slot = codes - self.lo
        if not (self.head[slot] >= 0).any():  # new keys only: distinct if no write is lost
            self.head[slot] = positions
            if bool((self.head[slot] == positions).all()):
                self.tail[slot] = positions
                self.count[slot] = 1
                self.keys += slot.size
                self.depth = max(self.depth, 1)
                return
            self.head[slot] = -1
        order = stable_argsort(slot)
        slot, positions = slot[order], positions[order]
        same = slot[1:] == slot[:-1]
        self.chain[positions[:-1][same]] = positions[1:][same]
        starts = np.flatnonzero(np.concatenate(([True], ~same)))
        ends = np.append(starts[1:], slot.size) - 1
        key = slot[starts]
        last = self.tail[key]
        linked = last >= 0
        self.chain[last[linked]] = positions[starts[linked]]
        self.head[key[~linked]] = positions[starts[~linked]]
        self.tail[key] = positions[ends]
        had = self.count[key]
        self.keys += int(np.count_nonzero(had == 0))
        now = had + (ends - starts + 1).astype(np.int32)
        self.count[key] = now
        self.depth = max(self.depth, int(now.max()))

    def find(self, rows: Positions, needles: Codes) -> tuple[Positions, Positions]:
        """Pairs of ``rows`` (ascending) and positions of equal codes, by row, then position."""
        inside = (needles >= self.lo) & (needles <= self.hi)
        if not inside.all():
            rows, needles = rows[inside], needles[inside]
        first = self.head[needles - self.lo]
        hit = first >= 0
        rows, at = rows[hit], first[hit]
        if self.depth <= 1 or rows.size == 0:
            return rows, at
        got_rows, got_at = [rows], [at]
        while True:
            at = self.chain[at]
            more = at >= 0
            if not more.any():
                break
            rows, at = rows[more], at[more]
            got_rows.append(rows)
            got_at.append(at)
        if len(got_rows) == 1:
            return got_rows[0], got_at[0]
        b, at = np.concatenate(got_rows), np.concatenate(got_at)
        order = stable_argsort(b)  # a row's matches came level by level: positions ascending
        return b[order], at[order]


class _Segment:
    """Consecutive rows (one chunk) and their key index: codes sorted, with row offsets."""

    __slots__ = ("base", "codes", "frame", "offsets")

    def __init__(self, base: int, frame: pl.DataFrame, codes: Codes, offsets: Positions) -> None:
        self.base, self.frame, self.codes, self.offsets = base, frame, codes, offsets


class Tombstones:
    """Row positions handed out in order, each with a flag once its row is removed.

    The base of the stores of rows that remove rows by flagging them and drop them in a
    :meth:`compact` once they are more than half.

    Examples
    --------
    >>> t = Tombstones()
    >>> t.added(3)
    >>> t.remove(np.array([1]), compact=False)
    >>> t.height, t.live_before(3)
    (2, 2)
    """

    def __init__(self) -> None:
        self.size = 0  # positions handed out (live and removed rows)
        # The flags: a view of the first ``size`` entries of a buffer grown by doubling.
        self._flags: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)
        self.dead: npt.NDArray[np.bool_] = self._flags
        self.n_dead = 0

    @property
    def height(self) -> int:
        """Live rows."""
        return self.size - self.n_dead

    def added(self, rows: int) -> None:
        """``rows`` more positions were handed out."""
        self.size += rows
        if self.size > self._flags.size:
            grown = np.zeros(max(self.size, 2 * self._flags.size), np.bool_)
            grown[: self.dead.size] = self.dead
            self._flags = grown
        self.dead = self._flags[: self.size]

    def remove(self, positions: Positions, *, compact: bool = True) -> None:
        """Flag the rows at ``positions`` as removed.

        Once more than half of the rows are removed, the store is rebuilt with the live rows
        (:meth:`compact`: positions change), unless ``compact`` is false (the caller then
        compacts when it can follow the change of positions, see :meth:`live_before`).
        """
        if positions.size == 0:
            return
        self.dead[positions] = True
        self.n_dead = int(np.count_nonzero(self.dead))
        if compact and self.n_dead * 2 > self.size:
            self.compact()

    def compact(self) -> None:
        """Keep the live rows only (the row at ``p`` moves to ``live_before(p)``)."""
        raise NotImplementedError

    def live_before(self, position: int) -> int:
        """How many live rows have a position below ``position``."""
        return position - int(np.count_nonzero(self.dead[:position]))


def _take(frame: pl.DataFrame, rows: Positions) -> pl.DataFrame:
    return frame.select(pl.all().gather(pl.Series(rows, dtype=pl.Int64)))


class KeyedRows(Tombstones):
    """Rows of one join side with a key index: append, probe, gather, remove.

    Rows live in segments: a chunk of consecutive positions with its sorted key codes. A new
    batch is a segment; it is merged into the previous one while that one is at most twice its
    size (O(log n) segments; a row is copied O(log n) times over its life). A probe searches
    every segment's codes and gathers from that segment's chunk.

    Examples
    --------
    >>> rows = KeyedRows(["k"])
    >>> rows.append(pl.DataFrame({"k": [1, 2, 2], "v": ["a", "b", "c"]}))
    >>> rows.append(pl.DataFrame({"k": [3, 2], "v": ["d", "e"]}))
    >>> batch = pl.DataFrame({"k": [2, 9]})
    >>> probe, found, matched = rows.probe(batch)
    >>> sorted(found["v"].to_list()), sorted(set(probe.tolist()))
    (['b', 'c', 'e'], [0])
    >>> rows.remove(matched)
    >>> rows.live().sort("k")["v"].to_list()
    ['a', 'd']
    """

    def __init__(
        self, keys: list[str], *, nulls_equal: bool = False, contiguous: list[str] | None = None
    ) -> None:
        super().__init__()
        self.keys = keys
        self.nulls_equal = nulls_equal
        # The columns a merge of segments copies into one piece of memory (all by default);
        # the others keep their pieces (each row stays where it was written).
        self.contiguous = contiguous
        self.segments: list[_Segment] = []
        self.kind: CodeKind = "value"
        # Exact codes in a compact range are indexed by direct address (the segments then
        # hold no codes); None: the segments' sorted codes are the index. A store that left
        # it (sparse codes, long chains, hashes) does not try it again: its rows would leave
        # it again after each compaction, at the cost of indexing them twice.
        self.direct: _Direct | None = None
        self.direct_ok = True

    def append(
        self,
        rows: pl.DataFrame,
        *,
        codes: tuple[Codes, npt.NDArray[np.bool_], CodeKind] | None = None,
    ) -> None:
        """Add ``rows`` (their positions follow the existing ones) and index their keys.

        ``codes``: the rows' :func:`key_codes` (with this buffer's ``nulls_equal``), when the
        caller has them.
        """
        if rows.height == 0:
            return
        if codes is None:
            codes = key_codes(rows, self.keys, nulls_equal=self.nulls_equal)
        all_codes, valid, kind = codes
        if self.size and kind != self.kind:
            msg = f"key columns {self.keys} changed type inside a join buffer"
            raise TypeError(msg)
        self.kind = kind
        offsets = np.flatnonzero(valid).astype(np.int64)
        indexed = all_codes[offsets]
        if not self.size and self.direct_ok:
            self.direct = _Direct()
        direct = self.direct
        if direct is not None and not (
            codes_exact(indexed, kind, nulls_equal=self.nulls_equal)
            and direct.fits(indexed, indexed.size)
        ):
            self._to_sorted()
            direct = None
        if direct is not None:
            direct.add(indexed, offsets + self.size)
            seg = _Segment(self.size, rows, _NONE, _NONE)
        else:
            order = stable_argsort(indexed)
            seg = _Segment(self.size, rows, indexed[order], offsets[order])
        self.added(rows.height)
        while self.segments and self.segments[-1].frame.height <= 2 * seg.frame.height:
            prev = self.segments.pop()
            frame = self._joined(prev.frame, seg.frame)
            if direct is not None:
                seg = _Segment(prev.base, frame, _NONE, _NONE)
                continue
            shift = seg.base - prev.base
            merged = np.concatenate([prev.codes, seg.codes])
            order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
            offsets = np.concatenate([prev.offsets, seg.offsets + shift])[order]
            seg = _Segment(prev.base, frame, merged[order], offsets)
        self.segments.append(seg)
        if direct is not None and direct.sparse():
            self._to_sorted()

    def _to_sorted(self) -> None:
        """Leave the direct index: every segment gets its sorted codes."""
        if self.direct is None:
            return
        self.direct, self.direct_ok = None, False
        for seg in self.segments:
            codes, valid, _ = key_codes(seg.frame, self.keys, nulls_equal=self.nulls_equal)
            offsets = np.flatnonzero(valid).astype(np.int64)
            indexed = codes[offsets]
            order = stable_argsort(indexed)
            seg.codes, seg.offsets = indexed[order], offsets[order]

    def _joined(self, first: pl.DataFrame, second: pl.DataFrame) -> pl.DataFrame:
        keep = self.contiguous
        frame = pl.concat([first, second], how="vertical_relaxed", rechunk=keep is None)
        if keep is None:
            return frame
        return frame_of([c.rechunk() if c.name in keep else c for c in frame.get_columns()])

    def probe(
        self,
        batch: pl.DataFrame,
        columns: list[str] | None = None,
        *,
        codes: tuple[Codes, npt.NDArray[np.bool_]] | None = None,
    ) -> tuple[Positions, pl.DataFrame, Positions]:
        """Every pair of a ``batch`` row and a live buffered row with equal keys.

        Returns the pairs' ``batch`` rows, their buffered rows (a frame, same order) and the
        buffered rows' positions (for :meth:`remove`). ``batch``'s key columns must have the
        buffered rows' types. ``columns``: gather only these columns of the buffered rows
        (the key columns first, always). ``codes``: the batch's codes and which rows to
        probe, when the caller has them (:func:`key_codes` with this buffer's ``nulls_equal``;
        a row left out is not probed, as a row with a null key).
        """
        none = np.zeros(0, np.int64)
        cols = (
            None if columns is None else [*self.keys, *(c for c in columns if c not in self.keys)]
        )
        if batch.height == 0 or not self.segments:
            return none, self._empty(cols), none
        if codes is None:
            all_codes, valid, _ = key_codes(batch, self.keys, nulls_equal=self.nulls_equal)
        else:
            all_codes, valid = codes
        rows = np.flatnonzero(valid)
        needles = all_codes[rows]
        if self.direct is not None:
            return self._gathered(*self.direct.find(rows, needles), cols)
        # Sorted needles: each binary search starts where the previous one ended (far fewer
        # cache misses in a large segment); the matches go back to the batch's row order
        # (a row's matches are found together, so the order of equal needles does not matter).
        by_code = np.argsort(needles)
        rows, needles = rows[by_code], needles[by_code]
        confirm = not codes_exact(needles, self.kind, nulls_equal=self.nulls_equal)
        got_rows: list[Positions] = []
        got_pos: list[Positions] = []
        frames: list[pl.DataFrame] = []
        for seg in self.segments:
            if seg.codes.size == 0:  # only rows with a null key
                continue
            lo = np.searchsorted(seg.codes, needles, side="left")
            hit = seg.codes[np.minimum(lo, seg.codes.size - 1)] == needles
            if not hit.any():
                continue
            lo, hit_codes, hit_rows = lo[hit], needles[hit], rows[hit]
            count = np.searchsorted(seg.codes, hit_codes, side="right") - lo
            total = int(count.sum())
            if total == lo.size:  # one match per probe row
                b, local = hit_rows, seg.offsets[lo]
            else:
                first = np.repeat(lo, count)
                step = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
                b, local = np.repeat(hit_rows, count), seg.offsets[first + step]
            back = stable_argsort(b)
            b, local = b[back], local[back]
            if self.n_dead:
                alive = ~self.dead[local + seg.base]
                b, local = b[alive], local[alive]
            found = _take(seg.frame if cols is None else seg.frame.select(cols), local)
            if confirm:
                same = self._same_keys(batch, b, found)
                b, local, found = b[same], local[same], found.filter(pl.Series(same))
            if b.size:
                got_rows.append(b)
                got_pos.append(local + seg.base)
                frames.append(found)
        if not got_rows:
            return none, self._empty(cols), none
        found = concat(frames)
        return np.concatenate(got_rows), found, np.concatenate(got_pos)

    def pairs(self, batch: pl.DataFrame) -> tuple[Positions, Positions]:
        """The pairs of :meth:`probe` without their rows: ``batch`` rows and the positions
        of the live buffered rows with equal keys (a direct index gathers nothing).

        Examples
        --------
        >>> rows = KeyedRows(["k"])
        >>> rows.append(pl.DataFrame({"k": [5, 6, 5]}))
        >>> [p.tolist() for p in rows.pairs(pl.DataFrame({"k": [6, 7, 5]}))]
        [[0, 2, 2], [1, 0, 2]]
        """
        if self.direct is None or batch.height == 0:
            b, _, at = self.probe(batch, [])
            return b, at
        all_codes, valid, _ = key_codes(batch, self.keys, nulls_equal=self.nulls_equal)
        rows = np.flatnonzero(valid)
        b, at = self.direct.find(rows, all_codes[rows])
        if self.n_dead:
            alive = ~self.dead[at]
            b, at = b[alive], at[alive]
        return b, at

    def _gathered(
        self, b: Positions, at: Positions, cols: list[str] | None
    ) -> tuple[Positions, pl.DataFrame, Positions]:
        """The live ones of the pairs (batch row, position), their rows gathered segment by
        segment (pairs ordered by segment, then as given)."""
        if self.n_dead:
            alive = ~self.dead[at]
            b, at = b[alive], at[alive]
        if b.size == 0:
            return _NONE, self._empty(cols), _NONE
        order, found = self._by_segment(at, cols)
        if order is not None:
            b, at = b[order], at[order]
        return b, found, at

    def _by_segment(
        self, at: Positions, cols: list[str] | None
    ) -> tuple[Positions | None, pl.DataFrame]:
        """The rows at positions ``at`` (some), gathered segment by segment, and the order
        of ``at`` they come in (None: as given)."""
        segments = self.segments
        order = None
        if len(segments) > 1:
            bases = np.fromiter((seg.base for seg in segments), np.int64, len(segments))
            which = (np.searchsorted(bases, at, side="right") - 1).astype(np.int16)
            if not bool((which[1:] >= which[:-1]).all()):
                order = np.argsort(which, kind="stable")  # a radix sort of small integers
                at = at[order]
            ends = np.cumsum(np.bincount(which, minlength=len(segments)))
        else:
            ends = np.array([at.size])
        frames: list[pl.DataFrame] = []
        start = 0
        for seg, end in zip(segments, ends.tolist(), strict=True):
            if end > start:
                frame = seg.frame if cols is None else seg.frame.select(cols)
                frames.append(_take(frame, at[start:end] - seg.base))
            start = end
        return order, concat(frames)

    def take(self, positions: Positions, columns: list[str] | None = None) -> pl.DataFrame:
        """The buffered rows at ``positions`` (live or removed), in that order.

        ``columns``: only these (all by default). Positions as :meth:`probe` returns them
        (ordered by segment) are gathered without reordering.

        Examples
        --------
        >>> rows = KeyedRows(["k"])
        >>> rows.append(pl.DataFrame({"k": [1, 2], "v": ["a", "b"]}))
        >>> rows.take(np.array([1, 0, 1]), ["v"])["v"].to_list()
        ['b', 'a', 'b']
        """
        if positions.size == 0:
            return self._empty(columns)
        order, found = self._by_segment(positions, columns)
        if order is None:
            return found
        back = np.empty(order.size, np.int64)
        back[order] = np.arange(order.size)
        return _take(found, back)

    def _same_keys(
        self, batch: pl.DataFrame, b: Positions, found: pl.DataFrame
    ) -> npt.NDArray[np.bool_]:
        theirs = _take(batch.select(self.keys), b)
        eq = pl.Series.eq_missing if self.nulls_equal else pl.Series.__eq__
        same = pl.DataFrame(
            [eq(found.get_column(k), theirs.get_column(k)).alias(k) for k in self.keys]
        )
        flags = same.select(pl.all_horizontal(pl.all()).fill_null(False)).to_series()
        return np.asarray(flags.to_numpy(), np.bool_)

    def _empty(self, columns: list[str] | None = None) -> pl.DataFrame:
        if not self.segments:
            return pl.DataFrame()
        frame = self.segments[0].frame
        return (frame if columns is None else frame.select(columns)).clear()

    def compact(self) -> None:
        """Rebuild the buffer with the live rows only (the row at ``p`` moves to ``live_before(p)``).

        The live rows are gathered, not filtered: a filtered text column would still hold the
        removed rows' text (Polars string views point into the buffers they came from).
        """
        if not self.segments or not self.n_dead:
            return
        rows = concat([seg.frame for seg in self.segments])
        self.restore(_take(rows, np.flatnonzero(~self.dead)))

    def live_parts(self, position: int = 0) -> Iterator[pl.DataFrame]:
        """The live rows at ``position`` and after, in the order they came: a frame per segment."""
        for seg in self.segments:
            end = seg.base + seg.frame.height
            if end <= position:
                continue
            start = max(position - seg.base, 0)
            part = seg.frame.slice(start) if start else seg.frame
            if self.n_dead:
                part = part.filter(pl.Series(~self.dead[seg.base + start : end]))
            if part.height:
                yield part

    def live_since(self, position: int) -> pl.DataFrame:
        """The live rows at ``position`` and after, in the order they came."""
        frames = list(self.live_parts(position))
        if not frames:
            return self._empty()
        return concat(frames)

    def live(self) -> pl.DataFrame:
        """The rows not removed, in the order they came."""
        if not self.segments:
            return pl.DataFrame()
        frames = [seg.frame for seg in self.segments]
        frame = concat(frames)
        return frame.filter(pl.Series(~self.dead)) if self.n_dead else frame

    def restore(self, rows: pl.DataFrame | None) -> None:
        """Replace the buffer with ``rows`` (indexed anew)."""
        self.segments, self.size = [], 0
        self._flags = self.dead = np.zeros(0, np.bool_)
        self.n_dead, self.kind = 0, "value"
        self.direct = None
        if rows is not None and rows.height:
            self.append(rows)


class LogRows(Protocol):
    """What :class:`ChunkLog` needs of a store: positions, tombstones and the live rows."""

    size: int
    n_dead: int
    dead: npt.NDArray[np.bool_]

    @property
    def height(self) -> int:
        """Live rows."""
        ...

    def live_since(self, position: int) -> pl.DataFrame:
        """The live rows at ``position`` and after, in order."""
        ...

    def live(self) -> pl.DataFrame:
        """Every live row, in order."""
        ...

    def remove(self, positions: Positions, *, compact: bool = True) -> None:
        """Flag the rows at ``positions`` as removed."""
        ...

    def live_before(self, position: int) -> int:
        """How many live rows have a position below ``position``."""
        ...

    def compact(self) -> None:
        """Keep the live rows only."""
        ...


class ChunkLog:
    """Incremental snapshots of a :class:`KeyedRows`: one chunk per snapshot of what is new.

    The chunks hold, in order, every row appended to the store until the last snapshot (rows
    removed before a snapshot took them are left out; rows removed after it stay in their
    chunk, and the owner must be able to tell them on restore). A snapshot makes one chunk
    of the live rows appended since the previous one and refers to the earlier chunks, so a
    checkpoint writes what is new; once the chunks hold more than twice the live rows plus
    ``slack``, or number more than ``most``, the live rows replace them as one chunk (a
    compaction, amortized: a store that only grows is written again once in ``most``
    snapshots, and a restore reads at most ``most`` chunks).

    Removals go through :meth:`remove`, which compacts the store itself and follows the
    positions (``mark``: the first row not yet in a chunk); it returns which rows were live
    when it compacted, so an owner with data per position can follow as well.

    Examples
    --------
    >>> rows, log = KeyedRows(["k"]), ChunkLog(slack=0)
    >>> rows.append(pl.DataFrame({"k": [1, 2]}))
    >>> first = log.snapshot(rows)
    >>> log.snapshot(rows) == first  # nothing new: the same chunk
    True
    >>> rows.append(pl.DataFrame({"k": [3]}))
    >>> len(log.snapshot(rows)), log.rows
    (2, 3)
    >>> log.remove(rows, np.array([0, 2])).tolist()  # past half removed: compacted
    [False, True, False]
    >>> len(log.snapshot(rows)), log.rows  # more than twice the live rows: one chunk of them
    (1, 1)
    """

    def __init__(self, *, slack: int = 65_536, most: int = 32) -> None:
        self.slack = slack
        self.most = most
        self.chunks: list[SnapshotChunk] = []
        #: Rows in the chunks (live or removed since).
        self.rows = 0
        #: Store position of the first row not in a chunk.
        self.mark = 0

    def snapshot(self, store: LogRows) -> list[SnapshotChunk]:
        """The chunks of the store: the earlier ones and, if rows came since, one of those."""
        new = store.live_since(self.mark)
        self.mark = store.size
        if new.height:
            self.chunks.append(frame_chunk(new))
            self.rows += new.height
        live = store.height
        if self.rows > 2 * live + self.slack or len(self.chunks) > self.most:
            self.chunks = [frame_chunk(store.live())] if live else []
            self.rows = live
        return list(self.chunks)

    def remove(self, store: LogRows, positions: Positions) -> npt.NDArray[np.bool_] | None:
        """Remove rows from ``store``, compacting it (and moving the mark) past half dead.

        Returns None, or after a compaction which positions were live before it (the row at
        live position ``p`` moved to the number of live positions before ``p``).
        """
        store.remove(positions, compact=False)
        if store.n_dead * 2 <= store.size:
            return None
        self.mark = store.live_before(self.mark)
        alive = ~store.dead
        store.compact()
        return alive

    def restored(self, store: LogRows, parts: list[SnapshotChunk | bytes], rows: int) -> None:
        """After ``store`` was restored from ``parts`` (``rows`` rows in all): go on referring
        to them if they are chunks; else the next snapshot writes the store anew."""
        shared = all(isinstance(p, SnapshotChunk) for p in parts)
        self.chunks = [p for p in parts if isinstance(p, SnapshotChunk)] if shared else []
        self.rows = rows if shared else 0
        self.mark = store.size if shared else 0
