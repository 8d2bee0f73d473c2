"""Columnar distinct state: the (key id, value) pairs of a keyed ``n_unique``.

Each pair is one ``int64`` code, ``key_id << bits | slot``, kept in a sorted NumPy array: a
batch's new pairs are found with ``searchsorted`` and merged in with one ``insert``, so the
work per batch is vectorized and no Python object is made per record or per value.

The slot of a value is ``value - base + 1`` (``0`` is null) for values that are integers once
read physically (integers, booleans, dates, times, durations, and floats by their bits) and
whose range fits next to the key id. Other values (strings, or integers spread too widely) get
dense ids from a value dictionary (a :class:`~tideflow.runtime._keyed.KeyIndex`, one look-up
per distinct value of a batch) and their slot is ``id + 1``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import polars as pl

from tideflow._errors import StateError

__all__ = ["DistinctPairs", "family_counts", "member_pairs"]

_MAX_BITS = 62  # key bits + slot bits; codes stay positive int64

#: A deferred pair set deduplicates its pending codes once they number at least this many and
#: at least as many as the pairs it holds (so each code is sorted and looked up about once).
PENDING_MIN = 1 << 20

_NONE = np.zeros(0, dtype=np.int64)


def _physical(values: pl.Series) -> np.ndarray | None:
    """``int64`` codes of ``values`` (nulls as 0; see :func:`_nulls`), or None for other types."""
    dtype = values.dtype
    if dtype.is_float():
        arr = values.cast(pl.Float64).fill_null(0.0).to_numpy() + 0.0  # -0.0 -> 0.0
        arr = np.where(np.isnan(arr), np.nan, arr)  # one NaN
        return arr.view(np.int64)
    if dtype == pl.Boolean:
        return values.fill_null(False).cast(pl.Int64).to_numpy()
    if dtype.is_integer() or dtype.is_temporal():
        phys = values if dtype.is_integer() else values.to_physical()
        if phys.null_count():
            phys = phys.fill_null(0)
        return phys.to_numpy().astype(np.int64, copy=False)
    return None


def _from_physical(codes: np.ndarray, dtype: pl.DataType, name: str) -> pl.Series:
    """Values of ``dtype`` back from their ``int64`` codes (inverse of :func:`_physical`)."""
    if dtype.is_float():
        return pl.Series(name, codes.view(np.float64)).cast(dtype)
    if dtype == pl.Boolean:
        return pl.Series(name, codes != 0)
    if dtype.is_integer():
        if dtype == pl.UInt64:
            return pl.Series(name, codes.view(np.uint64))
        return pl.Series(name, codes).cast(dtype)
    phys = pl.Series(name, codes).cast(pl.Series(dtype=dtype).to_physical().dtype)
    return phys.cast(dtype)


class DistinctPairs:
    """Distinct (key id, value) pairs of one aggregate; :meth:`add` returns the new ones.

    The pair codes are kept as a few immutable sorted runs (an in-memory LSM tree): a batch's
    new pairs become one small run, and a run is merged into the one before it once it holds
    at least half as many codes, so the runs shrink geometrically (about log2 of the state's
    size over a batch's). A batch's pairs are looked up by ``searchsorted`` in each run; no
    array the size of the state is copied per batch.

    After :meth:`track`, the codes added since the last :meth:`take_new` are kept aside as
    well, so a checkpoint can write only what is new (see
    :meth:`~tideflow.runtime._keyed.AggState.snapshot`).

    With ``deferred=True`` (an aggregation that emits only at the end), :meth:`add` only
    appends a batch's codes to a pending list; they are deduplicated together, against the
    runs and among themselves, by :meth:`settle`, which :meth:`add` calls itself once the
    pending codes number at least :data:`PENDING_MIN` and at least the pairs held (memory
    stays within about twice the state). One sort of many batches' codes costs far less than
    a binary search of every batch in the runs. :meth:`add` then returns the key ids of the
    new pairs of every batch settled, and :meth:`settle` those of the rest.

    Examples
    --------
    >>> import numpy as np
    >>> import polars as pl
    >>> d = DistinctPairs()
    >>> d.add(np.array([0, 0, 1, 0]), pl.Series([5, 5, 5, None])).tolist()
    [0, 0, 1]
    >>> d.add(np.array([0, 1]), pl.Series([5, 7])).tolist()
    [1]
    >>> d.frame().sort("__id", "value").rows()
    [(0, None), (0, 5), (1, 5), (1, 7)]
    >>> lazy = DistinctPairs(deferred=True)
    >>> lazy.add(np.array([0, 0, 1]), pl.Series([5, 5, 5])).tolist()
    []
    >>> lazy.add(np.array([1, 1]), pl.Series([5, 6])).tolist()
    []
    >>> sorted(lazy.settle().tolist())
    [0, 1, 1]
    """

    def __init__(self, *, deferred: bool = False) -> None:
        #: Sorted, distinct, disjoint int64 code arrays; each at least twice the next.
        self.runs: list[np.ndarray] = []
        self.bits = 1  # slot bits
        self.base = 0  # the value of slot 1 (range mode)
        self.ranged = False  # base and bits set by a first value
        self.dtype: pl.DataType | None = None
        #: The value dictionary (None: range mode); its column ``v`` is the value or its code.
        self.dictionary: Any = None
        #: Codes added since the last :meth:`take_new` (None: not tracked).
        self.new: list[np.ndarray] | None = None
        self.deferred = deferred
        #: Codes added but not deduplicated yet (``deferred``; see :meth:`settle`).
        self.pending: list[np.ndarray] = []
        self._pending_count = 0
        self._top_key = 0  # at least the largest key id of any code
        #: Changes whenever the codes of pairs change (a wider range, a dictionary, new ids).
        self.epoch = 0

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    @property
    def codes(self) -> np.ndarray:
        """Every pair code, once, in no particular order (one array; made on each call).

        The runs are disjoint, so they are only put side by side: a snapshot of the whole
        state needs the set, and sorting it cost a third of writing it.
        """
        if not self.runs:
            return np.zeros(0, dtype=np.int64)
        if len(self.runs) == 1:
            return self.runs[0]
        return np.concatenate(self.runs)

    # -- codes ----------------------------------------------------------------------------
    def _arrays(self) -> list[np.ndarray]:
        """Every code array: the runs, the new codes kept aside, then the pending codes."""
        return [*self.runs, *(self.new or []), *self.pending]

    def _remap(self, fn: Any, *, sort: bool) -> None:
        """Replace every code array ``a`` by ``fn(a)`` (the runs sorted again when ``sort``)."""
        n_runs, n_new = len(self.runs), len(self.new or [])
        self.epoch += 1
        out = [fn(a) for a in self._arrays()]  # in the order of _arrays (see _recode)
        if sort:
            out[:n_runs] = [np.sort(a) for a in out[:n_runs]]
        self.runs = [a for a in out[:n_runs] if len(a)]
        if self.new is not None:
            self.new = out[n_runs : n_runs + n_new]
        self.pending = out[n_runs + n_new :]
        self._pending_count = sum(len(a) for a in self.pending)

    def _slots(
        self, values: pl.Series, raw: np.ndarray | None, nulls: np.ndarray, key_bits: int
    ) -> np.ndarray:
        """Slots of ``values`` under the current encoding (widened or switched if needed)."""
        if self.dictionary is None and raw is not None:
            some = int(nulls.sum()) if values.null_count() else 0
            top = self.base + (1 << self.bits) - 2
            lo, hi = self.base, top
            if some < len(raw):  # the range of the values that are not null, without a copy
                ok = ~nulls if some else True
                lo = int(np.min(raw, where=ok, initial=np.iinfo(np.int64).max))
                hi = int(np.max(raw, where=ok, initial=np.iinfo(np.int64).min))
                if not self.ranged:
                    self.ranged, self.base, top = True, lo, lo - 1
            if lo < self.base or hi > top or key_bits + self.bits > _MAX_BITS:
                self._recode(min(lo, self.base), max(hi, top), key_bits)
            if self.dictionary is None:
                slots: np.ndarray = raw - self.base  # base - 1 may not fit an int64
                slots += 1
                if some:
                    slots[nulls] = 0
                return slots
        return self._dict_slots(values, raw, nulls)

    def _dict_slots(
        self, values: pl.Series, raw: np.ndarray | None, nulls: np.ndarray
    ) -> np.ndarray:
        """Slots ``1 + id`` of the values in the dictionary (new values get new ids)."""
        from tideflow.runtime._keyed import KeyIndex

        if self.dictionary is None:
            self.dictionary = KeyIndex(("v",))
        out = np.zeros(len(values), dtype=np.int64)
        keep = ~nulls
        if keep.any():
            col = pl.Series("v", raw) if raw is not None else values.alias("v")
            present = pl.DataFrame([col]).filter(pl.Series(keep))
            distinct = present.unique()
            ids, _ = self.dictionary.lookup(distinct)
            slot = distinct.with_columns(pl.Series("__s", ids + 1))
            got = present.join(slot, on="v", how="left", maintain_order="left", nulls_equal=True)
            out[keep] = got.get_column("__s").to_numpy()
        return out

    def _recode(self, lo: int, hi: int, key_bits: int) -> None:
        """Widen the range mode to hold values in ``[lo, hi]``, or switch to the dictionary."""
        need = int(hi - lo + 1).bit_length()
        room = _MAX_BITS - key_bits
        old_bits, old_base = self.bits, self.base
        mask = (1 << old_bits) - 1
        if need <= room:
            bits = min(need + 2, room)  # headroom: fewer re-encodings
            shift = old_base - lo

            def widen(codes: np.ndarray) -> np.ndarray:
                slots = codes & mask
                new = np.where(slots == 0, 0, slots + shift)
                return ((codes >> old_bits) << bits) | new

            self._remap(widen, sort=False)  # the order within a key is kept
            self.bits, self.base = bits, lo
            return
        from tideflow.runtime._keyed import KeyIndex

        self.dictionary = KeyIndex(("v",))
        arrays = self._arrays()
        slots = [
            self._dict_slots(pl.Series("v", (a & mask) - 1 + old_base), None, (a & mask) == 0)
            for a in arrays
        ]
        top = max((int(s.max()) for s in slots if len(s)), default=0)
        self.bits = max(1, top.bit_length())
        it = iter(slots)
        self._remap(lambda codes: ((codes >> old_bits) << self.bits) | next(it), sort=True)

    # -- the state ------------------------------------------------------------------------
    def add(self, ids: np.ndarray, values: pl.Series, *, defer: bool | None = None) -> np.ndarray:
        """Fold in the pairs ``(ids[i], values[i])``; return the key ids of the new ones.

        A key id appears once per new distinct value of that key (count them with
        ``np.bincount``). A deferred set (or ``defer=True``) returns the new pairs of the
        pending codes it settled, if it settled them (see :meth:`settle`); ``defer=False``
        inserts at once.
        """
        if len(values) == 0:
            return _NONE
        codes = self._codes(np.asarray(ids, dtype=np.int64), values)
        if not (self.deferred if defer is None else defer):
            return self._insert(_sorted_unique(codes)) >> self.bits
        self.pending.append(codes)
        self._pending_count += len(codes)
        if self._pending_count >= max(PENDING_MIN, len(self)):
            return self.settle()
        return _NONE

    def settle(self) -> np.ndarray:
        """Deduplicate the pending codes into the runs; return the key ids of the new pairs."""
        if not self.pending:
            return _NONE
        pending = self.pending
        codes = pending[0] if len(pending) == 1 else np.concatenate(pending)
        self.pending, self._pending_count = [], 0
        return self._insert(_sorted_unique(codes)) >> self.bits

    def _codes(self, ids: np.ndarray, values: pl.Series) -> np.ndarray:
        """The pair codes of ``(ids[i], values[i])`` (the encoding widened or switched first)."""
        if self.dtype is None or self.dtype == pl.Null:
            self.dtype = values.dtype
        if values.null_count():
            nulls = values.is_null().to_numpy()
        else:
            nulls = np.zeros(len(values), dtype=np.bool_)
        self._top_key = max(self._top_key, int(ids.max()))
        key_bits = self._top_key.bit_length()
        slots = self._slots(values, _physical(values), nulls, key_bits)
        top = int(slots.max())
        if top >= (1 << self.bits):  # the dictionary grew
            old_bits, bits, mask = self.bits, top.bit_length(), (1 << self.bits) - 1
            self._remap(lambda c: ((c >> old_bits) << bits) | (c & mask), sort=False)
            self.bits = bits
        if key_bits + self.bits > _MAX_BITS:
            msg = (
                f"n_unique: {int(ids.max()) + 1} keys with {top} distinct values do not fit "
                "the 62-bit pair codes of its state; count distinct values of fewer keys"
            )
            raise StateError(msg)
        codes: np.ndarray = (ids << self.bits) | slots
        return codes

    def _insert(self, batch: np.ndarray) -> np.ndarray:
        """Add the sorted distinct codes ``batch``; return those that were not there."""
        for run in sorted(self.runs, key=len, reverse=True):
            if not len(batch):
                break
            pos = np.searchsorted(run, batch)
            np.minimum(pos, len(run) - 1, out=pos)
            batch = batch[run[pos] != batch]
        if len(batch):
            self.runs.append(batch)
            if self.new is not None:
                self.new.append(batch)
            runs = self.runs
            while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
                merged = np.concatenate((runs[-2], runs.pop()))
                merged.sort(kind="stable")  # two sorted runs: a linear merge, in place
                runs[-1] = merged
        return batch

    def track(self) -> None:
        """Keep the codes added from now on aside, for :meth:`take_new`."""
        self.new = []

    def take_new(self) -> np.ndarray:
        """The codes added since :meth:`track` or the previous call (then forgotten)."""
        got = self.new or []
        self.new = []
        if not got:
            return np.zeros(0, dtype=np.int64)
        return got[0] if len(got) == 1 else np.concatenate(got)

    def encoding(self) -> dict[str, Any]:
        """How codes stand for pairs, as plain data (see :meth:`decoded`).

        ``bits`` (slot bits), ``base`` (the value of slot 1 in range mode), ``ranged``,
        ``dictionary`` (slots are value ids, the values kept apart) and ``dtype`` (Arrow IPC
        of an empty frame with the values' type as column ``value``).
        """
        dtype = self.dtype if self.dtype is not None else pl.Null()
        buf = io.BytesIO()
        pl.DataFrame(schema={"value": dtype}).write_ipc(buf)
        return {
            "bits": self.bits,
            "base": self.base,
            "ranged": self.ranged,
            "dictionary": self.dictionary is not None,
            "dtype": buf.getvalue(),
        }

    @classmethod
    def decoded(
        cls,
        encoding: dict[str, Any],
        codes: np.ndarray,
        values: pl.DataFrame | None,
        *,
        deferred: bool = False,
    ) -> DistinctPairs:
        """The pair set of ``codes`` under ``encoding`` (:meth:`encoding`).

        ``values`` are the dictionary's values in id order (column ``v``), for an encoding
        with a dictionary. Raises :class:`~tideflow.StateError` when a code names a value the
        dictionary does not have.

        Examples
        --------
        >>> d = DistinctPairs()
        >>> _ = d.add(np.array([0, 1]), pl.Series(["x", "y"]))
        >>> values = d.dictionary.frame()
        >>> again = DistinctPairs.decoded(d.encoding(), d.codes, values)
        >>> again.frame().sort("__id").rows()
        [(0, 'x'), (1, 'y')]
        """
        from tideflow.runtime._keyed import KeyIndex

        out = cls(deferred=deferred)
        out.bits, out.base = int(encoding["bits"]), int(encoding["base"])
        out.ranged = bool(encoding["ranged"])
        out.dtype = pl.read_ipc(io.BytesIO(encoding["dtype"])).schema["value"]
        held = 0
        if encoding["dictionary"]:
            out.dictionary = KeyIndex(("v",))
            if values is not None and values.height:
                out.dictionary.lookup(values.select("v"))
            held = len(out.dictionary)
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes):
            slots = codes & ((1 << out.bits) - 1)
            if out.dictionary is not None and int(slots.max()) > held:
                msg = (
                    f"n_unique state: pair codes name value {int(slots.max()) - 1} of a "
                    f"dictionary of {held}; the checkpoint is damaged, start without it"
                )
                raise StateError(msg)
            codes = np.sort(codes, kind="stable")  # sorted chunks: merged
            out.runs = [codes]
            out._top_key = int(codes[-1] >> out.bits)
        return out

    def frame(self, codes: np.ndarray | None = None) -> pl.DataFrame:
        """Pairs as a frame (``__id`` Int64, ``value`` of the values' type): all, or ``codes``."""
        if codes is None:
            codes = self.codes
        keys, slots = codes >> self.bits, codes & ((1 << self.bits) - 1)
        dtype = self.dtype if self.dtype is not None else pl.Null()
        nulls = slots == 0
        if self.dictionary is None:
            values = _from_physical(np.where(nulls, 0, slots - 1 + self.base), dtype, "value")
        else:
            stored = self.dictionary.frame()
            idx = pl.Series(np.where(nulls, 0, slots - 1))
            if stored.height:
                col = stored.get_column("v").gather(idx)
            else:
                col = pl.Series("v", [None] * len(idx), dtype=pl.Int64)
            if _physical_type(dtype):
                values = _from_physical(col.to_numpy(), dtype, "value")
            else:
                values = col.cast(dtype)
        kept = pl.select(pl.when(pl.Series(~nulls)).then(values.cast(dtype))).to_series()
        return pl.DataFrame([pl.Series("__id", keys), kept.alias("value")])

    def load(self, frame: pl.DataFrame) -> None:
        """Add the pairs of a :meth:`frame` (``__id``, ``value``)."""
        if frame.height:
            self.add(frame.get_column("__id").to_numpy(), frame.get_column("value"), defer=False)
        elif self.dtype is None and "value" in frame.columns:
            self.dtype = frame.schema["value"]

    def compact(self, kept: np.ndarray, n_old: int) -> None:
        """Keep the pairs of the key ids in ``kept`` (increasing), renumbered 0, 1, 2, ..."""
        new_id = np.full(max(n_old, 1), -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept), dtype=np.int64)
        bits, mask = self.bits, (1 << self.bits) - 1

        def renumber(codes: np.ndarray) -> np.ndarray:
            keys = new_id[codes >> bits]
            live = keys >= 0
            out: np.ndarray = (keys[live] << bits) | (codes[live] & mask)
            return out

        self._remap(renumber, sort=False)  # new ids keep the old ids' order
        self._top_key = max(len(kept) - 1, 0)


def _sorted_unique(codes: np.ndarray) -> np.ndarray:
    """The distinct values of ``codes``, sorted (a sort and a mask: faster than np.unique)."""
    codes = np.sort(codes)
    if len(codes) < 2:
        return codes
    keep = np.empty(len(codes), dtype=np.bool_)
    keep[0] = True
    np.not_equal(codes[1:], codes[:-1], out=keep[1:])
    return codes[keep]


def _physical_type(dtype: pl.DataType) -> bool:
    return dtype.is_float() or dtype == pl.Boolean or dtype.is_integer() or dtype.is_temporal()


# -- families: several n_unique columns in one set -------------------------------------------
def family_counts(
    pairs: DistinctPairs, flag_bits: int, members: list[int], n: int
) -> list[np.ndarray]:
    """Distinct counts per key id ``0 .. n - 1`` of each member of a family of columns.

    A family holds the distinct values of a base column and of member columns that are each,
    row by row, either null or the base's value (``pl.when(cond).then(base)``). Its pairs are
    ``(key << flag_bits | flags, value of the base)``, ``flags`` having bit ``b`` set when
    the row's member ``b`` was not null. ``members`` are the flag bits asked for (``-1``: the
    base itself): the base counts the distinct values of a key (null included); member ``b``
    those of the pairs with bit ``b`` set, plus one when a pair of the key has it clear (the
    member was null in a row of the key).

    Examples
    --------
    >>> d = DistinctPairs()
    >>> rows = np.array([0, 0, 0, 1])  # key ids of four rows
    >>> flags = np.array([1, 0, 1, 1])  # bit 0: the member was not null in the row
    >>> _ = d.add(rows << 1 | flags, pl.Series([5, 6, 5, 7]))
    >>> [c.tolist() for c in family_counts(d, 1, [-1, 0], 2)]
    [[2, 1], [2, 1]]
    """
    codes = pairs.codes
    bits = pairs.bits
    width = 1 << flag_bits
    kp = codes >> bits
    # pairs per (key, flag pattern): a member's pairs under one pattern are distinct values
    table = np.bincount(kp, minlength=n * width)[: n * width].reshape(n, width)
    patterns = np.flatnonzero(table.any(axis=0))
    out = []
    for bit in members:
        with_bit = patterns[(patterns >> bit) & 1 == 1] if bit >= 0 else patterns
        if len(with_bit) == 1:
            got = table[:, with_bit[0]].copy()
        elif not len(with_bit):
            got = np.zeros(n, dtype=np.int64)
        else:  # a value may be there under several patterns: count it once
            sel = np.ones(len(kp), dtype=np.bool_) if bit < 0 else ((kp >> bit) & 1) == 1
            x = ((kp[sel] >> flag_bits) << bits) | (codes[sel] & ((1 << bits) - 1))
            got = np.bincount(_sorted_unique(x) >> bits, minlength=n)[:n]
        if bit >= 0:  # a null of the member: a pair of the key under a pattern without it
            without = patterns[(patterns >> bit) & 1 == 0]
            got += table[:, without].any(axis=1)
        out.append(got.astype(np.int64, copy=False))
    return out


def member_pairs(pairs: DistinctPairs, flag_bits: int, bit: int) -> pl.DataFrame:
    """The distinct (``__id``, ``value``) pairs of one member of a family (see
    :func:`family_counts`; ``bit`` -1: the base), in no particular order."""
    frame = pairs.frame()
    kp = frame.get_column("__id").to_numpy()
    values = frame.get_column("value")
    if bit >= 0:
        has = pl.Series(((kp >> bit) & 1).astype(np.bool_))
        values = pl.select(pl.when(has).then(values)).to_series().alias("value")
    out = pl.DataFrame([pl.Series("__id", kp >> flag_bits), values])
    return out.unique() if flag_bits else out
