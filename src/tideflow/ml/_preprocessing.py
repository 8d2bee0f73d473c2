"""Feature preprocessing: running standard scaler, one-hot encoding, feature hashing."""

from __future__ import annotations

import zlib
from collections.abc import Hashable
from typing import Any

import numpy as np

from tideflow.ml._base import Transformer, _check_positive
from tideflow.ml._data import Cols, FeatureSpace, as_cols

__all__ = ["FeatureHasher", "OneHotEncoder", "StandardScaler"]


class StandardScaler(Transformer):
    """Scale each feature to zero mean and unit variance with running (Welford) statistics.

    Features missing from a record are not updated. ``learn_many`` merges the batch's
    statistics exactly (Chan et al.), so it equals ``learn_one`` over the same records.

    Parameters
    ----------
    with_std
        Divide by the running standard deviation (otherwise only center).

    Examples
    --------
    >>> s = StandardScaler()
    >>> for v in [1.0, 2.0, 3.0]:
    ...     s.learn_one({"x": v})
    >>> round(s.transform_one({"x": 3.0})["x"], 4)
    1.2247
    """

    def __init__(self, with_std: bool = True) -> None:
        self.with_std = with_std
        self._fs = FeatureSpace()
        self._n: list[float] = []
        self._mean: list[float] = []
        self._m2: list[float] = []
        self._std: list[float] = []  # derived from n and m2 (0.0 where the variance is not > 0)

    def _grow(self) -> None:
        k = len(self._fs) - len(self._n)
        if k > 0:
            self._n.extend([0.0] * k)
            self._mean.extend([0.0] * k)
            self._m2.extend([0.0] * k)
            self._std.extend([0.0] * k)

    def _set_std(self) -> None:
        self._std = [_std(m2, n) for n, m2 in zip(self._n, self._m2, strict=True)]

    def learn_one(self, x: dict[Hashable, Any], y: Any = None) -> None:
        """Update the statistics with one record."""
        idx = self._fs.index
        n, mean, m2, std = self._n, self._mean, self._m2, self._std
        for k, v in x.items():
            i = idx.get(k)
            if i is None:
                i = self._fs.add(k)
                self._grow()
            if v is None or v != v:
                continue
            ni = n[i] = n[i] + 1.0
            d = v - mean[i]
            mean[i] += d / ni
            m2i = m2[i] = m2[i] + d * (v - mean[i])
            var = m2i / ni
            std[i] = var**0.5 if var > 0 else 0.0

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        """Scale one record with the current statistics."""
        idx = self._fs.index
        mean = self._mean
        out: dict[Hashable, Any] = {}
        if not self.with_std:
            for k, v in x.items():
                i = idx.get(k)
                out[k] = 0.0 if i is None else v - mean[i]
            return out
        std = self._std
        for k, v in x.items():
            i = idx.get(k)
            if i is None:
                out[k] = 0.0
                continue
            s = std[i]
            out[k] = (v - mean[i]) / s if s > 0 else 0.0
        return out

    def learn_many(self, X: Any, y: Any = None) -> None:
        """Merge the statistics of one mini-batch."""
        Xc = as_cols(X)
        cols = np.asarray(self._fs.columns(Xc, grow=True), dtype=np.int64)
        self._grow()
        M = Xc.matrix("StandardScaler")
        nan = np.isnan(M)
        if nan.any():
            ok = ~nan
            nb = ok.sum(axis=0).astype(np.float64)
            Mz = np.where(ok, M, 0.0)
            mb = np.divide(Mz.sum(axis=0), nb, out=np.zeros(len(nb)), where=nb > 0)
            m2b = (np.where(ok, M - mb, 0.0) ** 2).sum(axis=0)
        else:
            nb = np.full(M.shape[1], float(M.shape[0]))
            mb = M.mean(axis=0) if M.shape[0] else np.zeros(M.shape[1])
            m2b = ((M - mb) ** 2).sum(axis=0)
        n = np.asarray(self._n)[cols]
        mean = np.asarray(self._mean)[cols]
        m2 = np.asarray(self._m2)[cols]
        tot = n + nb
        safe = np.where(tot > 0, tot, 1.0)
        delta = mb - mean
        new_mean = np.where(tot > 0, mean + delta * nb / safe, mean)
        new_m2 = np.where(tot > 0, m2 + m2b + delta**2 * n * nb / safe, m2)
        for j, i in enumerate(cols.tolist()):
            self._n[i] = float(tot[j])
            self._mean[i] = float(new_mean[j])
            self._m2[i] = float(new_m2[j])
        self._set_std()

    def transform_many(self, X: Any) -> Cols:
        """Scale a mini-batch (NaN stays NaN, meaning missing)."""
        Xc = as_cols(X)
        M = Xc.matrix("StandardScaler")
        idx = self._fs.columns(Xc, grow=False)
        known = np.asarray([i >= 0 for i in idx], dtype=bool)
        safe = np.asarray([max(i, 0) for i in idx], dtype=np.int64)
        mean = np.where(known, np.asarray([*self._mean, 0.0])[safe], 0.0)
        out = M - mean
        if self.with_std:
            n = np.asarray([*self._n, 0.0])[safe]
            m2 = np.asarray([*self._m2, 0.0])[safe]
            var = np.divide(m2, n, out=np.zeros(len(n)), where=n > 0)
            std = np.sqrt(np.maximum(var, 0.0))
            pos = std > 0
            if pos.all():
                out /= std
            else:
                out = np.where(
                    pos, out / np.where(pos, std, 1.0), np.where(np.isnan(M), np.nan, 0.0)
                )
        if not known.all():
            out[:, ~known] = np.where(np.isnan(M[:, ~known]), np.nan, 0.0)
        return Cols(list(Xc.names), None, Xc.n, out, Xc.positional)

    def _get_state(self) -> dict[str, Any]:
        return {
            "features": self._fs.to_state(),
            "n": np.asarray(self._n),
            "mean": np.asarray(self._mean),
            "m2": np.asarray(self._m2),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        self._n = np.asarray(state["n"], dtype=float).tolist()
        self._mean = np.asarray(state["mean"], dtype=float).tolist()
        self._m2 = np.asarray(state["m2"], dtype=float).tolist()
        self._set_std()

    @property
    def means(self) -> dict[Hashable, float]:
        return dict(zip(self._fs.names, self._mean, strict=True))

    @property
    def vars(self) -> dict[Hashable, float]:
        return {
            k: (m2 / n if n > 0 else 0.0)
            for k, n, m2 in zip(self._fs.names, self._n, self._m2, strict=True)
        }

    @property
    def counts(self) -> dict[Hashable, float]:
        return dict(zip(self._fs.names, self._n, strict=True))


def _std(m2: float, n: float) -> float:
    var = m2 / n if n > 0 else 0.0
    return float(var**0.5) if var > 0 else 0.0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, str)


