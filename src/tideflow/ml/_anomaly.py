"""Anomaly detection: Half-Space Trees and a per-key robust EWMA z-score."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from tideflow.ml._base import AnomalyDetector, _check_positive
from tideflow.ml._data import Cols, FeatureSpace, as_cols
from tideflow.ml._tree_base import rng_from_state, rng_state

__all__ = ["HalfSpaceTrees", "RobustZScore"]


class HalfSpaceTrees(AnomalyDetector):
    """Half-Space Trees (Tan, Ting and Liu, 2011): mass profiles of random half-space trees.

    Each of ``n_trees`` complete binary trees of depth ``height`` splits a random feature at the
    middle of a randomly shifted and widened work range. Records arriving in the current window
    of ``window_size`` records are counted per node (latest mass); at the end of each window
    those counts become the reference mass. ``score_one`` sums, over the trees, the reference
    mass of the deepest node on the record's path whose mass is at least 10% of the window
    (or the leaf), times 2^depth, and returns ``1 - sum / max`` so that 1 is most anomalous.
    Features are expected in ``limits`` (default [0, 1]); scale them first otherwise. Scores
    are 0 until the first window is complete.

    ``learn_many`` splits the batch at window boundaries, so it equals ``learn_one`` record by
    record exactly.

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> X, y = synth.Anomalies(seed=1).arrays(3000)
    >>> hst = HalfSpaceTrees(seed=1)
    >>> hst.learn_many(X[:2000])
    >>> s = hst.score_many(X[2000:])
    >>> float(s[y[2000:]].mean()) > float(s[~y[2000:]].mean())
    True
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: dict[Hashable, tuple[float, float]] | None = None,
        seed: int | None = None,
    ) -> None:
        _check_positive("HalfSpaceTrees", "n_trees", n_trees)
        _check_positive("HalfSpaceTrees", "height", height)
        _check_positive("HalfSpaceTrees", "window_size", window_size)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.limits = limits
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._fs = FeatureSpace()
        self._feat: list[list[int]] = []
        self._thr: list[list[float]] = []
        self._r: list[list[float]] = []
        self._l: list[list[float]] = []
        self._count = 0
        self._windows = 0

    @property
    def size_limit(self) -> float:
        return 0.1 * self.window_size

    def _build(self, names: list[Hashable]) -> None:
        for n in names:
            self._fs.add(n)
        d = len(self._fs)
        lims = self.limits or {}
        lo = np.asarray([lims.get(n, (0.0, 1.0))[0] for n in self._fs.names], dtype=float)
        hi = np.asarray([lims.get(n, (0.0, 1.0))[1] for n in self._fs.names], dtype=float)
        n_inner = 2**self.height - 1
        n_nodes = 2 ** (self.height + 1) - 1
        rng = self._rng
        for _ in range(self.n_trees):
            s = rng.uniform(lo, hi)
            r = 2.0 * np.maximum(s - lo, hi - s)
            a, b = s - r, s + r
            feat = [0] * n_inner
            thr = [0.0] * n_inner
            ranges: list[tuple[np.ndarray, np.ndarray]] = [(a, b)] + [None] * (n_nodes - 1)  # type: ignore[list-item]
            for node in range(n_inner):
                na, nb = ranges[node]
                q = int(rng.integers(d))
                mid = 0.5 * (na[q] + nb[q])
                feat[node], thr[node] = q, float(mid)
                la, lb, ra, rb = na.copy(), nb.copy(), na.copy(), nb.copy()
                lb[q] = mid
                ra[q] = mid
                ranges[2 * node + 1] = (la, lb)
                ranges[2 * node + 2] = (ra, rb)
            self._feat.append(feat)
            self._thr.append(thr)
            self._r.append([0.0] * n_nodes)
            self._l.append([0.0] * n_nodes)

    def _vals(self, x: dict[Hashable, Any]) -> list[float]:
        return [float(x.get(n, 0.0) or 0.0) for n in self._fs.names]

    def learn_one(self, x: dict[Hashable, Any], y: Any = None) -> None:
        """Count one record in the current window."""
        if not self._feat:
            self._build(list(x))
        v = self._vals(x)
        h = self.height
        for feat, thr, lm in zip(self._feat, self._thr, self._l, strict=True):
            node = 0
            for _ in range(h):
                lm[node] += 1.0
                node = 2 * node + 1 if v[feat[node]] < thr[node] else 2 * node + 2
            lm[node] += 1.0
        self._count += 1
        if self._count % self.window_size == 0:
            self._swap()

    def _swap(self) -> None:
        self._r = self._l
        n_nodes = len(self._r[0])
        self._l = [[0.0] * n_nodes for _ in range(self.n_trees)]
        self._windows += 1

    def _max_score(self) -> float:
        return self.n_trees * self.window_size * 2.0**self.height

    def score_one(self, x: dict[Hashable, Any]) -> float:
        """Anomaly score in [0, 1] (1: most anomalous); 0 before the first full window."""
        if not self._windows:
            return 0.0
        v = self._vals(x)
        h, lim = self.height, self.size_limit
        s = 0.0
        for feat, thr, rm in zip(self._feat, self._thr, self._r, strict=True):
            node, depth = 0, 0
            while depth < h and rm[node] >= lim:
                node = 2 * node + 1 if v[feat[node]] < thr[node] else 2 * node + 2
                depth += 1
            s += rm[node] * 2.0**depth
        return 1.0 - s / self._max_score()

    # -- mini-batch -----------------------------------------------------------------------------
    def _matrix(self, X: Any) -> np.ndarray:
        Xc: Cols = as_cols(X)
        if not self._feat:
            self._build(list(Xc.names))
        return np.nan_to_num(self._fs.matrix(Xc, grow=False, fill=0.0, step="HalfSpaceTrees"))  # type: ignore[no-any-return]

    def _paths(self, M: np.ndarray) -> np.ndarray:
        """Node index per (row, tree, level 0..height)."""
        F = np.asarray(self._feat)
        T = np.asarray(self._thr)
        n, t = M.shape[0], self.n_trees
        P = np.zeros((n, t, self.height + 1), dtype=np.int64)
        node = np.zeros((n, t), dtype=np.int64)
        tt = np.arange(t)[None, :]
        rows = np.arange(n)[:, None]
        for lev in range(self.height):
            P[:, :, lev] = node
            f = F[tt, node]
            go_left = M[rows, f] < T[tt, node]
            node = np.where(go_left, 2 * node + 1, 2 * node + 2)
        P[:, :, self.height] = node
        return P

    def learn_many(self, X: Any, y: Any = None) -> None:
        """Count a mini-batch, swapping windows exactly where ``learn_one`` would."""
        M = self._matrix(X)
        if M.shape[0] == 0:
            return
        P = self._paths(M)
        n_nodes = len(self._l[0])
        offs = (np.arange(self.n_trees) * n_nodes)[None, :, None]
        start = 0
        while start < M.shape[0]:
            room = self.window_size - self._count % self.window_size
            stop = min(M.shape[0], start + room)
            flat = (P[start:stop] + offs).ravel()
            L = np.asarray(self._l).ravel() + np.bincount(flat, minlength=self.n_trees * n_nodes)
            self._l = L.reshape(self.n_trees, n_nodes).astype(float).tolist()
            self._count += stop - start
            if self._count % self.window_size == 0:
                self._swap()
            start = stop

    def score_many(self, X: Any) -> np.ndarray:
        """Anomaly scores for a mini-batch (same as ``score_one`` per row)."""
        M = self._matrix(X)
        if not self._windows:
            return np.zeros(M.shape[0])
        P = self._paths(M)
        R = np.asarray(self._r)
        tt = np.arange(self.n_trees)[None, :]
        mass = R[tt[:, :, None], P]  # (n, t, levels)
        ok = mass >= self.size_limit
        # the stop level is the first level whose mass is below the limit (or the leaf)
        below = ~ok[:, :, : self.height]
        stop = np.where(below.any(axis=2), below.argmax(axis=2), self.height)
        m = np.take_along_axis(mass, stop[:, :, None], axis=2)[:, :, 0]
        s = (m * 2.0**stop).sum(axis=1)
        return 1.0 - s / self._max_score()  # type: ignore[no-any-return]

    def _get_state(self) -> dict[str, Any]:
        return {
            "features": self._fs.to_state(),
            "feat": np.asarray(self._feat, dtype=np.int64),
            "thr": np.asarray(self._thr),
            "r": np.asarray(self._r),
            "l": np.asarray(self._l),
            "count": self._count,
            "windows": self._windows,
            "rng": rng_state(self._rng),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        self._feat = np.asarray(state["feat"], dtype=np.int64).tolist()
        self._thr = np.asarray(state["thr"], dtype=float).tolist()
        self._r = np.asarray(state["r"], dtype=float).tolist()
        self._l = np.asarray(state["l"], dtype=float).tolist()
        self._count, self._windows = int(state["count"]), int(state["windows"])
        self._rng = rng_from_state(state["rng"])


class RobustZScore(AnomalyDetector):
    """Per-key robust z-score on exponentially weighted statistics.

    For each key (the value of feature ``key``, or one global key) and numeric feature, keeps
    an EWMA of the value and of its absolute deviation; the scale is ``1.2533 * deviation``
    (the Gaussian ratio of standard to mean absolute deviation). Updates are winsorised at
    ``clip`` scales, so an outlier moves the statistics only a little. ``score_one`` is the
    largest absolute z-score over the features (0 during the first ``warmup`` records of a
    key).

    Examples
    --------
    >>> det = RobustZScore(key="card")
    >>> for i in range(200):
    ...     det.learn_one({"card": "a", "amount": 10.0 + (i % 5)})
    ...     det.learn_one({"card": "b", "amount": 1000.0 + (i % 5)})
    >>> det.score_one({"card": "a", "amount": 1000.0}) > 50
    True
    >>> det.score_one({"card": "b", "amount": 1000.0}) < 3
    True
    """

    def __init__(
        self, alpha: float = 0.02, key: Hashable | None = None, warmup: int = 20, clip: float = 3.0
    ) -> None:
        _check_positive("RobustZScore", "alpha", alpha)
        _check_positive("RobustZScore", "clip", clip)
        if alpha >= 1:
            from tideflow._errors import ConfigError

            msg = f"RobustZScore: alpha must be in (0, 1), got {alpha}"
            raise ConfigError(msg)
        self.alpha = alpha
        self.key = key
        self.warmup = warmup
        self.clip = clip
        self._fs = FeatureSpace()
        self._stats: dict[Any, list[Any]] = {}  # key -> [count, mean array, dev array]

    def _vec(self, x: dict[Hashable, Any], grow: bool) -> np.ndarray:
        if self.key is not None:
            x = {k: v for k, v in x.items() if k != self.key}
        return self._fs.vector(
            {k: v for k, v in x.items() if isinstance(v, (int, float))}, grow=grow, fill=math.nan
        )

    def _get(self, k: Any) -> list[Any]:
        st = self._stats.get(k)
        d = len(self._fs)
        if st is None:
            st = self._stats[k] = [0, np.full(d, math.nan), np.zeros(d)]
        elif len(st[1]) < d:
            st[1] = np.concatenate([st[1], np.full(d - len(st[1]), math.nan)])
            st[2] = np.concatenate([st[2], np.zeros(d - len(st[2]))])
        return st

    def _score(self, st: list[Any] | None, v: np.ndarray) -> float:
        if st is None or st[0] < self.warmup:
            return 0.0
        d = min(len(v), len(st[1]))
        scale = 1.2533 * st[2][:d] + 1e-9 * (1.0 + np.abs(st[1][:d]))
        z = np.abs(v[:d] - st[1][:d]) / scale
        z = z[np.isfinite(z)]
        return float(z.max()) if len(z) else 0.0

    def _update(self, st: list[Any], v: np.ndarray) -> None:
        a = self.alpha
        mean, dev = st[1], st[2]
        ok = ~np.isnan(v)
        first = ok & np.isnan(mean)
        mean[first] = v[first]
        upd = ok & ~first
        if st[0] >= self.warmup:
            lim = self.clip * 1.2533 * dev + 1e-12
            vv = np.clip(v, mean - lim, mean + lim)
        else:
            vv = v
        diff = np.where(upd, vv - mean, 0.0)
        mean += a * diff
        dev[upd] = (1 - a) * dev[upd] + a * np.abs(diff[upd])
        st[0] += 1

    def learn_one(self, x: dict[Hashable, Any], y: Any = None) -> None:
        """Update the statistics of the record's key."""
        v = self._vec(x, grow=True)
        self._update(self._get(x.get(self.key) if self.key is not None else None), v)

    def score_one(self, x: dict[Hashable, Any]) -> float:
        """Largest absolute robust z-score of the record's numeric features."""
        v = self._vec(x, grow=False)
        return self._score(self._stats.get(x.get(self.key) if self.key is not None else None), v)

    def _split(self, X: Any) -> tuple[list[Any], np.ndarray]:
        Xc = as_cols(X)
        keys: list[Any] = [None] * Xc.n
        names, cols = [], []
        for n, c in zip(Xc.names, Xc.cols, strict=True):
            if self.key is not None and n == self.key:
                keys = [v.item() if isinstance(v, np.generic) else v for v in c.tolist()]
            elif c.dtype.kind != "O":
                names.append(n)
                cols.append(c)
        return keys, self._fs.matrix(
            Cols(names, cols, Xc.n, positional=Xc.positional and self.key is None),
            grow=False,
            fill=math.nan,
        ) if names else np.zeros((Xc.n, len(self._fs)))

    def learn_many(self, X: Any, y: Any = None) -> None:
        """Update per key, in row order within each key."""
        Xc = as_cols(X)
        names = [
            n
            for n, c in zip(Xc.names, Xc.cols, strict=True)
            if n != self.key and c.dtype.kind != "O"
        ]
        for n in names:
            self._fs.add(n)
        keys, M = self._split(Xc)
        for i, k in enumerate(keys):
            self._update(self._get(k), M[i])

    def score_many(self, X: Any) -> np.ndarray:
        """Scores for a mini-batch, each from the state before the batch."""
        keys, M = self._split(X)
        return np.asarray([self._score(self._stats.get(k), M[i]) for i, k in enumerate(keys)])

    def _get_state(self) -> dict[str, Any]:
        return {
            "features": self._fs.to_state(),
            "stats": [[k, int(s[0]), s[1], s[2]] for k, s in self._stats.items()],
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        self._stats = {
            (k if not isinstance(k, list) else tuple(k)): [
                int(n),
                np.asarray(m, dtype=float),
                np.asarray(d, dtype=float),
            ]
            for k, n, m, d in state["stats"]
        }
