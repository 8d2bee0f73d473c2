"""Clustering: online k-means (with a mini-batch path) and CluStream micro-clusters."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from tideflow.ml._base import Clusterer, _check_positive
from tideflow.ml._data import FeatureSpace, as_cols
from tideflow.ml._tree_base import rng_from_state, rng_state

__all__ = ["CluStream", "KMeans"]


class KMeans(Clusterer):
    """Online k-means: each record moves its closest centre by ``halflife`` of the way to it.

    Centres start at random N(``mu``, ``sigma``) positions (per feature, drawn when the feature
    first appears), as in River. ``learn_many`` assigns the whole batch with the current
    centres and then applies, per centre, exactly the sequence of moves ``learn_one`` would
    make for its assigned rows in order (``c <- (1 - h) c + h x``), in closed form; so the two
    paths agree whenever no assignment changes within the batch.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-5, 0.5, (200, 2)), rng.normal(5, 0.5, (200, 2))])
    >>> km = KMeans(n_clusters=2, halflife=0.1, seed=1)
    >>> km.learn_many(X[rng.permutation(400)])
    >>> km.predict_one({0: -5.0, 1: -5.0}) != km.predict_one({0: 5.0, 1: 5.0})
    True
    """

    def __init__(
        self,
        n_clusters: int = 5,
        halflife: float = 0.5,
        mu: float = 0.0,
        sigma: float = 1.0,
        p: float = 2.0,
        seed: int | None = None,
    ) -> None:
        _check_positive("KMeans", "n_clusters", n_clusters)
        _check_positive("KMeans", "halflife", halflife)
        self.n_clusters = n_clusters
        self.halflife = halflife
        self.mu = mu
        self.sigma = sigma
        self.p = p
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._fs = FeatureSpace()
        self._C = np.zeros((n_clusters, 0))

    @property
    def centers(self) -> dict[int, dict[Hashable, float]]:
        return {
            i: dict(zip(self._fs.names, c.tolist(), strict=True)) for i, c in enumerate(self._C)
        }

    def _grow(self) -> None:
        d = len(self._fs)
        if self._C.shape[1] < d:
            extra = self._rng.normal(self.mu, self.sigma, (self.n_clusters, d - self._C.shape[1]))
            self._C = np.concatenate([self._C, extra], axis=1)

    def _assign(self, M: np.ndarray) -> np.ndarray:
        C = self._C[:, : M.shape[1]]
        if M.shape[1] < self._C.shape[1]:
            M = np.concatenate([M, np.zeros((M.shape[0], self._C.shape[1] - M.shape[1]))], axis=1)
            C = self._C
        if self.p == 2:
            D = (M * M).sum(axis=1)[:, None] + (C * C).sum(axis=1)[None, :] - 2.0 * (M @ C.T)
        else:
            D = (np.abs(M[:, None, :] - C[None]) ** self.p).sum(axis=2)
        return D.argmin(axis=1)  # type: ignore[no-any-return]

    def learn_one(self, x: dict[Hashable, Any], y: Any = None) -> None:
        """Move the closest centre towards ``x``."""
        v = self._fs.vector(x, grow=True)
        self._grow()
        i = int(self._assign(v[None, :])[0])
        self._C[i] += self.halflife * (v - self._C[i])

    def predict_one(self, x: dict[Hashable, Any]) -> int:
        """Number of the closest centre."""
        return int(self._assign(self._fs.vector(x, grow=False)[None, :])[0])

    def learn_many(self, X: Any, y: Any = None) -> None:
        """Assign the batch with the current centres, then move each centre (see above)."""
        M = self._fs.matrix(as_cols(X), grow=True, fill=0.0, step="KMeans")
        self._grow()
        a = self._assign(M)
        h = self.halflife
        for i in np.unique(a).tolist():
            rows = M[a == i]
            m = rows.shape[0]
            w = h * (1.0 - h) ** np.arange(m - 1, -1, -1)  # weight of each row after m moves
            self._C[i] = (1.0 - h) ** m * self._C[i] + w @ rows

    def predict_many(self, X: Any) -> np.ndarray:
        """Closest centre per row."""
        return self._assign(self._fs.matrix(as_cols(X), grow=False, fill=0.0, step="KMeans"))

    def _get_state(self) -> dict[str, Any]:
        return {"features": self._fs.to_state(), "C": self._C, "rng": rng_state(self._rng)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        self._C = np.asarray(state["C"], dtype=float).reshape(self.n_clusters, -1)
        self._rng = rng_from_state(state["rng"])


class CluStream(Clusterer):
    """CluStream (Aggarwal et al., 2003): micro-clusters online, macro-clusters on demand.

    Up to ``max_micro_clusters`` micro-clusters keep (count, linear sum, squared sum, time sum,
    time squared sum). A record joins its closest micro-cluster if within
    ``micro_cluster_r_factor`` times that cluster's RMS radius (for a one-record cluster, the
    distance to its nearest neighbour cluster); otherwise it starts a new one, after deleting a
    cluster whose relevance stamp is older than ``time_window`` or, failing that, merging the
    two closest clusters. Every ``time_gap`` records the macro-clusters are recomputed by
    weighted k-means++ / Lloyd on the micro-cluster centres; ``predict_one`` returns the
    closest macro-cluster. Micro-cluster maintenance is sequential, so ``learn_many`` goes
    record by record over the converted batch.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-5, 0.3, (300, 2)), rng.normal(5, 0.3, (300, 2))])
    >>> cs = CluStream(n_macro_clusters=2, max_micro_clusters=20, seed=1)
    >>> cs.learn_many(X[rng.permutation(600)])
    >>> cs.predict_one({0: -5.0, 1: -5.0}) != cs.predict_one({0: 5.0, 1: 5.0})
    True
    """

    def __init__(
        self,
        n_macro_clusters: int = 5,
        max_micro_clusters: int = 100,
        micro_cluster_r_factor: float = 2.0,
        time_window: int = 1000,
        time_gap: int = 100,
        seed: int | None = None,
    ) -> None:
        _check_positive("CluStream", "n_macro_clusters", n_macro_clusters)
        _check_positive("CluStream", "max_micro_clusters", max_micro_clusters)
        self.n_macro_clusters = n_macro_clusters
        self.max_micro_clusters = max_micro_clusters
        self.micro_cluster_r_factor = micro_cluster_r_factor
        self.time_window = time_window
        self.time_gap = time_gap
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._fs = FeatureSpace()
        m = max_micro_clusters
        self._n = np.zeros(m)
        self._ls = np.zeros((m, 0))
        self._ss = np.zeros((m, 0))
        self._lst = np.zeros(m)
        self._sst = np.zeros(m)
        self._used = 0
        self._t = 0
        self._macro = np.zeros((0, 0))
        self._macro_t = -1

    def _grow(self) -> None:
        d = len(self._fs)
        if self._ls.shape[1] < d:
            pad = np.zeros((self.max_micro_clusters, d - self._ls.shape[1]))
            self._ls = np.concatenate([self._ls, pad], axis=1)
            self._ss = np.concatenate([self._ss, pad.copy()], axis=1)

    def _centers(self) -> np.ndarray:
        u = self._used
        return self._ls[:u] / self._n[:u, None]

    def _learn_row(self, v: np.ndarray) -> None:
        self._t += 1
        t = float(self._t)
        u = self._used
        if u < self.max_micro_clusters:
            self._set_mc(u, v, t)
            self._used += 1
            return
        C = self._centers()
        d2 = ((C - v) ** 2).sum(axis=1)
        i = int(d2.argmin())
        n = self._n[i]
        if n > 1:
            var = self._ss[i] / n - (self._ls[i] / n) ** 2
            radius = self.micro_cluster_r_factor * math.sqrt(max(float(var.mean()), 0.0))
        else:
            dd = ((C - C[i]) ** 2).sum(axis=1)
            dd[i] = np.inf
            radius = math.sqrt(float(dd.min()))
        if math.sqrt(float(d2[i])) <= radius:
            self._n[i] += 1
            self._ls[i] += v
            self._ss[i] += v * v
            self._lst[i] += t
            self._sst[i] += t * t
            return
        mean_t = self._lst[:u] / self._n[:u]
        std_t = np.sqrt(np.maximum(self._sst[:u] / self._n[:u] - mean_t**2, 0.0))
        stamp = mean_t + std_t
        old = int(stamp.argmin())
        if stamp[old] < t - self.time_window:
            self._set_mc(old, v, t)
            return
        CC = ((C[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
        CC[np.diag_indices(u)] = np.inf
        a, b = np.unravel_index(int(CC.argmin()), CC.shape)
        self._n[a] += self._n[b]
        self._ls[a] += self._ls[b]
        self._ss[a] += self._ss[b]
        self._lst[a] += self._lst[b]
        self._sst[a] += self._sst[b]
        self._set_mc(int(b), v, t)

    def _set_mc(self, i: int, v: np.ndarray, t: float) -> None:
        self._n[i] = 1.0
        self._ls[i] = v
        self._ss[i] = v * v
        self._lst[i] = t
        self._sst[i] = t * t

    def learn_one(self, x: dict[Hashable, Any], y: Any = None) -> None:
        """Absorb one record into the micro-clusters."""
        v = self._fs.vector(x, grow=True)
        self._grow()
        self._learn_row(v)

    def learn_many(self, X: Any, y: Any = None) -> None:
        """Absorb a mini-batch, record by record."""
        M = self._fs.matrix(as_cols(X), grow=True, fill=0.0, step="CluStream")
        self._grow()
        for i in range(M.shape[0]):
            self._learn_row(M[i])

    def _macro_centers(self) -> np.ndarray:
        if self._used == 0:
            return np.zeros((0, len(self._fs)))
        due = self._macro_t < 0 or self._t - self._macro_t >= self.time_gap
        if due or self._macro.shape[1] != self._ls.shape[1]:
            self._macro = self._weighted_kmeans()
            self._macro_t = self._t
        return self._macro

    def _weighted_kmeans(self) -> np.ndarray:
        P, w = self._centers(), self._n[: self._used]
        k = min(self.n_macro_clusters, len(P))
        rng = np.random.default_rng(self._t if self.seed is None else self.seed + self._t)
        C = [P[int(rng.choice(len(P), p=w / w.sum()))]]
        for _ in range(1, k):  # k-means++ seeding weighted by counts
            d2 = ((P[:, None, :] - np.asarray(C)[None]) ** 2).sum(axis=2).min(axis=1) * w
            C.append(P[int(rng.choice(len(P), p=d2 / d2.sum()))] if d2.sum() > 0 else P[0])
        Cm = np.asarray(C)
        for _ in range(20):
            a = ((P[:, None, :] - Cm[None]) ** 2).sum(axis=2).argmin(axis=1)
            new = Cm.copy()
            for j in range(k):
                sel = a == j
                if sel.any():
                    new[j] = (w[sel, None] * P[sel]).sum(axis=0) / w[sel].sum()
            if np.allclose(new, Cm):
                break
            Cm = new
        return Cm

    def _predict(self, M: np.ndarray) -> np.ndarray:
        C = self._macro_centers()
        if len(C) == 0:
            return np.zeros(M.shape[0], dtype=np.int64)
        d = min(M.shape[1], C.shape[1])
        return ((M[:, None, :d] - C[None, :, :d]) ** 2).sum(axis=2).argmin(axis=1)  # type: ignore[no-any-return]

    def predict_one(self, x: dict[Hashable, Any]) -> int:
        """Number of the closest macro-cluster."""
        return int(self._predict(self._fs.vector(x, grow=False)[None, :])[0])

    def predict_many(self, X: Any) -> np.ndarray:
        """Closest macro-cluster per row."""
        return self._predict(self._fs.matrix(as_cols(X), grow=False, fill=0.0, step="CluStream"))

    def _get_state(self) -> dict[str, Any]:
        return {
            "features": self._fs.to_state(),
            "n": self._n,
            "ls": self._ls,
            "ss": self._ss,
            "lst": self._lst,
            "sst": self._sst,
            "used": self._used,
            "t": self._t,
            "macro": self._macro,
            "macro_t": self._macro_t,
            "rng": rng_state(self._rng),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        m = self.max_micro_clusters
        self._n = np.asarray(state["n"], dtype=float)
        self._ls = np.asarray(state["ls"], dtype=float).reshape(m, -1)
        self._ss = np.asarray(state["ss"], dtype=float).reshape(m, -1)
        self._lst = np.asarray(state["lst"], dtype=float)
        self._sst = np.asarray(state["sst"], dtype=float)
        self._used, self._t = int(state["used"]), int(state["t"])
        self._macro = np.asarray(state["macro"], dtype=float)
        if self._macro.size == 0:
            self._macro = np.zeros((0, 0))
        self._macro_t = int(state["macro_t"])
        self._rng = rng_from_state(state["rng"])
