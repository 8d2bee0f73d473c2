"""Input conversion: dicts, NumPy arrays and Polars/Arrow/pandas tables to columns and matrices.

:class:`FeatureSpace` maps feature names to column indices and grows when new features appear;
:class:`LabelSpace` does the same for class labels. :class:`Cols` is the internal mini-batch:
named columns (numeric as float64, anything else as object arrays), optionally backed by one
float matrix.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from tideflow._errors import DataError

__all__ = ["Cols", "FeatureSpace", "LabelSpace", "as_cols", "as_labels"]


class Cols:
    """A mini-batch as named columns; ``mat`` holds them as one float matrix when all numeric."""

    __slots__ = ("_mat", "cols", "n", "names", "positional")

    def __init__(
        self,
        names: list[Hashable],
        cols: list[np.ndarray] | None,
        n: int,
        mat: np.ndarray | None = None,
        positional: bool = False,
    ) -> None:
        self.names = names
        self.positional = positional
        self.n = n
        self._mat = mat
        if cols is None:
            assert mat is not None
            cols = [mat[:, j] for j in range(mat.shape[1])]
        self.cols = cols

    @property
    def numeric(self) -> bool:
        return self._mat is not None or all(c.dtype.kind in "fiub" for c in self.cols)

    def matrix(self, step: str = "model") -> np.ndarray:
        """All columns as one float64 matrix (NaN for missing)."""
        if self._mat is None:
            if not self.cols:
                self._mat = np.zeros((self.n, 0))
            else:
                try:
                    self._mat = np.column_stack([c.astype(np.float64) for c in self.cols])
                except (TypeError, ValueError) as e:
                    bad = [
                        n for n, c in zip(self.names, self.cols, strict=True) if c.dtype.kind == "O"
                    ]
                    msg = (
                        f"{step} needs numeric features, got non-numeric columns {bad[:5]}; put "
                        "preprocessing.OneHotEncoder() or FeatureHasher() before it"
                    )
                    raise DataError(msg) from e
        return self._mat

    def rows(self) -> list[dict[Hashable, Any]]:
        """The batch as a list of dicts (missing values, NaN/None, left out)."""
        out: list[dict[Hashable, Any]] = [{} for _ in range(self.n)]
        for name, col in zip(self.names, self.cols, strict=True):
            vals = col.tolist()
            for i, v in enumerate(vals):
                if v is None or (isinstance(v, float) and v != v):
                    continue
                out[i][name] = v
        return out

    def take(self, idx: np.ndarray) -> Cols:
        if self._mat is not None:
            return Cols(self.names, None, len(idx), self._mat[idx], self.positional)
        return Cols(self.names, [c[idx] for c in self.cols], len(idx), None, self.positional)


def _column(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind in "US":
        return arr.astype(object)
    if arr.dtype == object:
        try:
            return arr.astype(np.float64)
        except (TypeError, ValueError):
            return arr
    return arr


def as_cols(X: Any) -> Cols:
    """Convert a NumPy array, a Polars/pandas DataFrame, an Arrow table, a dict of columns or a
    list of dicts to :class:`Cols`."""
    if isinstance(X, Cols):
        return X
    if isinstance(X, np.ndarray):
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        if X.ndim != 2:
            msg = f"expected a 2-d array of features, got shape {X.shape}"
            raise DataError(msg)
        names: list[Hashable] = list(range(X.shape[1]))
        if X.dtype.kind in "fiub":
            mat = np.ascontiguousarray(X, dtype=np.float64)
            return Cols(names, None, X.shape[0], mat, positional=True)
        cols = [_column(X[:, j]) for j in range(X.shape[1])]
        return Cols(names, cols, X.shape[0], positional=True)
    mod = type(X).__module__
    if mod.startswith("pyarrow"):
        import polars as pl

        X = pl.from_arrow(X)
        mod = type(X).__module__
    if mod.startswith("polars"):
        import polars as pl

        if isinstance(X, pl.LazyFrame):
            X = X.collect()
        cols = []
        for s in X.get_columns():
            if s.dtype.is_numeric() or s.dtype == pl.Boolean:
                cols.append(s.cast(pl.Float64).to_numpy())
            else:
                cols.append(np.asarray(s.to_list(), dtype=object))
        return Cols(list(X.columns), cols, X.height)
    if mod.startswith("pandas"):
        cols = [_column(X[c].to_numpy()) for c in X.columns]
        return Cols(list(X.columns), cols, len(X))
    if isinstance(X, dict):
        keys = list(X)
        cols = [_column(X[k]) for k in keys]
        n = len(cols[0]) if cols else 0
        return Cols(keys, cols, n)
    if isinstance(X, Sequence):
        rows = list(X)
        keys_d: dict[Hashable, None] = {}
        for r in rows:
            for k in r:
                keys_d.setdefault(k, None)
        names = list(keys_d)
        cols = [_column([r.get(k, np.nan) for r in rows]) for k in names]
        return Cols(names, cols, len(rows))
    msg = f"cannot read features from a {type(X).__name__}; pass a NumPy array or a DataFrame"
    raise DataError(msg)


def as_labels(y: Any) -> np.ndarray:
    """Convert labels (array, Series, list) to a 1-d NumPy array."""
    if hasattr(y, "to_numpy") and not isinstance(y, np.ndarray):
        y = y.to_numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr


class FeatureSpace:
    """Feature name <-> column index mapping that grows as new features appear.

    Examples
    --------
    >>> fs = FeatureSpace()
    >>> fs.vector({"a": 1.0, "b": 2.0}).tolist()
    [1.0, 2.0]
    >>> fs.vector({"c": 3.0, "a": 1.0}).tolist()
    [1.0, 0.0, 3.0]
    >>> fs.names
    ['a', 'b', 'c']
    """

    __slots__ = ("_order", "index", "names")

    def __init__(self, names: Iterable[Hashable] = ()) -> None:
        self.names: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self._order: tuple[Hashable, ...] = ()
        for n in names:
            self.add(n)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: Hashable) -> int:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
            self._order = tuple(self.names)
        return i

    def vector(self, x: dict[Hashable, Any], *, grow: bool = True, fill: float = 0.0) -> np.ndarray:
        """``x`` as a float vector over the known features (new ones added when ``grow``)."""
        if tuple(x) == self._order:  # same features in the same order: one C-level copy
            try:
                return np.fromiter(x.values(), np.float64, len(x))
            except (TypeError, ValueError):
                pass
        index = self.index
        if grow:
            for k in x:
                if k not in index:
                    self.add(k)
        v = np.full(len(self.names), fill)
        for k, val in x.items():
            i = index.get(k)
            if i is not None and val is not None:
                v[i] = val
        return v

    def columns(self, X: Cols, *, grow: bool = True) -> list[int]:
        """Feature index of each column of ``X`` (-1 if unknown and not growing).

        Columns of a plain NumPy array are positional: column ``j`` is feature number ``j`` in
        the order features first appeared (new trailing columns are named by their position).
        """
        if X.positional:
            d = len(X.names)
            if grow:
                while len(self.names) < d:
                    self.add(len(self.names))
            return [j if j < len(self.names) else -1 for j in range(d)]
        if grow:
            return [self.add(k) for k in X.names]
        return [self.index.get(k, -1) for k in X.names]

    def matrix(
        self, X: Cols, *, grow: bool = True, fill: float = 0.0, step: str = "model"
    ) -> np.ndarray:
        """The batch as a float matrix with one column per known feature, in index order."""
        idx = self.columns(X, grow=grow)
        d = len(self.names)
        if len(idx) == d and (X.positional or X.names == self.names):
            m = X.matrix(step)
            if fill != fill or not np.isnan(m).any():
                return m
            return np.where(np.isnan(m), fill, m)
        out = np.full((X.n, d), fill)
        keep = [j for j, i in enumerate(idx) if i >= 0]
        if keep:
            src = X.matrix(step)
            tgt = np.asarray([idx[j] for j in keep])
            block = src[:, keep]
            if fill == fill:
                block = np.where(np.isnan(block), fill, block)
            out[:, tgt] = block
        return out

    def to_state(self) -> list[Hashable]:
        return list(self.names)


class LabelSpace:
    """Class label <-> index mapping that grows as new labels appear."""

    __slots__ = ("index", "labels")

    def __init__(self, labels: Iterable[Hashable] = ()) -> None:
        self.labels: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        for lab in labels:
            self.add(lab)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, label: Hashable) -> int:
        i = self.index.get(label)
        if i is None:
            i = self.index[label] = len(self.labels)
            self.labels.append(label)
        return i

    def encode(self, y: np.ndarray, *, grow: bool = True) -> np.ndarray:
        """Labels to indices (-1 for unknown labels when not growing)."""
        if len(y) == 0:
            return np.zeros(0, dtype=np.int64)
        if 0 < len(self.labels) <= 8 and y.dtype.kind in "biuUS":  # known labels: k comparisons
            codes_fast = np.full(len(y), -1, dtype=np.int64)
            try:
                for j, lab in enumerate(self.labels):
                    codes_fast[y == lab] = j
            except (TypeError, ValueError):  # pragma: no cover - incomparable label types
                codes_fast[:] = -1
            if (codes_fast >= 0).all():
                return codes_fast
        uniq, first, inv = np.unique(y, return_index=True, return_inverse=True)
        codes = np.empty(len(uniq), dtype=np.int64)
        for j in np.argsort(first, kind="stable").tolist():  # first-seen order, as per record
            u = plain_label(uniq[j])
            if grow:
                codes[j] = self.add(u)
            else:
                codes[j] = self.index.get(u, -1)
        return codes[inv.reshape(-1)]

    def decode(self, idx: np.ndarray) -> np.ndarray:
        if not self.labels:
            return np.full(len(idx), None, dtype=object)
        return np.asarray(self.labels)[idx]  # type: ignore[no-any-return]


def plain_label(v: Any) -> Any:
    """NumPy scalars to Python scalars (so labels stay plain data)."""
    return v.item() if isinstance(v, np.generic) else v