class OneHotEncoder(Transformer):
    """One-hot encode categorical (non-numeric) features; numeric features pass through.

    A categorical value ``v`` of feature ``k`` becomes the feature ``"k_v"`` with value 1 (River's
    naming). Unlike River's encoder, numbers are left as they are, so the encoder can sit in front
    of a linear model on mixed records without a ``Select``.

    Examples
    --------
    >>> enc = OneHotEncoder()
    >>> enc.learn_one({"color": "red", "size": 2.0})
    >>> enc.transform_one({"color": "red", "size": 2.0})
    {'color_red': 1.0, 'size': 2.0}
    """

    def __init__(self) -> None:
        self._cats: dict[Hashable, list[Any]] = {}

    def learn_one(self, x: dict[Hashable, Any], y: Any = None) -> None:
        """Remember the categories of one record."""
        for k, v in x.items():
            if v is None or _is_number(v):
                continue
            seen = self._cats.setdefault(k, [])
            if v not in seen:
                seen.append(v)

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        """Encode one record."""
        out: dict[Hashable, Any] = {}
        for k, v in x.items():
            if v is None:
                continue
            if _is_number(v):
                out[k] = v
            else:
                out[f"{k}_{v}"] = 1.0
        return out

    def learn_many(self, X: Any, y: Any = None) -> None:
        """Remember the categories of a mini-batch."""
        Xc = as_cols(X)
        for k, c in zip(Xc.names, Xc.cols, strict=True):
            if c.dtype.kind != "O":
                continue
            seen = self._cats.setdefault(k, [])
            for v in dict.fromkeys(c.tolist()):
                if v is not None and not _is_number(v) and v not in seen:
                    seen.append(v)

    def transform_many(self, X: Any) -> Cols:
        """Encode a mini-batch into 0/1 columns (categories seen so far or in the batch)."""
        Xc = as_cols(X)
        names: list[Hashable] = []
        cols: list[np.ndarray] = []
        for k, c in zip(Xc.names, Xc.cols, strict=True):
            if c.dtype.kind != "O":
                names.append(k)
                cols.append(c)
                continue
            cats = list(self._cats.get(k, []))
            for v in dict.fromkeys(c.tolist()):
                if v is not None and not _is_number(v) and v not in cats:
                    cats.append(v)
            for v in cats:
                names.append(f"{k}_{v}")
                cols.append((c == v).astype(np.float64))
        return Cols(names, cols, Xc.n)

    def _get_state(self) -> dict[str, Any]:
        return {"categories": [[k, list(v)] for k, v in self._cats.items()]}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._cats = {k: list(v) for k, v in state["categories"]}


