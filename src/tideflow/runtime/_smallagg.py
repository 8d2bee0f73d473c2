"""Partial aggregates of small batches per key and pane, in NumPy instead of a Polars group-by.

A window's combiner (:class:`~tideflow.runtime._windowing.WindowCombiner`) reduces every
micro-batch to one partial row per key and pane. Polars' ``group_by(...).agg(...)`` plans a
query at each call: about 90 us however few rows the batch holds, and a low-latency job's
batches hold a few dozen (Nexmark q5 at 50 k events/s: about ten rows, and that group-by was
half of the worker's time). For such batches this module sorts the rows by key and pane with
NumPy and reduces each run of equal keys with ``ufunc.reduceat``.

Only what it computes exactly as Polars does: keys of integer columns, and the aggregations
``len``, ``count``, ``sum`` and ``mean`` of integer columns, ``min`` and ``max`` of integer and
temporal columns (Polars sums integers in the result's dtype, wrapping around, and so does
NumPy). Each input schema is typed once by Polars (the partial expressions on an empty
frame), so the columns come out with Polars' dtypes and names. A batch with a null in a key or
a read column, or a schema outside the subset, gets ``None``: the caller runs Polars.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from tideflow.api._aggs import AggSpec
from tideflow.runtime._frames import frame_of, series_of

__all__ = ["SMALL_AGG_ROWS", "SmallPartials"]

#: Batches (and frames of partials) of at most this many rows take the NumPy paths. Measured
#: on q5's shape (one integer key, ``len``; CPU us per call, one thread): the combiner's
#: partials 20 / 31 / 43 / 208 at 8 / 512 / 1,024 / 4,096 rows against Polars' group-by
#: 58 / 53 / 82 / 217; a sliding window's five accumulators 17 / 150 / 284 / 817 (about
#: 0.3 us per partial row), where filing a frame costs a few us but its window's firing
#: then merges with a Polars group-by (about a millisecond for q5's windows).
SMALL_AGG_ROWS = 512

#: Aggregations computed here, and the input dtypes each accepts.
_INTEGER = "integer"
_ORDERED = "ordered"  # integers and temporal types (compared by their physical values)
_KINDS: dict[str, str | None] = {
    "count": None,
    "count_non_null": _ORDERED,
    "sum": _INTEGER,
    "mean": _INTEGER,
    "min": _ORDERED,
    "max": _ORDERED,
}


def _accepts(dtype: pl.DataType, need: str | None) -> bool:
    if need is None:
        return True
    if dtype.is_integer():
        return True
    return need == _ORDERED and isinstance(dtype, pl.Datetime | pl.Duration | pl.Date)


class SmallPartials:
    """One partial row per key and pane of a small batch, computed with NumPy.

    Parameters
    ----------
    keys
        The key columns.
    specs
        The aggregations (their partial columns are those of
        :func:`~tideflow.runtime._windowing.partial_exprs`).
    exprs
        The partial expressions, to type each input schema once with Polars.
    pane
        Name of the pane column the partials carry after the keys.

    Examples
    --------
    >>> from tideflow.runtime._windowing import partial_exprs
    >>> specs = (AggSpec("count", None, "n"), AggSpec("max", "v", "top"))
    >>> small = SmallPartials(["k"], specs, partial_exprs(specs))
    >>> rows = pl.DataFrame({"k": [7, 3, 7], "v": [1, 5, 4]})
    >>> small.partials(rows, np.array([0, 0, 0])).rows()
    [(3, 0, 1, 5), (7, 0, 2, 4)]
    """

    def __init__(
        self,
        keys: list[str],
        specs: tuple[AggSpec, ...],
        exprs: list[pl.Expr],
        pane: str = "__pane",
    ) -> None:
        self.keys = keys
        self.specs = specs
        self.exprs = exprs
        self.pane = pane
        self.possible = all(s.kind in _KINDS for s in specs)
        reads = [s.column for s in specs if s.column is not None and s.column not in keys]
        #: The columns read: the keys, then the aggregated columns.
        self.used = [*keys, *dict.fromkeys(reads)]
        #: Per dtypes of ``used``: the output columns' (name, dtype), or None when not exact.
        self._types: dict[tuple[pl.DataType, ...], list[tuple[str, Any]] | None] = {}

    def _typed(self, rows: pl.DataFrame, used: list[pl.Series]) -> list[tuple[str, Any]] | None:
        """The output columns' names and dtypes for the dtypes of ``used`` (keys, then the
        read columns), or None when this path is not exact for them."""
        sig = tuple(c.dtype for c in used)
        if sig in self._types:
            return self._types[sig]
        types: list[tuple[str, Any]] | None = None
        dtypes = {c.name: c.dtype for c in used}
        keys_ok = all(dtypes[k].is_integer() for k in self.keys)
        reads_ok = all(
            s.column is None or _accepts(dtypes[s.column], _KINDS[s.kind]) for s in self.specs
        )
        if keys_ok and reads_ok:
            empty = frame_of([c.clear() for c in used])
            empty = empty.with_columns(pl.lit(0, pl.Int64).alias(self.pane))
            out = empty.group_by([*self.keys, self.pane]).agg(self.exprs)
            types = list(out.schema.items())
        self._types[sig] = types
        return types

    def partials(self, rows: pl.DataFrame, pane: npt.NDArray[np.int64]) -> pl.DataFrame | None:
        """The partials of ``rows`` (whose pane starts are ``pane``) as Polars'
        ``group_by([*keys, pane]).agg(exprs)`` gives them (rows sorted by key and pane), or
        None where this path is not exact (the caller then runs Polars)."""
        if not self.possible or rows.height == 0:
            return None
        try:
            used = [rows.get_column(c) for c in self.used]
        except pl.exceptions.ColumnNotFoundError:
            return None  # Polars says which
        types = self._typed(rows, used)
        if types is None or any(c.null_count() for c in used):
            return None
        cols = [c.to_numpy() for c in used[: len(self.keys)]]
        cols.append(pane)
        order = np.lexsort(cols[::-1])
        ordered = [c[order] for c in cols]
        change = np.zeros(rows.height, dtype=np.bool_)
        change[0] = True
        for c in ordered:
            change[1:] |= c[1:] != c[:-1]
        starts = np.flatnonzero(change)
        counts = np.diff(np.append(starts, rows.height)).astype(np.int64)
        values = [c[starts] for c in ordered]
        for s in self.specs:
            values += self._values(s, rows, order, starts, counts)
        series: list[pl.Series] = []
        for (name, dtype), arr in zip(types, values, strict=True):
            col = series_of(name, arr)
            series.append(col if col.dtype == dtype else col.cast(dtype))
        return frame_of(series)

    @staticmethod
    def _values(
        s: AggSpec,
        rows: pl.DataFrame,
        order: npt.NDArray[np.intp],
        starts: npt.NDArray[np.intp],
        counts: npt.NDArray[np.int64],
    ) -> list[npt.NDArray[Any]]:
        """The partial columns of one aggregation (as :func:`partial_exprs` names them)."""
        if s.kind in ("count", "count_non_null"):  # no nulls: every row counts
            return [counts]
        assert s.column is not None
        col = rows.get_column(s.column)
        raw = _numpy(col)[order]
        if s.kind == "min":
            return [np.minimum.reduceat(raw, starts)]
        if s.kind == "max":
            return [np.maximum.reduceat(raw, starts)]
        # Integer sums in Polars' result dtype (Int64 for types narrower than 32 bits),
        # wrapping around like Polars.
        wide = np.int64 if col.dtype in (pl.Int8, pl.Int16, pl.UInt8, pl.UInt16) else raw.dtype
        total = np.add.reduceat(raw, starts, dtype=wide)
        if s.kind == "sum":
            return [total]
        return [total.astype(np.float64), counts]


#: How each partial column merges (the partial columns of ``partial_exprs``).
_MERGE: dict[str, Any] = {
    "count": np.add,
    "count_non_null": np.add,
    "sum": np.add,
    "mean": np.add,
    "min": np.minimum,
    "max": np.maximum,
}


def partial_columns(specs: tuple[AggSpec, ...]) -> list[tuple[str, Any]]:
    """The partial columns of ``specs`` (as :func:`partial_exprs` names them) with the NumPy
    function that merges two partials of a key.

    Examples
    --------
    >>> [name for name, _ in partial_columns((AggSpec("mean", "v", "m"),))]
    ['__m_s', '__m_n']
    """
    out: list[tuple[str, Any]] = []
    for s in specs:
        f = _MERGE[s.kind]
        out += (
            [(f"__{s.name}_s", f), (f"__{s.name}_n", f)]
            if s.kind == "mean"
            else [(f"__{s.name}", f)]
        )
    return out


class WindowAccumulator:
    """One window's partial aggregates per key, merged in place as small partial frames come.

    A window fed by micro-batches of a few rows would otherwise keep a list of tiny partial
    frames and merge them all with a Polars group-by when it fires (about a millisecond for
    Nexmark q5's 7,000 auctions per window, on the latency path). Here each key has a slot
    (a dict from the key's value, or tuple of values, to its index) in NumPy arrays of the
    partial columns, which the new partials update with ``ufunc`` on the slots they hit. The
    window's firing then reads finished arrays: :meth:`frame` gives them as a partial frame
    (keys, partial columns) for the columnar merge, or :meth:`finals` the aggregates.

    Parameters
    ----------
    keys
        The key columns (integers).
    columns
        The partial columns and their merges (:func:`partial_columns`).
    dtypes
        The Polars dtypes of the key and partial columns, in that order.

    Examples
    --------
    >>> specs = (AggSpec("count", None, "n"),)
    >>> acc = WindowAccumulator(["k"], partial_columns(specs), [pl.Int64, pl.Int64])
    >>> acc.add(*acc.rows(pl.DataFrame({"k": [7, 3], "__n": [2, 1]}), acc.keys, acc.columns))
    >>> acc.add(*acc.rows(pl.DataFrame({"k": [3], "__n": [4]}), acc.keys, acc.columns))
    >>> acc.frame().rows()
    [(7, 2), (3, 5)]
    """

    def __init__(self, keys: list[str], columns: list[tuple[str, Any]], dtypes: list[Any]) -> None:
        self.keys = keys
        self.columns = columns
        self.dtypes = dtypes
        self.slot: dict[Any, int] = {}
        self.size = 0
        self.arrays: list[npt.NDArray[Any]] = []

    @staticmethod
    def rows(
        part: pl.DataFrame, keys: list[str], columns: list[tuple[str, Any]]
    ) -> tuple[list[Any], list[npt.NDArray[Any]]]:
        """A partial frame's keys (Python values, tuples for several key columns) and the
        physical values of its key and partial columns, for :meth:`add`."""
        arrays = [_numpy(part.get_column(c)) for c in [*keys, *(c for c, _ in columns)]]
        nk = len(keys)
        if nk == 1:
            return arrays[0].tolist(), arrays
        return list(zip(*(a.tolist() for a in arrays[:nk]), strict=True)), arrays

    def add(self, ids: list[Any], arrays: list[npt.NDArray[Any]]) -> None:
        """Merge partials: keys ``ids`` (distinct) and their columns (:meth:`rows`)."""
        get = self.slot.get
        slots = [get(k, -1) for k in ids]
        old = self.size
        if -1 in slots:
            for i, s in enumerate(slots):
                if s < 0:
                    slots[i] = self.slot[ids[i]] = self.size
                    self.size += 1
            self._reserve(self.size, arrays)
        at = np.array(slots, dtype=np.int64)
        fresh = self.size - old
        if fresh == len(ids):  # new keys only
            for arr, new in zip(self.arrays, arrays, strict=True):
                arr[at] = new
            return
        nk = len(self.keys)
        mask = at >= old if fresh else None
        for j, (arr, new) in enumerate(zip(self.arrays, arrays, strict=True)):
            hit, vals = at, new
            if mask is not None:
                arr[at[mask]] = new[mask]
                hit, vals = at[~mask], new[~mask]
            if j >= nk:
                arr[hit] = self.columns[j - nk][1](arr[hit], vals)

    def _reserve(self, n: int, like: list[npt.NDArray[Any]]) -> None:
        """Room for ``n`` slots in every array (doubling; the first ones typed ``like``)."""
        if not self.arrays:
            self.arrays = [np.empty(max(n, 64), dtype=a.dtype) for a in like]
            return
        have = self.arrays[0].shape[0]
        if n > have:
            grow = max(n, 2 * have)
            self.arrays = [np.resize(a, grow) for a in self.arrays]

    def frame(self) -> pl.DataFrame:
        """The partials as a frame: keys and partial columns, one row per key."""
        names = [*self.keys, *(name for name, _ in self.columns)]
        n = self.size
        return frame_of(
            [_typed(c, a[:n], d) for c, a, d in zip(names, self.arrays, self.dtypes, strict=True)]
        )

    def finals(
        self, specs: tuple[AggSpec, ...], select: str | None
    ) -> tuple[list[pl.Series], list[pl.Series]]:
        """The key columns and the aggregates (named as ``specs``) of every key, or with
        ``select`` only of the keys carrying that aggregate's largest value (ties all kept),
        as the window's columnar firing gives them. For :func:`accumulates` aggregations.
        """
        nk, n = len(self.keys), self.size
        partial = {
            c: (a[:n], d)
            for (c, _), a, d in zip(self.columns, self.arrays[nk:], self.dtypes[nk:], strict=True)
        }
        values: list[tuple[str, npt.NDArray[Any], Any]] = []
        for s in specs:
            arr, dtype = partial[f"__{s.name}"]
            if s.kind in ("count", "count_non_null"):
                values.append((s.name, arr.astype(np.int64, copy=False), pl.Int64))
            else:
                values.append((s.name, arr, dtype))
        rows: npt.NDArray[np.intp] | None = None
        if select is not None and n:
            top = next(arr for name, arr, _ in values if name == select)
            rows = np.flatnonzero(top == top.max())
        cols = zip(self.keys, self.arrays[:nk], self.dtypes[:nk], strict=True)
        keys = [_typed(c, a[:n] if rows is None else a[rows], d) for c, a, d in cols]
        finals = [_typed(c, a if rows is None else a[rows], d) for c, a, d in values]
        return keys, finals


def _typed(name: str, arr: npt.NDArray[Any], dtype: Any) -> pl.Series:
    """A Series of physical values ``arr`` with the Polars ``dtype``."""
    col = series_of(name, arr)
    return col if col.dtype == dtype else col.cast(dtype)


def _numpy(col: pl.Series) -> npt.NDArray[Any]:
    """The physical values of a column without nulls (``to_physical`` only where they differ:
    it is a planned Polars query, tens of microseconds)."""
    return (col.to_physical() if col.dtype.is_temporal() else col).to_numpy()


def accumulates(specs: tuple[AggSpec, ...] | None) -> bool:
    """Whether a window with these aggregations can keep :class:`WindowAccumulator` s: integer
    and temporal partials merged exactly by addition, minimum and maximum.

    Examples
    --------
    >>> accumulates((AggSpec("count", None, "n"), AggSpec("max", "v", "hi")))
    True
    >>> accumulates((AggSpec("mean", "v", "m"),))
    False
    """
    return specs is not None and all(s.kind in _MERGE and s.kind != "mean" for s in specs)


def exact_partials(dtypes: list[Any], keys: int) -> bool:
    """Whether partial frames of these dtypes (``keys`` integer key columns first, then the
    partial columns) can be merged exactly by a :class:`WindowAccumulator`: integer keys and
    integer or temporal partials (float sums depend on the order of the additions).

    Examples
    --------
    >>> exact_partials([pl.Int64, pl.Int64], 1), exact_partials([pl.Int64, pl.Float64], 1)
    (True, False)
    """
    if not all(d.is_integer() for d in dtypes[:keys]):
        return False
    return all(d.is_integer() or d.is_temporal() for d in dtypes[keys:])
