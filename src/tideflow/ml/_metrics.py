"""Streaming metrics, each updatable per record or per mini-batch and revertible for windows."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from tideflow.ml._base import Estimator, _check_positive
from tideflow.ml._data import as_labels

__all__ = ["F1", "MAE", "R2", "RMSE", "ROCAUC", "Accuracy", "LogLoss", "Metric", "Rolling"]


class Metric(Estimator):
    """Base metric: ``update``/``revert`` per record, ``update_many``/``revert_many`` per batch."""

    bigger_is_better: bool = True

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:  # pragma: no cover
        raise NotImplementedError

    def revert(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self.update(y_true, y_pred, -w)

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def revert_many(self, y_true: Any, y_pred: Any) -> None:
        yt = as_labels(y_true)
        self.update_many(yt, y_pred, -np.ones(len(yt)))

    def get(self) -> float:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}: {self.get():.6f}"

    def _get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k.startswith("_")}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _w(w: Any, n: int) -> np.ndarray:
    return np.ones(n) if w is None else np.asarray(w, dtype=float)


class Accuracy(Metric):
    """Share of correct predictions.

    Examples
    --------
    >>> m = Accuracy()
    >>> for t, p in [(True, True), (False, True), (True, True)]:
    ...     m.update(t, p)
    >>> round(m.get(), 4)
    0.6667
    """

    def __init__(self) -> None:
        self._correct = 0.0
        self._n = 0.0

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._n += w
        if y_true == y_pred:
            self._correct += w

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        yt, yp = as_labels(y_true), as_labels(y_pred)
        ww = _w(w, len(yt))
        self._n += float(ww.sum())
        self._correct += float(ww[yt == yp].sum())

    def get(self) -> float:
        return self._correct / self._n if self._n else 0.0


class F1(Metric):
    """F1 score of the positive class ``pos_val``.

    Examples
    --------
    >>> m = F1()
    >>> m.update_many([True, True, False, False], [True, False, True, False])
    >>> m.get()
    0.5
    """

    def __init__(self, pos_val: Any = True) -> None:
        self.pos_val = pos_val
        self._tp = self._fp = self._fn = 0.0

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        t, p = y_true == self.pos_val, y_pred == self.pos_val
        if t and p:
            self._tp += w
        elif p:
            self._fp += w
        elif t:
            self._fn += w

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        t = as_labels(y_true) == self.pos_val
        p = as_labels(y_pred) == self.pos_val
        ww = _w(w, len(t))
        self._tp += float(ww[t & p].sum())
        self._fp += float(ww[~t & p].sum())
        self._fn += float(ww[t & ~p].sum())

    def get(self) -> float:
        d = 2 * self._tp + self._fp + self._fn
        return 2 * self._tp / d if d else 0.0


def _pos_proba(y_pred: Any, pos_val: Any) -> float:
    if isinstance(y_pred, dict):
        return float(y_pred.get(pos_val, 0.0))
    if isinstance(y_pred, (bool, np.bool_)):
        return float(y_pred == pos_val) if not isinstance(pos_val, bool) else float(y_pred)
    return float(y_pred) if y_pred is not None else 0.0


class ROCAUC(Metric):
    """Area under the ROC curve from score histograms (``n_bins`` equal bins over [0, 1]).

    Scores in the same bin count as ties; with the default 1,000 bins this is within about
    0.001 of the exact AUC. ``y_pred`` is the positive-class probability or a probability dict.

    Examples
    --------
    >>> m = ROCAUC()
    >>> m.update_many([False, False, True, True], [0.1, 0.4, 0.35, 0.8])
    >>> m.get()
    0.75
    """

    def __init__(self, pos_val: Any = True, n_bins: int = 1000) -> None:
        _check_positive("ROCAUC", "n_bins", n_bins)
        self.pos_val = pos_val
        self.n_bins = n_bins
        self._pos = np.zeros(n_bins)
        self._neg = np.zeros(n_bins)

    def _bin(self, p: np.ndarray) -> np.ndarray:
        return np.clip((np.nan_to_num(p) * self.n_bins).astype(np.int64), 0, self.n_bins - 1)  # type: ignore[no-any-return]

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        b = int(self._bin(np.asarray([_pos_proba(y_pred, self.pos_val)]))[0])
        if y_true == self.pos_val:
            self._pos[b] += w
        else:
            self._neg[b] += w

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        t = as_labels(y_true) == self.pos_val
        yp = y_pred if isinstance(y_pred, np.ndarray) else np.asarray(list(y_pred), dtype=object)
        if yp.dtype == object:
            yp = np.asarray([_pos_proba(v, self.pos_val) for v in yp.tolist()], dtype=float)
        b = self._bin(yp.astype(float))
        ww = _w(w, len(t))
        self._pos += np.bincount(b[t], ww[t], self.n_bins)
        self._neg += np.bincount(b[~t], ww[~t], self.n_bins)

    def get(self) -> float:
        P, N = self._pos.sum(), self._neg.sum()
        if P <= 0 or N <= 0:
            return 0.0
        neg_below = np.cumsum(self._neg) - self._neg
        return float((self._pos * (neg_below + 0.5 * self._neg)).sum() / (P * N))


class LogLoss(Metric):
    """Binary log loss; ``y_pred`` is the positive-class probability or a probability dict.

    Examples
    --------
    >>> m = LogLoss()
    >>> m.update(True, 0.5)
    >>> round(m.get(), 4)
    0.6931
    """

    bigger_is_better = False

    def __init__(self, pos_val: Any = True) -> None:
        self.pos_val = pos_val
        self._sum = 0.0
        self._n = 0.0

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        p = min(max(_pos_proba(y_pred, self.pos_val), 1e-15), 1 - 1e-15)
        self._sum += w * -(math.log(p) if y_true == self.pos_val else math.log(1 - p))
        self._n += w

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        t = as_labels(y_true) == self.pos_val
        yp = np.asarray(y_pred)
        if yp.dtype == object:
            yp = np.asarray([_pos_proba(v, self.pos_val) for v in yp.tolist()], dtype=float)
        p = np.clip(yp.astype(float), 1e-15, 1 - 1e-15)
        ww = _w(w, len(t))
        self._sum += float((ww * -np.where(t, np.log(p), np.log(1 - p))).sum())
        self._n += float(ww.sum())

    def get(self) -> float:
        return self._sum / self._n if self._n else 0.0


class MAE(Metric):
    """Mean absolute error.

    Examples
    --------
    >>> m = MAE(); m.update_many([1.0, 2.0], [2.0, 4.0]); m.get()
    1.5
    """

    bigger_is_better = False

    def __init__(self) -> None:
        self._sum = 0.0
        self._n = 0.0

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._sum += w * abs(float(y_true) - float(y_pred))
        self._n += w

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        e = np.abs(as_labels(y_true).astype(float) - np.asarray(y_pred, dtype=float))
        ww = _w(w, len(e))
        self._sum += float(ww @ e)
        self._n += float(ww.sum())

    def get(self) -> float:
        return self._sum / self._n if self._n else 0.0


class RMSE(MAE):
    """Root mean squared error.

    Examples
    --------
    >>> m = RMSE(); m.update_many([0.0, 0.0], [3.0, 4.0]); round(m.get(), 4)
    3.5355
    """

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self._sum += w * (float(y_true) - float(y_pred)) ** 2
        self._n += w

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        e = as_labels(y_true).astype(float) - np.asarray(y_pred, dtype=float)
        ww = _w(w, len(e))
        self._sum += float(ww @ (e * e))
        self._n += float(ww.sum())

    def get(self) -> float:
        return math.sqrt(max(self._sum / self._n, 0.0)) if self._n else 0.0


class R2(Metric):
    """Coefficient of determination.

    Examples
    --------
    >>> m = R2(); m.update_many([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]); m.get()
    0.5
    """

    def __init__(self) -> None:
        self._n = 0.0
        self._sy = 0.0
        self._sy2 = 0.0
        self._sse = 0.0

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        y = float(y_true)
        self._n += w
        self._sy += w * y
        self._sy2 += w * y * y
        self._sse += w * (y - float(y_pred)) ** 2

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        y = as_labels(y_true).astype(float)
        ww = _w(w, len(y))
        self._n += float(ww.sum())
        self._sy += float(ww @ y)
        self._sy2 += float(ww @ (y * y))
        e = y - np.asarray(y_pred, dtype=float)
        self._sse += float(ww @ (e * e))

    def get(self) -> float:
        if self._n <= 1:
            return 0.0
        sst = self._sy2 - self._sy * self._sy / self._n
        return 1.0 - self._sse / sst if sst > 1e-12 * max(1.0, abs(self._sy2)) else 0.0


class Rolling(Metric):
    """A metric over the last ``window_size`` records only.

    Examples
    --------
    >>> m = Rolling(Accuracy(), window_size=2)
    >>> for t, p in [(1, 0), (1, 1), (1, 1)]:
    ...     m.update(t, p)
    >>> m.get()
    1.0
    """

    def __init__(self, metric: Metric, window_size: int) -> None:
        _check_positive("Rolling", "window_size", window_size)
        self.metric = metric
        self.window_size = window_size
        self._yt: deque[Any] = deque()
        self._yp: deque[Any] = deque()

    @property
    def bigger_is_better(self) -> bool:  # type: ignore[override]
        return self.metric.bigger_is_better

    def update(self, y_true: Any, y_pred: Any, w: float = 1.0) -> None:
        self.metric.update(y_true, y_pred)
        self._yt.append(y_true)
        self._yp.append(y_pred)
        if len(self._yt) > self.window_size:
            self.metric.revert(self._yt.popleft(), self._yp.popleft())

    def update_many(self, y_true: Any, y_pred: Any, w: Any = None) -> None:
        yt = as_labels(y_true).tolist()
        yp = y_pred.tolist() if isinstance(y_pred, np.ndarray) else list(y_pred)
        self.metric.update_many(np.asarray(yt), np.asarray(yp))
        self._yt.extend(yt)
        self._yp.extend(yp)
        k = len(self._yt) - self.window_size
        if k > 0:
            ot = [self._yt.popleft() for _ in range(k)]
            op = [self._yp.popleft() for _ in range(k)]
            self.metric.revert_many(np.asarray(ot), np.asarray(op))

    def get(self) -> float:
        return self.metric.get()

    def _get_state(self) -> dict[str, Any]:
        return {"y_true": list(self._yt), "y_pred": list(self._yp)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._yt, self._yp = deque(state["y_true"]), deque(state["y_pred"])
