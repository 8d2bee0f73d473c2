"""k-nearest neighbours over a sliding window of recent records (vectorized distances).

The window is a ring buffer of the last ``window_size`` records as one float matrix (features
missing from a record count as 0, as in River). ``learn_many`` appends the batch's rows in
order, so it equals ``learn_one`` over the same records exactly; ``predict_many`` computes one
distance matrix for the whole batch.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal

import numpy as np

from tideflow.ml._base import Classifier, Estimator, Regressor, _check_choice, _check_positive
from tideflow.ml._data import FeatureSpace, LabelSpace, as_cols, as_labels, plain_label

__all__ = ["KNNClassifier", "KNNRegressor"]


class _Window(Estimator):
    def _init_window(self, n_neighbors: int, window_size: int, p: float) -> None:
        name = type(self).__name__
        _check_positive(name, "n_neighbors", n_neighbors)
        _check_positive(name, "window_size", window_size)
        _check_positive(name, "p", p)
        self.n_neighbors = n_neighbors
        self.window_size = window_size
        self.p = p
        self._fs = FeatureSpace()
        self._X = np.zeros((window_size, 0))
        self._y = np.zeros(window_size)
        self._count = 0  # records seen; the newest is at (count - 1) % window_size

    def _fit_d(self) -> None:
        d = len(self._fs)
        if self._X.shape[1] < d:
            X = np.zeros((self.window_size, d))
            X[:, : self._X.shape[1]] = self._X
            self._X = X

    @property
    def _n(self) -> int:
        return min(self._count, self.window_size)

    def _append(self, M: np.ndarray, y: np.ndarray) -> None:
        W = self.window_size
        m = M.shape[0]
        if m >= W:
            M, y = M[-W:], y[-W:]
            self._count += m - W
            m = W
        pos = (self._count + np.arange(m)) % W
        self._X[pos, : M.shape[1]] = M
        self._X[pos, M.shape[1] :] = 0.0
        self._y[pos] = y
        self._count += m

    def _neighbours(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (into the window) and distances of the k nearest rows, per query row."""
        n = self._n
        X = self._X[:n, : Q.shape[1]]
        if Q.shape[1] < self._X.shape[1]:
            Q = np.concatenate([Q, np.zeros((Q.shape[0], self._X.shape[1] - Q.shape[1]))], axis=1)
            X = self._X[:n]
        if self.p == 2:  # rank by |x|^2 - 2 q.x (|q|^2 is the same for a query's row)
            D = (X * X).sum(axis=1)[None, :] - 2.0 * (Q @ X.T)
        else:
            D = (np.abs(Q[:, None, :] - X[None, :, :]) ** self.p).sum(axis=2) ** (1.0 / self.p)
        k = min(self.n_neighbors, n)
        if k < n:
            idx = np.argpartition(D, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(n), (Q.shape[0], n))
        # exact distances for the chosen neighbours (the expansion above loses precision)
        diff = np.abs(Q[:, None, :] - X[idx])
        Dk = (
            np.sqrt((diff * diff).sum(axis=2))
            if self.p == 2
            else (diff**self.p).sum(axis=2) ** (1.0 / self.p)
        )
        return idx, Dk

    def _q1(self, x: dict[Hashable, Any]) -> np.ndarray:
        return self._fs.vector(x, grow=False)[None, :]

    def _qm(self, X: Any) -> np.ndarray:
        return self._fs.matrix(as_cols(X), grow=False, fill=0.0, step=type(self).__name__)

    def _window_state(self) -> dict[str, Any]:
        return {"features": self._fs.to_state(), "X": self._X, "count": self._count}

    def _set_window_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        self._X = np.asarray(state["X"], dtype=float).reshape(self.window_size, -1)
        self._count = int(state["count"])


