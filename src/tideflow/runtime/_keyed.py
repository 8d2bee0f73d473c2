"""Columnar keyed state: dense ids for keys, and accumulators in NumPy arrays.

A keyed aggregation first reduces each micro-batch with a Polars ``group_by`` (vectorized, in
Rust), so the per-key Python work is one dict look-up per *distinct key of the batch*, not per
record. Accumulators live in NumPy arrays indexed by the key's dense id and are merged with
vectorized NumPy operations.
"""

from __future__ import annotations

import heapq
import io
from typing import Any

import numpy as np
import polars as pl

from tideflow._errors import StateError
from tideflow.api._aggs import AggSpec
from tideflow.runtime._distinct import DistinctPairs, family_counts, member_pairs
from tideflow.runtime._frames import frame_chunk, read_parts
from tideflow.state._store import SnapshotChunk

__all__ = ["AggState", "KeyIndex", "decode_pairs", "pair_frames", "table_of_rows"]


class KeyIndex:
    """Maps key values (one or more columns) to dense integer ids 0, 1, 2, ...

    Keys are found by 64-bit hashes of their rows (Polars ``hash_rows``), kept in sorted
    NumPy runs with the id of the key each stands for: a batch's rows are hashed and searched
    in the runs, and a hit is confirmed by comparing the row with the stored key row of that
    id (a gather and a column-wise ``eq_missing``). Rows whose hash is new are new keys
    (those of one batch grouped by hash, and confirmed likewise). No Python work is done per
    key, except for the rare keys a hash cannot stand for: a key whose hash another key had
    first, and the keys of batches whose key columns have another type than the first
    batch's (the hashes hold for one schema); those are kept in a dict by Python value (all
    keys from the first batch of another schema on).

    Examples
    --------
    >>> import polars as pl
    >>> index = KeyIndex(("k",))
    >>> ids, new = index.lookup(pl.DataFrame({"k": ["a", "b", "a"]}))
    >>> ids.tolist(), new
    ([0, 1, 0], 2)
    >>> ids, new = index.lookup(pl.DataFrame({"k": ["b", None, "c"]}))
    >>> ids.tolist(), new
    ([1, 2, 3], 2)
    >>> index.frame().get_column("k").to_list()
    ['a', 'b', None, 'c']
    """

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self._count = 0
        #: The key rows in id order, in parts of at least twice the size of the next.
        self._chunks: list[pl.DataFrame] = []
        #: Sorted runs of row hashes and the id of the key each stands for.
        self._hashes: list[np.ndarray] = []
        self._hash_ids: list[np.ndarray] = []
        self._schema: dict[str, pl.DataType] | None = None
        #: Keys by Python value: those the hashes do not stand for, or all (``_complete``).
        self._ids: dict[Any, int] = {}
        self._complete = False

    def __len__(self) -> int:
        return self._count

    def _values(self, frame: pl.DataFrame) -> list[Any]:
        if len(self.keys) == 1:
            return frame.get_column(self.keys[0]).to_list()
        return list(zip(*(frame.get_column(k).to_list() for k in self.keys), strict=True))

    def lookup(self, frame: pl.DataFrame) -> tuple[np.ndarray, int]:
        """Ids for the key rows of ``frame`` (keys may repeat); new keys get new ids.

        Returns the ids and how many keys were new.
        """
        start = self._count
        sel = frame.select(self.keys)
        out = np.full(sel.height, -1, dtype=np.int64)
        if sel.height == 0:
            return out, 0
        schema = dict(sel.schema)
        if self._schema is None and not any(d == pl.Null for d in schema.values()):
            self._schema = schema
        if schema != self._schema:  # the hashes do not hold: every key by its value
            if not self._complete:
                whole = self.frame()
                if whole.height:
                    self._ids = dict(zip(self._values(whole), range(whole.height), strict=True))
                self._complete = True
            self._by_dict(sel, np.arange(sel.height), out)
            return out, self._count - start
        hashes = self._hash(sel)
        taken = self._probe(sel, hashes, out)
        rows = np.flatnonzero(out < 0)
        if len(rows) and self._ids:  # keys that only the dict knows
            self._by_dict(sel, rows, out, add=False)
            rows = rows[out[rows] < 0]
        if len(rows):
            fresh = rows[~taken[rows]]
            odd = rows[taken[rows]]  # their hash stands for another key
            if len(fresh):
                odd = np.concatenate((odd, self._add(sel, fresh, hashes[fresh], out)))
            if len(odd):
                self._by_dict(sel, odd, out)
        return out, self._count - start

    @staticmethod
    def _hash(sel: pl.DataFrame) -> np.ndarray:
        """The hashes of key rows (``uint64``)."""
        hashes: np.ndarray = sel.hash_rows(seed=_HASH_SEED).to_numpy()
        return hashes

    def _probe(self, sel: pl.DataFrame, hashes: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Set the ids of the rows whose hash is known and key confirmed.

        Returns which rows' hashes are known (confirmed or not).
        """
        for run, run_ids in zip(self._hashes, self._hash_ids, strict=True):
            pos = np.searchsorted(run, hashes)
            np.minimum(pos, len(run) - 1, out=pos)
            hit = run[pos] == hashes
            out[hit] = run_ids[pos[hit]]
        taken = out >= 0
        rows = np.flatnonzero(taken)
        if len(rows):
            kept = self._gather(out[rows])
            same = self._same(sel[rows] if len(rows) < sel.height else sel, kept)
            out[rows[~same]] = -1
        return taken

    def _same(self, got: pl.DataFrame, kept: pl.DataFrame) -> np.ndarray:
        """Whether the rows of two frames of key columns are equal (nulls equal)."""
        same = np.ones(got.height, dtype=np.bool_)
        for k in self.keys:
            same &= got.get_column(k).eq_missing(kept.get_column(k)).to_numpy()
        return same

    def _gather(self, ids: np.ndarray) -> pl.DataFrame:
        """The stored key rows of ``ids``, in that order."""
        if len(self._chunks) == 1:
            one: pl.DataFrame = self._chunks[0][ids]
            return one
        starts = np.cumsum([0] + [c.height for c in self._chunks])
        part = np.searchsorted(starts, ids, side="right") - 1
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(len(self._chunks) + 1))
        pieces = [
            chunk[ids[order[lo:hi]] - starts[i]]
            for i, (chunk, lo, hi) in enumerate(
                zip(self._chunks, bounds[:-1], bounds[1:], strict=True)
            )
            if hi > lo
        ]
        inverse = np.empty(len(ids), dtype=np.int64)
        inverse[order] = np.arange(len(ids), dtype=np.int64)
        whole: pl.DataFrame = pl.concat(pieces, how="vertical_relaxed")[inverse]
        return whole

    def _add(
        self, sel: pl.DataFrame, rows: np.ndarray, hashes: np.ndarray, out: np.ndarray
    ) -> np.ndarray:
        """New keys of ``sel[rows]`` (hashes not known yet), ids in order of first appearance.

        Returns the rows that share their hash with another new key (for the dict).
        """
        uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        lead = rows[first]  # the first row of each hash
        same = self._same(sel[rows], sel[lead[inverse]])
        order = np.argsort(first, kind="stable")
        ids = np.empty(len(uniq), dtype=np.int64)
        ids[order] = self._count + np.arange(len(uniq), dtype=np.int64)
        out[rows[same]] = ids[inverse[same]]
        keys = sel[lead[order]]
        self._count += len(uniq)
        self._append(keys)
        if self._complete:
            self._ids.update(zip(self._values(keys), ids[order].tolist(), strict=True))
        self._cache(uniq, ids)
        odd: np.ndarray = rows[~same]
        return odd

    def _by_dict(
        self, sel: pl.DataFrame, rows: np.ndarray, out: np.ndarray, *, add: bool = True
    ) -> None:
        """Ids of ``sel[rows]`` from the dict (Python values); new keys get new ids (``add``)."""
        ids_map = self._ids
        part = sel[rows] if len(rows) < sel.height else sel
        new_rows: list[int] = []
        got = np.full(len(rows), -1, dtype=np.int64)
        for i, v in enumerate(self._values(part)):
            found = ids_map.get(v)
            if found is None:
                if not add:
                    continue
                found = ids_map[v] = self._count
                self._count += 1
                new_rows.append(i)
            got[i] = found
        out[rows] = got
        if new_rows:
            self._append(part if len(new_rows) == part.height else part[new_rows])

    def _append(self, rows: pl.DataFrame) -> None:
        chunks = self._chunks
        chunks.append(rows)
        while len(chunks) > 1 and chunks[-2].height <= 2 * chunks[-1].height:
            last = chunks.pop()
            chunks[-1] = pl.concat([chunks[-1], last], how="vertical_relaxed", rechunk=True)

    def _cache(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        """Add sorted, distinct, new ``hashes`` standing for the keys ``ids``."""
        self._hashes.append(hashes)
        self._hash_ids.append(ids)
        runs, run_ids = self._hashes, self._hash_ids
        while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
            hs = np.concatenate((runs[-2], runs.pop()))
            ix = np.concatenate((run_ids[-2], run_ids.pop()))
            order = np.argsort(hs, kind="stable")  # two sorted runs: a merge
            runs[-1], run_ids[-1] = hs[order], ix[order]

    def compact(self, keep: np.ndarray) -> np.ndarray:
        """Forget the keys whose ``keep`` flag (a boolean array by id) is False.

        The kept keys get new dense ids in their old order; returns their old ids (new id
        ``i`` was ``old[i]``), so callers can gather their per-id arrays with it.
        """
        n = self._count
        kept = np.flatnonzero(keep[:n])
        if len(kept) == n:
            return kept
        frame = self.frame()
        rest = frame[kept] if len(kept) else frame.clear()
        self._chunks = [rest] if rest.height else []
        self._count = rest.height
        new_id = np.full(max(n, 1), -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept), dtype=np.int64)
        self._ids = {v: int(new_id[i]) for v, i in self._ids.items() if new_id[i] >= 0}
        runs = [(run, new_id[ids]) for run, ids in zip(self._hashes, self._hash_ids, strict=True)]
        runs = [(run[ids >= 0], ids[ids >= 0]) for run, ids in runs]
        self._hashes = [run for run, _ in runs if len(run)]
        self._hash_ids = [ids for _, ids in runs if len(ids)]
        return kept

    def frame(self) -> pl.DataFrame:
        """All keys, in id order."""
        if not self._chunks:
            return pl.DataFrame()
        if len(self._chunks) > 1:
            self._chunks = [pl.concat(self._chunks, how="vertical_relaxed", rechunk=True)]
        return self._chunks[0]


#: The seed of the key rows' hashes in :class:`KeyIndex`'s cache (fixed: any works).
_HASH_SEED = 0x7F4A7C15

_ID = "__tideflow_id"
_VALUE = "__value"
_CODE = "__code"
_ROW = "__tideflow_row"
#: At most this many member columns share a family's set (their flags take key bits).
_MAX_MEMBERS = 8
#: More snapshot chunks than this per ``n_unique``: the newest ``_MERGE_CHUNKS`` become one.
_MAX_CHUNKS = 16
_MERGE_CHUNKS = 8


def _ipc(frame: pl.DataFrame, compression: Any = "uncompressed") -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf, compression=compression)
    return buf.getvalue()


def _from_ipc(data: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(data))


def table_of_rows(parts: list[Any], *, release: bool = False) -> pl.DataFrame:
    """The table of a version-3 aggregation snapshot from its ``rows`` chunks (or IPC bytes).

    A key's last row wins; the rows come out in id order, without ``__id``. With ``release``
    the chunks' bytes are dropped from memory once read (they stay in their files). Raises
    :class:`~tideflow.StateError` if the ids are not ``0, 1, ..., n - 1``.
    """
    frames = []
    for part in parts:
        if isinstance(part, SnapshotChunk):
            frame = _from_ipc(part.read())
            if release:
                part.release()
        else:
            frame = _from_ipc(part)
        if frame.width:
            frames.append(frame)
    if not frames:
        return pl.DataFrame()
    rows = pl.concat(frames, how="diagonal_relaxed")
    rows = rows.unique(subset="__id", keep="last", maintain_order=True).sort("__id")
    ids = rows.get_column("__id").to_numpy()
    if rows.get_column("__id").null_count() or not np.array_equal(ids, np.arange(len(ids))):
        msg = (
            "aggregation state: the table's chunks do not hold keys 0 to n - 1; the "
            "checkpoint is damaged, start without it"
        )
        raise StateError(msg)
    return rows.drop("__id")


def decode_pairs(entry: dict[str, Any], *, deferred: bool = False) -> DistinctPairs:
    """The pair set of one ``n_unique`` of a version-4 aggregation snapshot (see ``snapshot``).

    Its ``codes`` and ``values`` are lists of :class:`~tideflow.state.SnapshotChunk`\\ s (or
    Arrow IPC bytes); the chunks' bytes are dropped from memory once read.
    """
    frames, _ = read_parts(list(entry.get("codes") or []))
    arrays = [f.get_column(_CODE).to_numpy() for f in frames]
    codes = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    values, _ = read_parts(list(entry.get("values") or []))
    dictionary = pl.concat(values, how="vertical_relaxed") if values else None
    return DistinctPairs.decoded(entry, codes, dictionary, deferred=deferred)


def pair_frames(name: str, entry: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """The distinct pairs of each ``n_unique`` in one ``pairs`` entry of a version-4 or 5
    aggregation snapshot: aggregate name -> (``__id``, ``value``) frame.

    A version-5 entry is a family (``members``, ``flag_bits``; see ``AggState.snapshot``);
    version 4's holds the pairs of the aggregate ``name`` alone.
    """
    pairs = decode_pairs(entry)
    flag_bits = int(entry.get("flag_bits", 0))
    members = entry.get("members") or [[name, -1]]
    return {m: member_pairs(pairs, flag_bits, int(bit)) for m, bit in members}


def _grow(arr: np.ndarray, n: int, fill: Any) -> np.ndarray:
    if n <= len(arr):
        return arr
    new = np.full(max(n, 2 * len(arr), 64), fill, dtype=arr.dtype)
    new[: len(arr)] = arr
    return new


class AggState:
    """Incremental state of ``key_by(...).agg(...)``: partial aggregates merged per batch.

    With ``deferred=True`` (an aggregation that emits only at the end) the ``n_unique`` pair
    sets deduplicate many batches together (:class:`DistinctPairs` ``deferred``); their counts
    are brought up to date before anything reads them (:meth:`values`, :meth:`all_values`,
    :meth:`snapshot`, :meth:`compact`).
    """

    def __init__(
        self, keys: tuple[str, ...], specs: tuple[AggSpec, ...], *, deferred: bool = False
    ) -> None:
        self.keys = keys
        self.specs = specs
        self.deferred = deferred
        self.index = KeyIndex(keys)
        self._arrays: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, pl.DataType] = {}
        self._distinct: dict[str, DistinctPairs] = {}
        #: The snapshot chunks of each ``n_unique``'s pair codes and dictionary values (see
        #: :meth:`snapshot`), and the encoding epoch and dictionary size they were written at.
        self._chunks: dict[str, list[SnapshotChunk]] = {}
        self._value_chunks: dict[str, list[SnapshotChunk]] = {}
        self._written: dict[str, tuple[int, int]] = {}
        #: The snapshot chunks of the table (None: the next snapshot writes all of it), the
        #: rows they hold, and the keys changed since (by id).
        self._rows: list[SnapshotChunk] | None = None
        self._row_count = 0
        self._dirty = np.zeros(0, dtype=np.bool_)
        self._topk: dict[str, list[list[Any]]] = {}
        self._partial_exprs: list[pl.Expr] = []
        for s in specs:
            self._partial_exprs.extend(self._partials(s))
        #: The partials of the aggregates other than ``n_unique`` (see :meth:`update`).
        self._scalar_exprs = [e for s in specs if s.kind != "n_unique" for e in self._partials(s)]
        self._unique = {s.name: s for s in specs if s.kind == "n_unique"}
        #: The ``n_unique`` sets by family (the key of ``_distinct``): the aggregates sharing
        #: the set, each with its flag bit (-1: the base, whose column gives the values), and
        #: the family's number of flag bits (0: one aggregate, counted as pairs are added).
        self._members: dict[str, list[list[Any]]] = {}
        self._flag_bits: dict[str, int] = {}
        #: Families whose set changed since their counts were taken.
        self._stale: set[str] = set()

    # -- partial aggregation --------------------------------------------------------------
    @property
    def combinable(self) -> bool:
        """True when every aggregate merges from partials (a combiner may run before a shuffle).

        ``n_unique``'s partial is the list of a key's distinct values in a batch, nulls
        left out, and whether the key had a null.
        """
        return all(s.kind != "top_k" for s in self.specs)

    @staticmethod
    def _partials(s: AggSpec) -> list[pl.Expr]:
        c = s.column
        p = f"__{s.name}"
        if s.kind == "count":
            return [pl.len().cast(pl.Int64).alias(p)]
        assert c is not None
        col = pl.col(c)
        if s.kind == "count_non_null":
            return [col.count().cast(pl.Int64).alias(p)]
        if s.kind == "sum":
            return [col.sum().alias(p)]
        if s.kind == "mean":
            return [
                col.sum().cast(pl.Float64).alias(p + "_s"),
                col.count().cast(pl.Int64).alias(p + "_n"),
            ]
        if s.kind in ("min", "max"):
            return [(col.min() if s.kind == "min" else col.max()).alias(p)]
        if s.kind == "top_k":
            return [col.top_k(s.k).alias(p)]
        # n_unique: the distinct values without null (columns that stand for a subset of the
        # rows are mostly null: a fifth fewer pairs) and whether there was a null
        return [col.drop_nulls().unique().alias(p), col.has_nulls().alias(p + "_null")]

    def partial_exprs(self) -> list[pl.Expr]:
        """Expressions turning raw rows into one partial row per key."""
        return list(self._partial_exprs)

    def merge_exprs(self) -> list[pl.Expr]:
        """Expressions combining partial rows of the same key into one."""
        out: list[pl.Expr] = []
        for s in self.specs:
            p = f"__{s.name}"
            if s.kind == "mean":
                out += [pl.col(p + "_s").sum(), pl.col(p + "_n").sum()]
            elif s.kind == "min":
                out.append(pl.col(p).min())
            elif s.kind == "max":
                out.append(pl.col(p).max())
            elif s.kind == "n_unique":  # the lists of the key's rows as one; a null in any
                out += [pl.col(p).explode(empty_as_null=False), pl.col(p + "_null").any()]
            else:
                out.append(pl.col(p).sum())
        return out

    def _array(self, name: str, dtype: Any, fill: Any, n: int) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            arr = np.full(max(n, 64), fill, dtype=dtype)
        arr = _grow(arr, n, fill)
        self._arrays[name] = arr
        return arr

    def update(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
        """Fold one batch of raw rows in; return the batch's distinct keys and their ids.

        With ``n_unique`` aggregates, the group-by makes no per-key lists of distinct values:
        it gives each row's key id (from a list of the rows of each key), and the (key id,
        value) pairs are deduplicated as integer codes (:meth:`_fold_rows`).
        """
        if self._unique:
            part = (
                batch.with_row_index(_ROW)
                .group_by(self.keys)
                .agg(*self._scalar_exprs, pl.col(_ROW))
            )
            ids, _ = self.index.lookup(part)
            rows = part.get_column(_ROW)
            row_ids = np.empty(batch.height, dtype=np.int64)
            row_ids[rows.explode().to_numpy()] = np.repeat(ids, rows.list.len().to_numpy())
            out = self._fold(part.drop(_ROW), batch, ids)
            self._fold_rows(batch, row_ids)
            return out
        if self._partial_exprs:
            partial = batch.group_by(self.keys).agg(self._partial_exprs)
        else:
            partial = batch.select(self.keys).unique()
        return self._fold(partial, batch)

    def merge(self, partials: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
        """Fold partial rows (from :meth:`partial_exprs`, keys may repeat) in.

        Partial rows of distinct keys (one combiner's batch) are folded in as they are; rows
        of a repeated key are first merged into one by its id.
        """
        ids, _ = self.index.lookup(partials.select(self.keys))
        if len(ids) > 1 and not bool(np.all(np.diff(np.sort(ids)))):
            merged = (
                partials.with_columns(pl.Series(_ID, ids))
                .group_by(_ID)
                .agg(*(pl.col(k).first() for k in self.keys), *self.merge_exprs())
            )
            ids = merged.get_column(_ID).to_numpy()
            partials = merged.drop(_ID)
        return self._fold(partials, None, ids)

    def _fold(
        self, partial: pl.DataFrame, batch: pl.DataFrame | None, ids: np.ndarray | None = None
    ) -> tuple[pl.DataFrame, np.ndarray]:
        """Merge partial rows in; ``ids`` are their keys' ids when the caller looked them up."""
        for s in self.specs:
            if s.name not in self._dtypes and s.column is not None:
                if batch is not None:
                    self._dtypes[s.name] = batch.schema[s.column]
                elif s.kind in ("sum", "min", "max"):
                    self._dtypes[s.name] = partial.schema[f"__{s.name}"]
        if ids is None:
            ids, _ = self.index.lookup(partial)
        n = len(self.index)
        self._touch(ids, n)
        for s in self.specs:
            p = f"__{s.name}"
            if s.kind in ("count", "count_non_null"):
                arr = self._array(p, np.int64, 0, n)
                arr[ids] += partial.get_column(p).to_numpy().astype(np.int64)
            elif s.kind == "sum":
                src = self._dtypes[s.name]
                dt = np.int64 if src.is_integer() else np.float64
                arr = self._array(p, dt, 0, n)
                vals = partial.get_column(p).fill_null(0).to_numpy()
                arr[ids] += vals.astype(dt)
            elif s.kind == "mean":
                sa = self._array(p + "_s", np.float64, 0.0, n)
                na = self._array(p + "_n", np.int64, 0, n)
                sa[ids] += partial.get_column(p + "_s").fill_null(0.0).to_numpy()
                na[ids] += partial.get_column(p + "_n").to_numpy().astype(np.int64)
            elif s.kind in ("min", "max"):
                self._merge_extreme(s, p, partial, ids, n)
            elif s.kind == "top_k":
                self._merge_topk(s, partial.get_column(p).to_list(), ids, n)
            elif s.kind == "n_unique" and p in partial.columns:
                self._merge_unique(s, partial, ids, n)
        return partial.select(self.keys), ids

    def _merge_extreme(
        self, s: AggSpec, p: str, partial: pl.DataFrame, ids: np.ndarray, n: int
    ) -> None:
        col = partial.get_column(p)
        if col.dtype.is_temporal():
            col = col.to_physical()
        is_int = col.dtype.is_integer() or col.dtype == pl.Boolean
        dt = np.int64 if is_int else np.float64
        info = np.iinfo(np.int64) if is_int else None
        if s.kind == "min":
            fill = info.max if info is not None else np.inf
        else:
            fill = info.min if info is not None else -np.inf
        arr = self._array(p, dt, fill, n)
        has = self._array(p + "_has", np.bool_, False, n)
        if col.null_count():
            valid = col.is_not_null().to_numpy()
            vi, vv = ids[valid], col.fill_null(0).to_numpy().astype(dt)[valid]
        else:
            vi, vv = ids, col.to_numpy().astype(dt, copy=False)
        arr[vi] = np.minimum(arr[vi], vv) if s.kind == "min" else np.maximum(arr[vi], vv)
        has[vi] = True

    def _merge_topk(self, s: AggSpec, lists: list[Any], ids: np.ndarray, n: int) -> None:
        store = self._topk.setdefault(s.name, [])
        while len(store) < n:
            store.append([])
        for i, vals in zip(ids.tolist(), lists, strict=True):
            vals = [v for v in vals if v is not None]
            store[i] = heapq.nlargest(s.k, store[i] + vals)

    def _merge_unique(self, s: AggSpec, partial: pl.DataFrame, ids: np.ndarray, n: int) -> None:
        """Fold in a partial's distinct values of each key (the key's id in ``ids``).

        The partial holds a list of the key's values (``__name``, without null) and whether
        it had a null (``__name_null``).
        """
        p = f"__{s.name}"
        self._dissolve()
        lists = partial.get_column(p)
        values = lists.explode(empty_as_null=False)
        key_ids = np.repeat(ids, lists.list.len().to_numpy())
        had = partial.get_column(p + "_null").fill_null(False).to_numpy()
        if had.any():  # one null value for each key that had one
            key_ids = np.concatenate((key_ids, ids[had]))
            nulls = pl.Series(values.name, [None] * int(had.sum()), dtype=values.dtype)
            values = pl.concat([values, nulls])
        self._add_pairs(self._family_of(s.name), key_ids, values, n)

    # -- n_unique by rows: families of columns ---------------------------------------------
    def _family_of(self, name: str) -> str:
        """The family whose set holds the pairs of the ``n_unique`` ``name`` (made if new)."""
        for fam, members in self._members.items():
            if any(m == name for m, _ in members):
                return fam
        self._members[name] = [[name, -1]]
        self._flag_bits[name] = 0
        return name

    def _plan(self, batch: pl.DataFrame) -> None:
        """Group the ``n_unique`` columns into families, from the first batch.

        A column that is null or equal to another one in every row (``pl.when(cond)
        .then(col)``, a count of a subset of the rows) joins that column's family when the
        aggregation emits at the end (its counts are taken from the set when read); later
        batches check it again (:meth:`_fold_rows`). Otherwise each has its own set.
        """
        bases: list[str] = []
        for name, s in self._unique.items():
            column = s.column
            assert column is not None
            home = None
            for fam in bases if self.deferred else ():
                base = self._unique[fam].column
                assert base is not None
                if (
                    self._flag_bits[fam] < _MAX_MEMBERS
                    and self._follows(batch, [(column, base)])[0]
                ):
                    home = fam
                    break
            if home is None:
                bases.append(name)
                self._members[name] = [[name, -1]]
                self._flag_bits[name] = 0
            else:
                self._members[home].append([name, self._flag_bits[home]])
                self._flag_bits[home] += 1

    @staticmethod
    def _follows(batch: pl.DataFrame, pairs: list[tuple[str, str]]) -> list[bool]:
        """For each (column, base): whether the column is null or equal to the base in every
        row of ``batch`` (one ``select`` for all)."""
        schema = batch.schema
        same = [schema[c] == schema[b] for c, b in pairs]
        exprs = [
            (pl.col(c).is_null() | pl.col(c).eq_missing(pl.col(b))).all().alias(f"_{i}")
            for i, ((c, b), ok) in enumerate(zip(pairs, same, strict=True))
            if ok
        ]
        if not exprs:
            return same
        try:
            got = iter(batch.select(exprs).row(0))
        except pl.exceptions.PolarsError:
            return [False] * len(pairs)
        return [bool(next(got)) if ok else False for ok in same]

    def _column(self, name: str) -> str:
        column = self._unique[name].column
        assert column is not None
        return column

    def _fold_rows(self, batch: pl.DataFrame, row_ids: np.ndarray) -> None:
        """Fold in the (key id, value) pairs of every ``n_unique`` of a batch's rows."""
        n = len(self.index)
        if not self._members:
            self._plan(batch)
        held = {m for members in self._members.values() for m, _ in members}
        for name in self._unique:
            if name not in held:  # restored without pairs of its own: a set of its own
                self._family_of(name)
        checks = [
            (fam, name, bit) for fam, members in self._members.items() for name, bit in members[1:]
        ]
        if checks:  # members still null or the base's value?
            pairs = [(self._column(name), self._column(fam)) for fam, name, _ in checks]
            for (fam, name, bit), ok in zip(checks, self._follows(batch, pairs), strict=True):
                if not ok:
                    self._split(fam, name, bit)
        flagged = [fam for fam, members in self._members.items() if len(members) > 1]
        flags = {}
        if flagged:  # each row's flags: which members are not null
            exprs = [
                pl.sum_horizontal(
                    pl.col(self._column(name)).is_not_null().cast(pl.Int64) * (1 << bit)
                    for name, bit in self._members[fam][1:]
                ).alias(fam)
                for fam in flagged
            ]
            got = batch.select(exprs)
            flags = {fam: got.get_column(fam).to_numpy() for fam in flagged}
        for fam in list(self._members):
            keys = row_ids
            if self._flag_bits[fam]:
                keys = row_ids << self._flag_bits[fam]
                if fam in flags:
                    keys |= flags[fam]
            self._add_pairs(fam, keys, batch.get_column(self._column(fam)), n)

    def _add_pairs(self, fam: str, keys: np.ndarray, values: pl.Series, n: int) -> None:
        """Add pairs to a family's set (``keys``: key ids, with the flags if it has some)."""
        distinct = self._distinct.get(fam)
        if distinct is None:
            distinct = self._distinct[fam] = DistinctPairs(deferred=self.deferred)
        fresh = distinct.add(keys, values)
        for name, _ in self._members[fam]:
            arr = self._array(f"__{name}", np.int64, 0, n)
        if self._flag_bits[fam]:
            self._stale.add(fam)
        elif len(fresh):
            arr += np.bincount(fresh, minlength=len(arr))

    def _split(self, fam: str, name: str, bit: int) -> None:
        """Give the member ``name`` of a family a set of its own (it no longer follows the base)."""
        self._settle()
        pairs = member_pairs(self._distinct[fam], self._flag_bits[fam], bit)
        self._members[fam] = [m for m in self._members[fam] if m[0] != name]
        self._members[name] = [[name, -1]]
        self._flag_bits[name] = 0
        one = self._distinct[name] = DistinctPairs(deferred=self.deferred)
        if pairs.height:
            one.add(pairs.get_column("__id").to_numpy(), pairs.get_column("value"), defer=False)

    def _dissolve(self) -> None:
        """Give every member of a family a set of its own (before pairs come as lists)."""
        for fam in list(self._members):
            for name, bit in list(self._members[fam][1:]):
                self._split(fam, name, bit)

    def _settle(self) -> None:
        """Count the pending pairs of every deferred ``n_unique`` (see :class:`DistinctPairs`);
        take the counts of the families that changed from their sets."""
        n = len(self.index)
        for name, distinct in self._distinct.items():
            fresh = distinct.settle()
            if self._flag_bits.get(name):
                if len(fresh) or name in self._stale:
                    bits = [bit for _, bit in self._members[name]]
                    counts = family_counts(distinct, self._flag_bits[name], bits, n)
                    for (member, _), got in zip(self._members[name], counts, strict=True):
                        arr = self._array(f"__{member}", np.int64, 0, n)
                        arr[:n] = got
            elif len(fresh):
                arr = self._arrays[f"__{name}"]
                arr += np.bincount(fresh, minlength=len(arr))
        self._stale.clear()

    # -- output ---------------------------------------------------------------------------
    def values(self, keys: pl.DataFrame, ids: np.ndarray) -> pl.DataFrame:
        """Current aggregates of the keys at ``ids`` (keys given in the same order)."""
        self._settle()
        cols: list[pl.Series] = []
        for s in self.specs:
            p = f"__{s.name}"
            if s.kind in ("count", "count_non_null", "n_unique"):
                cols.append(pl.Series(s.name, self._arrays[p][ids], dtype=pl.Int64))
            elif s.kind == "sum":
                cols.append(pl.Series(s.name, self._arrays[p][ids]))
            elif s.kind == "mean":
                sums, cnt = self._arrays[p + "_s"][ids], self._arrays[p + "_n"][ids]
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = sums / cnt
                cols.append(pl.Series(s.name, mean).fill_nan(None))
            elif s.kind in ("min", "max"):
                vals = pl.Series(s.name, self._arrays[p][ids])
                has = pl.Series(self._arrays[p + "_has"][ids])
                src = self._dtypes[s.name]
                vals = pl.select(pl.when(has).then(vals)).to_series().alias(s.name)
                cols.append(vals.cast(src) if not src.is_float() else vals)
            elif s.kind == "top_k":
                store = self._topk.get(s.name, [])
                src = self._dtypes[s.name]
                cols.append(pl.Series(s.name, [store[i] for i in ids.tolist()], dtype=pl.List(src)))
        return keys.with_columns(cols)

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain-data state (version 5): chunks of the table, and of the distinct pairs.

        ``rows`` is a list of :class:`~tideflow.state.SnapshotChunk`\\ s of table rows (key
        columns, accumulators, ``__id``): each snapshot adds one chunk of the keys changed
        since the previous one, and a key's last row is its state (the whole table again
        once the chunks hold more than twice its rows, or more than ``_MAX_CHUNKS`` chunks).
        The distinct pairs of each ``n_unique`` are their int64 codes (column ``__code``;
        :class:`DistinctPairs`) with their encoding (:meth:`DistinctPairs.encoding`) and, for
        a value dictionary, chunks of its values in id order: each snapshot adds one chunk of
        the codes that are new since the previous one and one of the new values (all of them
        again after the codes changed: a wider value range, a larger dictionary, a compaction).
        So a checkpoint writes what changed, not the whole state. Version 5 keys the pairs
        by family (:meth:`_plan`): an entry names its ``members`` (aggregate name and flag bit,
        -1 for the base) and its ``flag_bits``, its key ids carrying the flags; version 4 had
        one entry per ``n_unique`` and no flags. Version 3 wrote (key id, value) rows instead
        of codes.
        """
        self._settle()
        n = len(self.index)
        if self._rows is None or len(self._rows) >= _MAX_CHUNKS or self._row_count > 2 * n + 1024:
            self._rows, self._row_count = [], 0
            ids = np.arange(n, dtype=np.int64)
        else:
            ids = np.flatnonzero(self._dirty[:n])
        self._dirty = np.zeros(max(n, 64), dtype=np.bool_)
        if len(ids) or not self._rows:
            self._rows.append(frame_chunk(self._table_rows(ids), "lz4"))
            self._row_count += len(ids)
        pairs = {
            name: {
                **self._pair_entry(name, d),
                "members": [list(m) for m in self._members[name]],
                "flag_bits": self._flag_bits[name],
            }
            for name, d in self._distinct.items()
        }
        return {
            "version": 5,
            "rows": list(self._rows),
            "dtypes": _ipc(pl.DataFrame(schema=self._dtypes)),
            "pairs": pairs,
        }

    def _touch(self, ids: np.ndarray, n: int) -> None:
        """Mark keys changed since the last snapshot (once snapshots are chunked)."""
        if self._rows is not None:
            self._dirty = _grow(self._dirty, n, False)
            self._dirty[ids] = True

    def _table_rows(self, ids: np.ndarray) -> pl.DataFrame:
        """Rows of the table (key columns, accumulators, ``__id``) of the keys at ``ids``."""
        if not len(self.index):
            return pl.DataFrame()
        keys = self.index.frame()[ids]
        cols = [pl.Series(name, arr[ids]) for name, arr in self._arrays.items()]
        for name, store in self._topk.items():
            src = self._dtypes[name]
            lists = [store[i] for i in ids.tolist()]
            cols.append(pl.Series(f"__topk_{name}", lists, dtype=pl.List(src)))
        return keys.with_columns(*cols, pl.Series("__id", ids, dtype=pl.Int64))

    def _pair_entry(self, name: str, distinct: DistinctPairs) -> dict[str, Any]:
        """One ``n_unique``'s pairs: the earlier chunks and those of the new codes and values."""
        chunks = self._chunks.setdefault(name, [])
        values = self._value_chunks.setdefault(name, [])
        written = self._written.get(name)
        if distinct.new is None or written is None or written[0] != distinct.epoch:
            chunks.clear()  # nothing written yet, or the codes changed: every pair, once
            values.clear()
            codes, held = distinct.codes, 0
            distinct.track()
        else:
            codes, held = distinct.take_new(), written[1]
        if len(codes) or not chunks:
            # uncompressed: LZ4 cost four times the CPU of writing the codes plain
            chunks.append(frame_chunk(pl.DataFrame([pl.Series(_CODE, codes)])))
        dictionary = distinct.dictionary
        size = len(dictionary) if dictionary is not None else 0
        if size > held:
            values.append(frame_chunk(dictionary.frame()[held:], "lz4"))
        for kept in (chunks, values):
            if len(kept) > _MAX_CHUNKS:  # fold the newest (smallest) into one
                tail = [_from_ipc(c.read()) for c in kept[-_MERGE_CHUNKS:]]
                del kept[-_MERGE_CHUNKS:]
                kept.append(frame_chunk(pl.concat(tail, how="vertical_relaxed"), "lz4"))
        self._written[name] = (distinct.epoch, size)
        return {**distinct.encoding(), "codes": list(chunks), "values": list(values)}

    def _pair_frame(self, distinct: DistinctPairs) -> pl.DataFrame:
        """The distinct pairs of one ``n_unique``: key columns and ``__value``."""
        self._settle()
        pairs = distinct.frame()
        return self._with_keys(pairs.rename({"value": _VALUE}))

    def _with_keys(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """Pairs (``__id``, ``__value``) with the key columns of their ids instead."""
        keys = self.index.frame()
        if not keys.width:
            keys = pl.DataFrame(schema=dict.fromkeys(self.keys, pl.Null()))
        return keys[pairs.get_column("__id")].with_columns(pairs.get_column(_VALUE))

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (replaces the current state); versions 1 to 4 too."""
        version = snap.get("version")
        if version not in (1, 2, 3, 4, 5):
            msg = (
                f"aggregation state version {version!r} is not supported (expected 1 to 5); "
                "restore it with the tideflow release that wrote it, or start without it"
            )
            raise StateError(msg)
        self._rows, self._row_count = None, 0
        if version in (3, 4, 5):
            parts = list(snap.get("rows") or [])
            table = table_of_rows(parts, release=True)
            if parts and all(isinstance(p, SnapshotChunk) for p in parts):
                self._rows, self._row_count = parts, table.height  # referred to again
                self._dirty = np.zeros(max(table.height, 64), dtype=np.bool_)
        else:
            table = _from_ipc(snap["table"])
        self.index = KeyIndex(self.keys)
        self._arrays, self._topk, self._distinct, self._chunks = {}, {}, {}, {}
        self._value_chunks, self._written = {}, {}
        self._members, self._flag_bits, self._stale = {}, {}, set()
        self._dtypes = {}
        if table.height:
            self.index.lookup(table.select(self.keys))
            for c in table.columns:
                if c in self.keys:
                    continue
                if c.startswith("__topk_"):
                    self._topk[c[len("__topk_") :]] = table.get_column(c).to_list()
                else:
                    self._arrays[c] = table.get_column(c).to_numpy().copy()
        self._dtypes = dict(_from_ipc(snap["dtypes"]).schema)
        for name, data in snap.get("pairs", {}).items():
            five = version == 5
            self._members[name] = [list(m) for m in data["members"]] if five else [[name, -1]]
            self._flag_bits[name] = int(data["flag_bits"]) if five else 0
            if version in (4, 5):
                self._distinct[name] = self._load_codes(name, data)
                continue
            if version == 3:
                self._distinct[name] = self._load_chunks(name, data)
                continue
            frame = _from_ipc(data)
            if version == 1 and frame.width:  # a frame of (key..., value) rows, unnamed
                names = [*self.keys, _VALUE]
                frame = frame.rename(dict(zip(frame.columns, names, strict=True)))
            self._distinct[name] = self._load_pairs(frame)

    def _load_codes(self, name: str, entry: dict[str, Any]) -> DistinctPairs:
        """Distinct state from a version-4 entry: code chunks, encoding, dictionary values."""
        parts, value_parts = list(entry.get("codes") or []), list(entry.get("values") or [])
        distinct = decode_pairs(entry, deferred=self.deferred)
        shift = distinct.bits + self._flag_bits[name]
        top = max((int(r[-1] >> shift) for r in distinct.runs), default=-1)
        if top >= len(self.index):
            msg = (
                f"aggregation state: the n_unique pairs of {name!r} name keys that the "
                "state's table does not have; the checkpoint is damaged, start without it"
            )
            raise StateError(msg)
        if all(isinstance(p, SnapshotChunk) for p in [*parts, *value_parts]) and parts:
            self._chunks[name] = parts  # later checkpoints go on referring to them
            self._value_chunks[name] = value_parts
            size = len(distinct.dictionary) if distinct.dictionary is not None else 0
            self._written[name] = (distinct.epoch, size)
            distinct.track()
        return distinct

    def _load_chunks(self, name: str, parts: list[Any]) -> DistinctPairs:
        """Distinct state from the chunks (or IPC bytes) of a version-3 snapshot."""
        frames, _ = read_parts(parts)
        frame = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
        distinct = DistinctPairs(deferred=self.deferred)
        if frame.height:
            ids = frame.get_column("__id").to_numpy()
            if frame.get_column("__id").null_count() or not (
                ids.min() >= 0 and ids.max() < len(self.index)
            ):
                msg = (
                    f"aggregation state: the n_unique pairs of {name!r} name keys that the "
                    "state's table does not have; the checkpoint is damaged, start without it"
                )
                raise StateError(msg)
        distinct.load(frame.rename({_VALUE: "value"}) if frame.width else frame)
        if parts and all(isinstance(p, SnapshotChunk) for p in parts):
            self._chunks[name] = list(parts)  # later checkpoints go on referring to them
            distinct.track()
        return distinct

    def _load_pairs(self, frame: pl.DataFrame) -> DistinctPairs:
        """Distinct state from a frame of key columns and ``__value`` (keys known already)."""
        distinct = DistinctPairs(deferred=self.deferred)
        if not frame.height:
            if _VALUE in frame.columns:
                distinct.dtype = frame.schema[_VALUE]
            return distinct
        keys = list(self.keys)
        known = self.index.frame().with_row_index(_ID).with_columns(pl.col(_ID).cast(pl.Int64))
        got = frame.join(known, on=keys, how="left", maintain_order="left", nulls_equal=True)
        if got.get_column(_ID).null_count():
            msg = (
                "aggregation state: the n_unique pairs name keys that the state's table does "
                "not have; the checkpoint is damaged, start without it"
            )
            raise StateError(msg)
        distinct.add(got.get_column(_ID).to_numpy(), got.get_column(_VALUE), defer=False)
        return distinct

    # -- moving rows in and out (the on-disk backend's hot set) ---------------------------
    def _fill_of(self, column: str, dtype: Any) -> Any:
        """The value of an accumulator column for a key that has no data yet."""
        for s in self.specs:
            if s.kind in ("min", "max") and column == f"__{s.name}":
                if np.issubdtype(dtype, np.integer):
                    info = np.iinfo(np.int64)
                    return info.max if s.kind == "min" else info.min
                return np.inf if s.kind == "min" else -np.inf
        return False if dtype == np.bool_ else 0

    def export(self, ids: np.ndarray) -> pl.DataFrame:
        """Rows (key columns + accumulator columns) of the keys at ``ids``.

        The accumulator columns are those of :meth:`snapshot`'s table; :meth:`load` takes them
        back. Only for combinable aggregates (no ``n_unique``, ``top_k``).
        """
        frame = self.index.frame()
        rows = frame[ids] if frame.width else frame
        return rows.with_columns([pl.Series(name, arr[ids]) for name, arr in self._arrays.items()])

    def load(self, rows: pl.DataFrame, ids: np.ndarray | None = None) -> np.ndarray:
        """Add keys with their accumulators (rows from :meth:`export`); returns their ids.

        The keys must not be present yet, or ``ids`` gives the ids they already got (fresh
        ids, no data folded in yet).
        """
        if ids is None:
            ids, _ = self.index.lookup(rows.select(self.keys))
        n = len(self.index)
        for c in rows.columns:
            if c in self.keys:
                continue
            values = rows.get_column(c).to_numpy()
            old = self._arrays.get(c)
            dtype = old.dtype if old is not None else values.dtype
            arr = self._array(c, dtype, self._fill_of(c, dtype), n)
            arr[ids] = values
        self._touch(ids, n)
        return ids

    def compact(self, keep: np.ndarray) -> np.ndarray:
        """Forget the keys whose ``keep`` flag (boolean array by id) is False; see KeyIndex."""
        n = len(self.index)
        if n == 0 or bool(keep[:n].all()):
            return np.arange(n, dtype=np.int64)
        self._settle()
        kept = self.index.compact(keep)
        self._arrays = {name: arr[kept].copy() for name, arr in self._arrays.items()}
        self._topk = {name: [store[i] for i in kept.tolist()] for name, store in self._topk.items()}
        for fam, distinct in self._distinct.items():
            flag_bits = self._flag_bits.get(fam, 0)
            if flag_bits:  # the key ids carry the flags: keep every flag of a kept key
                width = 1 << flag_bits
                parts = (kept[:, None] * width + np.arange(width)).ravel()
                distinct.compact(parts, n * width)
            else:
                distinct.compact(kept, n)
            distinct.new = None  # the ids changed: the next snapshot writes every pair again
        self._chunks, self._value_chunks, self._written, self._rows = {}, {}, {}, None
        return kept

    def all_values(self) -> pl.DataFrame:
        """Every key with its aggregates, in id order."""
        n = len(self.index)
        if n == 0:
            return pl.DataFrame()
        return self.values(self.index.frame(), np.arange(n, dtype=np.int64))


class KeyedTable:
    """One row of typed state columns per key, stored columnar (Polars series by key id).

    Reads gather the rows of the keys a batch touches; writes scatter new rows back. State
    columns must be scalar types (numbers, booleans, strings, dates and times).
    """

    def __init__(self, keys: tuple[str, ...], schema: dict[str, pl.DataType]) -> None:
        self.keys = keys
        self.schema = schema
        self.index = KeyIndex(keys)
        self.capacity = 0
        self.cols: dict[str, pl.Series] = {}
        self.has = np.zeros(0, dtype=np.bool_)
        self._grow(1024)

    def _grow(self, n: int) -> None:
        if n <= self.capacity:
            return
        cap = max(n, 2 * self.capacity, 1024)
        extra = cap - self.capacity
        for name, dtype in self.schema.items():
            pad = pl.Series(name, [None] * extra, dtype=dtype)
            old = self.cols.get(name)
            self.cols[name] = pad if old is None else pl.concat([old, pad], rechunk=True)
        self.has = np.concatenate([self.has, np.zeros(extra, dtype=np.bool_)])
        self.capacity = cap

    def __len__(self) -> int:
        return int(self.has.sum())

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        """State rows (keys + state columns) of the distinct ``keys`` that have state."""
        ids, _ = self.index.lookup(keys)
        self._grow(len(self.index))
        present = self.has[ids]
        sel = ids[present]
        idx = pl.Series(sel)
        return keys.filter(pl.Series(present)).with_columns(
            [self.cols[c].gather(idx).alias(c) for c in self.schema]
        )

    def put(self, rows: pl.DataFrame) -> None:
        """Replace the state of the keys in ``rows`` (keys + state columns, distinct keys)."""
        if rows.height == 0:
            return
        ids, _ = self.index.lookup(rows.select(self.keys))
        self._grow(len(self.index))
        idx = pl.Series(ids)
        for c, dtype in self.schema.items():
            self.cols[c].scatter(idx, rows.get_column(c).cast(dtype))
        self.has[ids] = True

    def delete(self, keys: pl.DataFrame) -> None:
        """Forget the state of ``keys``."""
        ids, _ = self.index.lookup(keys)
        self._grow(len(self.index))
        self.has[ids] = False

    def compact(self, keep: np.ndarray) -> np.ndarray:
        """Forget the keys whose ``keep`` flag is False and the deleted ones; see KeyIndex."""
        n = len(self.index)
        flags = keep[:n] & self.has[:n]
        kept = self.index.compact(flags)
        if len(kept) == n:
            return kept
        idx = pl.Series(kept)
        self.cols = {c: self.cols[c].gather(idx) for c in self.schema}
        self.has = np.ones(len(kept), dtype=np.bool_)
        self.capacity = len(kept)
        self._grow(max(len(kept), 1))
        return kept

    def snapshot(self) -> dict[str, Any]:
        """Plain data: an Arrow IPC table of the keys with state and their columns."""
        n = len(self.index)
        if n == 0:
            return {"version": 1, "table": _ipc(pl.DataFrame())}
        mask = pl.Series(self.has[:n])
        table = (
            self.index.frame()
            .with_columns([self.cols[c].slice(0, n).alias(c) for c in self.schema])
            .filter(mask)
        )
        return {"version": 1, "table": _ipc(table)}

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`."""
        if snap.get("version") != 1:
            msg = f"keyed state version {snap.get('version')!r} is not supported (expected 1)"
            raise StateError(msg)
        self.__init__(self.keys, self.schema)  # type: ignore[misc]
        table = _from_ipc(snap["table"])
        if table.height:
            self.put(table)