def _hash(s: str, seed: int) -> int:
    return zlib.crc32(s.encode(), seed & 0xFFFFFFFF)


class FeatureHasher(Transformer):
    """Hash feature names (and categorical values) into ``n_features`` signed buckets.

    Numeric feature ``k`` adds ``±value`` to bucket ``h(k)``; categorical ``k=v`` adds ``±1`` to
    bucket ``h("k=v")``. The hash is CRC-32 (stable across processes). River's default is
    2**20 buckets; here it is 1024 because the mini-batch path is dense.

    Examples
    --------
    >>> h = FeatureHasher(n_features=16, seed=1)
    >>> out = h.transform_one({"city": "Oslo", "n": 2.0})
    >>> sorted(abs(v) for v in out.values())
    [1.0, 2.0]
    """

    def __init__(self, n_features: int = 1024, seed: int = 0) -> None:
        _check_positive("FeatureHasher", "n_features", n_features)
        self.n_features = n_features
        self.seed = seed
        self._cache: dict[str, tuple[int, float]] = {}

    def _bucket(self, key: str) -> tuple[int, float]:
        b = self._cache.get(key)
        if b is None:
            h = _hash(key, self.seed)
            b = (h % self.n_features, 1.0 if (h >> 31) & 1 == 0 else -1.0)
            if len(self._cache) < 1_000_000:
                self._cache[key] = b
        return b

    def learn_one(self, x: dict[Hashable, Any], y: Any = None) -> None:
        """Stateless: nothing to learn."""

    def learn_many(self, X: Any, y: Any = None) -> None:
        """Stateless: nothing to learn."""

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        """Hash one record into a sparse dict of bucket -> value."""
        out: dict[Hashable, Any] = {}
        for k, v in x.items():
            if v is None:
                continue
            if _is_number(v):
                b, s = self._bucket(str(k))
                val = s * float(v)
            else:
                b, s = self._bucket(f"{k}={v}")
                val = s
            out[b] = out.get(b, 0.0) + val
        return out

    def transform_many(self, X: Any) -> Cols:
        """Hash a mini-batch into a dense ``(n, n_features)`` matrix."""
        Xc = as_cols(X)
        out = np.zeros((Xc.n, self.n_features))
        for k, c in zip(Xc.names, Xc.cols, strict=True):
            if c.dtype.kind != "O":
                b, s = self._bucket(str(k))
                out[:, b] += s * np.nan_to_num(c, nan=0.0)
                continue
            vals = c.tolist()
            for i, v in enumerate(vals):
                if v is None:
                    continue
                if _is_number(v):
                    b, s = self._bucket(str(k))
                    out[i, b] += s * float(v)
                else:
                    b, s = self._bucket(f"{k}={v}")
                    out[i, b] += s
        return Cols(list(range(self.n_features)), None, Xc.n, out)