class KNNClassifier(_Window, Classifier):
    """k-nearest-neighbours classifier over the last ``window_size`` records.

    Parameters
    ----------
    n_neighbors
        Number of neighbours that vote.
    window_size
        Number of recent records kept (River's default engine keeps 50; 1000 is more accurate
        and still fast here).
    weighted
        Weight votes by inverse distance.
    p
        Minkowski distance exponent (2: Euclidean).

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> model = KNNClassifier()
    >>> for x, y in synth.SEA(seed=1).take(1000):
    ...     model.learn_one(x, y)
    >>> model.predict_one({0: 1.0, 1: 1.0, 2: 5.0})
    True
    """

    def __init__(
        self, n_neighbors: int = 5, window_size: int = 1000, weighted: bool = True, p: float = 2.0
    ) -> None:
        self._init_window(n_neighbors, window_size, p)
        self.weighted = weighted
        self._ls = LabelSpace()

    @property
    def classes_(self) -> list[Any]:
        return list(self._ls.labels)

    def learn_one(self, x: dict[Hashable, Any], y: Any) -> None:
        """Add one record to the window."""
        c = self._ls.add(plain_label(y))
        v = self._fs.vector(x, grow=True)
        self._fit_d()
        self._append(v[None, :], np.asarray([float(c)]))

    def learn_many(self, X: Any, y: Any) -> None:
        """Add a mini-batch's rows to the window, in order."""
        yi = self._ls.encode(as_labels(y))
        M = self._fs.matrix(as_cols(X), grow=True, fill=0.0, step="KNNClassifier")
        self._fit_d()
        self._append(M, yi.astype(float))

    def _proba(self, Q: np.ndarray) -> np.ndarray:
        k = len(self._ls)
        out = np.zeros((Q.shape[0], k))
        if self._n == 0 or k == 0:
            return out
        idx, D = self._neighbours(Q)
        labels = self._y[idx].astype(np.int64)
        if self.weighted:
            exact = D == 0.0
            W = np.where(exact.any(axis=1, keepdims=True), exact * 1.0, 1.0 / np.maximum(D, 1e-12))
        else:
            W = np.ones_like(D)
        flat = (np.arange(Q.shape[0])[:, None] * k + labels).ravel()
        out += np.bincount(flat, W.ravel(), Q.shape[0] * k).reshape(Q.shape[0], k)
        s = out.sum(axis=1, keepdims=True)
        return np.where(s > 0, out / np.where(s > 0, s, 1.0), 1.0 / k)

    def predict_proba_one(self, x: dict[Hashable, Any]) -> dict[Any, float]:
        """Class probabilities from the neighbours' (weighted) votes."""
        if not self._ls.labels:
            return {}
        return dict(zip(self._ls.labels, self._proba(self._q1(x))[0].tolist(), strict=True))

    def predict_proba_many(self, X: Any) -> np.ndarray:
        """Probabilities, shape ``(n, len(classes_))``, columns in ``classes_`` order."""
        return self._proba(self._qm(X))

    def predict_many(self, X: Any) -> np.ndarray:
        """The most likely class per row."""
        P = self.predict_proba_many(X)
        if P.shape[1] == 0:
            return np.full(P.shape[0], None, dtype=object)
        return self._ls.decode(P.argmax(axis=1))

    def _get_state(self) -> dict[str, Any]:
        return {**self._window_state(), "y": self._y, "classes": list(self._ls.labels)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._set_window_state(state)
        self._y = np.asarray(state["y"], dtype=float)
        self._ls = LabelSpace(state["classes"])


class KNNRegressor(_Window, Regressor):
    """k-nearest-neighbours regressor over the last ``window_size`` records.

    Parameters
    ----------
    n_neighbors
        Number of neighbours averaged.
    window_size
        Number of recent records kept.
    aggregation_method
        ``"mean"``, ``"median"`` or ``"weighted_mean"`` (inverse distance).
    p
        Minkowski distance exponent.

    Examples
    --------
    >>> model = KNNRegressor(n_neighbors=2)
    >>> for i in range(10):
    ...     model.learn_one({"x": float(i)}, 2.0 * i)
    >>> model.predict_one({"x": 4.4})
    9.0
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        window_size: int = 1000,
        aggregation_method: Literal["mean", "median", "weighted_mean"] = "mean",
        p: float = 2.0,
    ) -> None:
        _check_choice(
            "KNNRegressor",
            "aggregation_method",
            aggregation_method,
            ("mean", "median", "weighted_mean"),
        )
        self._init_window(n_neighbors, window_size, p)
        self.aggregation_method = aggregation_method

    def learn_one(self, x: dict[Hashable, Any], y: float) -> None:
        """Add one record to the window."""
        v = self._fs.vector(x, grow=True)
        self._fit_d()
        self._append(v[None, :], np.asarray([float(y)]))

    def learn_many(self, X: Any, y: Any) -> None:
        """Add a mini-batch's rows to the window, in order."""
        M = self._fs.matrix(as_cols(X), grow=True, fill=0.0, step="KNNRegressor")
        self._fit_d()
        self._append(M, as_labels(y).astype(float))

    def _predict(self, Q: np.ndarray) -> np.ndarray:
        if self._n == 0:
            return np.zeros(Q.shape[0])
        idx, D = self._neighbours(Q)
        Y = self._y[idx]
        if self.aggregation_method == "median":
            return np.median(Y, axis=1)  # type: ignore[no-any-return]
        if self.aggregation_method == "weighted_mean":
            exact = D == 0.0
            W = np.where(exact.any(axis=1, keepdims=True), exact * 1.0, 1.0 / np.maximum(D, 1e-12))
            return (W * Y).sum(axis=1) / W.sum(axis=1)  # type: ignore[no-any-return]
        return Y.mean(axis=1)  # type: ignore[no-any-return]

    def predict_one(self, x: dict[Hashable, Any]) -> float:
        """Prediction for one record (0.0 before any learning)."""
        return float(self._predict(self._q1(x))[0])

    def predict_many(self, X: Any) -> np.ndarray:
        """Predictions for a mini-batch."""
        return self._predict(self._qm(X))

    def _get_state(self) -> dict[str, Any]:
        return {**self._window_state(), "y": self._y}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._set_window_state(state)
        self._y = np.asarray(state["y"], dtype=float)
