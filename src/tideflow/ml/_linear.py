"""Linear models: linear and logistic regression, linear SVM (hinge), passive-aggressive.

All models keep a weight matrix ``W`` (one row per output: one for regression and binary
classification, one per class for multiclass) over a growing feature space. ``learn_many`` is
one step with the per-record gradients of the batch summed, all taken at the same weights (for
plain SGD the step is damped when it would exceed the loss's stability limit, see
``_damping``; passive-aggressive models average the projections of the batch's records);
``learn_one(x, y)`` is exactly ``learn_many`` on a one-row batch, so a stream of records and the
same stream as one-row batches give the same model.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from itertools import repeat
from operator import add, mul, sub
from typing import Any, Literal

import numpy as np

from tideflow.ml._base import Classifier, Estimator, Regressor, _check_choice, _check_positive
from tideflow.ml._data import FeatureSpace, LabelSpace, as_cols, as_labels, plain_label
from tideflow.ml._optim import SGD, Optimizer

__all__ = [
    "LinearRegression",
    "LinearSVC",
    "LogisticRegression",
    "PAClassifier",
    "PARegressor",
    "SoftmaxRegression",
]

Multiclass = Literal["ovr", "softmax"]

# Up to this many features, a single-output model's per-record path runs on Python floats (see
# ``_Linear``); above it, on NumPy arrays. Measured with bench/ml/scalar_threshold.py (2-core
# machine, NumPy 2.4): the list form is 2.1-2.6x faster at 2-8 features, 1.3x at 32, 1.1x at 48,
# and slower from about 60 (0.95x at 64, 0.7x at 128).
_SCALAR_MAX_FEATURES = 48
# The same for several outputs (multiclass), in weights (classes x features): with 3 classes the
# list form is 2.8x faster at 4 features, 1.6x at 32, 1.2x at 48, 1.05x at 64, 0.8x at 96.
_SCALAR_MAX_CELLS = 160


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class _Linear(Estimator):
    """Weights ``W`` (outputs x features) and intercepts ``b``, in one of two forms.

    The mini-batch and multiclass code works on NumPy arrays (``_Wa``, ``_ba``). The per-record
    path of a single-output model on at most ``_SCALAR_MAX_FEATURES`` features keeps them as a
    Python list of floats and a float (``_wl``, ``_bl``) and updates them with scalar arithmetic:
    at a handful of features one NumPy call costs more than the whole step in pure Python. The
    properties ``_W`` and ``_b`` move the list form back into the arrays when array code needs
    them, so both forms hold the same numbers (the per-record step does the same operations in
    the same order; only the summation order of dot products may differ, by float rounding).
    """

    _n_out_fixed: int | None = 1

    def _init_linear(self, intercept_init: float = 0.0) -> None:
        self._fs = FeatureSpace()
        self._Wa = np.zeros((1, 0))
        self._ba = np.full(1, float(intercept_init))
        self._wl: list[float] | None = None
        self._bl = 0.0
        self._wm: list[list[float]] | None = None  # list form with several outputs (rows)
        self._bm: list[float] = []

    @property
    def _W(self) -> np.ndarray:
        if self._wl is not None or self._wm is not None:
            self._to_arrays()
        return self._Wa

    @_W.setter
    def _W(self, W: np.ndarray) -> None:
        if self._wl is not None or self._wm is not None:
            self._to_arrays()
        self._Wa = W

    @property
    def _b(self) -> np.ndarray:
        if self._wl is not None or self._wm is not None:
            self._to_arrays()
        return self._ba

    @_b.setter
    def _b(self, b: np.ndarray) -> None:
        if self._wl is not None or self._wm is not None:
            self._to_arrays()
        self._ba = b

    def _to_arrays(self) -> None:
        wl, wm = self._wl, self._wm
        self._wl = self._wm = None
        if wl is not None:
            self._Wa = np.asarray(wl, dtype=np.float64).reshape(1, len(wl))
            self._ba = np.asarray([self._bl], dtype=np.float64)
        elif wm is not None:
            self._Wa = np.asarray(wm, dtype=np.float64).reshape(len(wm), len(wm[0]))
            self._ba = np.asarray(self._bm, dtype=np.float64)

    def _scalar_multi_ok(self) -> bool:
        """Whether ``learn_one`` has a list-form step for several outputs (multiclass)."""
        return False

    def _xmulti(
        self, x: dict[Hashable, Any], grow: bool
    ) -> tuple[list[list[float]], list[float], list[Any]] | None:
        """:meth:`_xlist` for several outputs: weight rows, intercepts and ``x`` as lists."""
        wm = self._wm
        fs = self._fs
        if wm is None:
            Wa = self._Wa
            if (
                Wa.shape[0] < 2
                or Wa.shape[0] * len(fs) > _SCALAR_MAX_CELLS
                or not self._scalar_multi_ok()
            ):
                return None
            wm = self._wm = Wa.tolist()
            if Wa.shape[1] < len(fs):
                for r in wm:
                    r.extend([0.0] * (len(fs) - Wa.shape[1]))
            self._bm = self._ba.tolist()
        if tuple(x) == fs._order:
            return wm, self._bm, list(x.values())
        index = fs.index
        if grow:
            for k in x:
                if k not in index:
                    fs.add(k)
            if len(wm[0]) < len(fs):
                for r in wm:
                    r.extend([0.0] * (len(fs) - len(r)))
            if len(wm) * len(fs) > _SCALAR_MAX_CELLS:
                self._to_arrays()
                return None
        v: list[Any] = [0.0] * len(fs)
        for k, val in x.items():
            i = index.get(k)
            if i is not None and val is not None:
                v[i] = val
        return wm, self._bm, v

    def _scalar_weights(self) -> list[float] | None:
        """The weights in list form (switching to it), or ``None`` if the arrays must be used."""
        wl = self._wl
        if wl is None:
            Wa = self._Wa
            if Wa.shape[0] != 1 or len(self._fs) > _SCALAR_MAX_FEATURES or not self._scalar_ok():
                return None
            wl = self._wl = Wa[0].tolist()
            if len(wl) < len(self._fs):
                wl.extend([0.0] * (len(self._fs) - len(wl)))
            self._bl = float(self._ba[0])
        return wl

    def _scalar_ok(self) -> bool:
        """Whether ``learn_one`` has a list-form step with these settings (else prediction
        stays on the arrays too, so that learning and predicting do not convert every record)."""
        return False

    def _xlist(self, x: dict[Hashable, Any], grow: bool) -> tuple[list[float], list[Any]] | None:
        """The weights in list form and ``x`` as a list over the same features, or ``None`` if
        the arrays must be used (several outputs, too many features, settings without a
        list-form step). New features are added when ``grow``; one that takes the model over
        ``_SCALAR_MAX_FEATURES`` moves it back to the arrays. Values are not checked: callers
        fall back to the arrays on ``TypeError`` (``None`` or non-numbers in ``x``), before
        changing anything.
        """
        wl = self._wl
        if wl is None:
            wl = self._scalar_weights()
            if wl is None:
                return None
        fs = self._fs
        if tuple(x) == fs._order:  # same features in the same order as the model's
            return wl, list(x.values())
        index = fs.index
        if grow:
            for k in x:
                if k not in index:
                    fs.add(k)
            if len(wl) < len(fs):
                wl.extend([0.0] * (len(fs) - len(wl)))
            if len(fs) > _SCALAR_MAX_FEATURES:
                self._to_arrays()
                return None
        v: list[Any] = [0.0] * len(fs)
        for k, val in x.items():
            i = index.get(k)
            if i is not None and val is not None:
                v[i] = val
        return wl, v

    def _grow_features(self) -> None:
        d = len(self._fs)
        if self._W.shape[1] < d:
            W = np.zeros((self._W.shape[0], d))
            W[:, : self._W.shape[1]] = self._W
            self._W = W

    def _x1(self, x: dict[Hashable, Any], grow: bool) -> np.ndarray:
        v = self._fs.vector(x, grow=grow)
        if grow:
            self._grow_features()
        return v[None, :]

    def _xm(self, X: Any, grow: bool) -> np.ndarray:
        M = self._fs.matrix(as_cols(X), grow=grow, fill=0.0, step=type(self).__name__)
        if grow:
            self._grow_features()
        return M

    def _scores(self, M: np.ndarray) -> np.ndarray:
        return M @ self._W[:, : M.shape[1]].T + self._b  # type: ignore[no-any-return]

    def _lin_state(self) -> dict[str, Any]:
        return {"features": self._fs.to_state(), "W": self._W, "b": self._b}

    def _set_lin_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        W = np.asarray(state["W"], dtype=float)
        n = len(self._fs)
        # An untrained model has no features: keep the (rows, 0) shape reshape cannot infer.
        self._W = W.reshape(-1, n) if n else W.reshape(W.shape[0] if W.ndim == 2 else 0, 0)
        self._b = np.asarray(state["b"], dtype=float)

    @property
    def weights(self) -> dict[Hashable, Any]:
        """Feature weights (a float per feature, or an array per feature for multiclass)."""
        if self._W.shape[0] == 1:
            return dict(zip(self._fs.names, self._W[0].tolist(), strict=True))
        return {n: self._W[:, j].copy() for j, n in enumerate(self._fs.names)}

    @property
    def intercept(self) -> Any:
        return float(self._b[0]) if self._b.shape[0] == 1 else self._b.copy()


class _LinearClassifier(_Linear, Classifier):
    """Shared code: labels, binary/multiclass layout, probabilities."""

    multiclass: Multiclass = "ovr"

    def _init_clf(self) -> None:
        self._init_linear(0.0)
        self._ls = LabelSpace()

    @property
    def classes_(self) -> list[Any]:
        return list(self._ls.labels)

    def _grow_classes(self) -> None:
        k = len(self._ls)
        rows = self._W.shape[0]
        if k <= 2 or rows == k:
            return
        d = self._W.shape[1]
        W = np.zeros((k, d))
        b = np.zeros(k)
        if rows == 1:  # binary layout -> one row per class
            if self.multiclass == "ovr":
                W[0], b[0] = -self._W[0], -self._b[0]
            W[1], b[1] = self._W[0], self._b[0]
        else:
            W[:rows], b[:rows] = self._W, self._b
        self._W, self._b = W, b
        self._reset_opt()

    def _reset_opt(self) -> None:
        return None

    def _targets(self, yi: np.ndarray) -> np.ndarray:
        k = self._W.shape[0]
        if k == 1:
            return (yi == 1).astype(np.float64)[:, None]  # type: ignore[no-any-return]
        Y = np.zeros((len(yi), k))
        Y[np.arange(len(yi)), yi] = 1.0
        return Y

    def _proba(self, M: np.ndarray) -> np.ndarray:
        """Probabilities (n, n_classes) in ``classes_`` order."""
        S = self._scores(M)
        k = len(self._ls)
        if S.shape[1] == 1:
            p = _sigmoid(S[:, 0])
            P = np.column_stack([1.0 - p, p]) if k >= 2 else np.ones((len(p), max(k, 0)))
            return P[:, :k] if k else np.zeros((len(p), 0))
        if self.multiclass == "softmax":
            S = S - S.max(axis=1, keepdims=True)
            E = np.exp(S)
            return E / E.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]
        P = _sigmoid(S)
        tot = P.sum(axis=1, keepdims=True)
        return np.where(tot > 0, P / np.where(tot > 0, tot, 1.0), 1.0 / k)

    def _score1(self, x: dict[Hashable, Any]) -> float:
        xl = self._xlist(x, grow=False)
        if xl is not None:
            try:
                return sum(map(mul, *xl)) + self._bl  # type: ignore[no-any-return]
            except TypeError:  # None or non-numbers in x: the array code handles them
                pass
        va = self._fs.vector(x, grow=False)
        d = min(len(va), self._W.shape[1])
        return float(self._W[0, :d] @ va[:d]) + float(self._b[0])

    def predict_proba_one(self, x: dict[Hashable, Any]) -> dict[Any, float]:
        """Class probabilities for one record (empty before any learning)."""
        if not self._ls.labels:
            return {}
        if len(self._ls) == 2 and (self._wl is not None or self._Wa.shape[0] == 1):
            p = 0.5 * (1.0 + math.tanh(0.5 * self._score1(x)))
            return {self._ls.labels[0]: 1.0 - p, self._ls.labels[1]: p}
        P1 = self._proba1(x)
        if P1 is not None:
            return dict(zip(self._ls.labels, P1, strict=True))
        P = self._proba(self._x1(x, grow=False))[0]
        return dict(zip(self._ls.labels, P.tolist(), strict=True))

    def _proba1(self, x: dict[Hashable, Any]) -> list[float] | None:
        """:meth:`_proba` for one record of a multiclass model on the list form (or ``None``)."""
        if len(self._ls) <= 2:
            return None
        xm = self._xmulti(x, grow=False)
        if xm is None:
            return None
        wm, bm, v = xm
        try:
            S = [sum(map(mul, r, v)) + bj for r, bj in zip(wm, bm, strict=True)]
        except TypeError:  # None or non-numbers in x: the array code handles them
            return None
        if self.multiclass == "softmax":
            mx = max(S)
            E = [math.exp(s - mx) for s in S]
            tot = sum(E)
            return [e / tot for e in E]
        P = [0.5 * (1.0 + math.tanh(0.5 * s)) for s in S]
        tot = sum(P)
        return [p / tot for p in P] if tot > 0 else [1.0 / len(P)] * len(P)

    def predict_one(self, x: dict[Hashable, Any]) -> Any:
        """The most likely class for one record (``None`` before any learning)."""
        if not self._ls.labels:
            return None
        if len(self._ls) == 2 and (self._wl is not None or self._Wa.shape[0] == 1):
            return self._ls.labels[1 if self._score1(x) > 0.0 else 0]
        P1 = self._proba1(x)
        if P1 is not None:
            return self._ls.labels[max(range(len(P1)), key=P1.__getitem__)]
        P = self._proba(self._x1(x, grow=False))[0]
        return self._ls.labels[int(P.argmax())]

    def predict_proba_many(self, X: Any) -> np.ndarray:
        """Probabilities, shape ``(n, len(classes_))``, columns in ``classes_`` order."""
        return self._proba(self._xm(X, grow=False))

    def predict_many(self, X: Any) -> np.ndarray:
        """The most likely class per row."""
        P = self.predict_proba_many(X)
        if P.shape[1] == 0:
            return np.full(P.shape[0], None, dtype=object)
        return self._ls.decode(P.argmax(axis=1))

    def learn_one(self, x: dict[Hashable, Any], y: Any, w: float = 1.0) -> None:
        """Update on one record (equal to ``learn_many`` on a one-row batch)."""
        yi = np.asarray([self._ls.add(plain_label(y))])
        self._grow_classes()
        self._update(self._x1(x, grow=True), yi, np.asarray([w], dtype=float))

    def learn_many(self, X: Any, y: Any, w: Any = None) -> None:
        """One step on a mini-batch: per-record gradients at the same weights, summed."""
        yi = self._ls.encode(as_labels(y))
        self._grow_classes()
        M = self._xm(X, grow=True)
        sw = np.ones(len(yi)) if w is None else np.asarray(w, dtype=float)
        self._update(M, yi, sw)

    def _update(self, M: np.ndarray, yi: np.ndarray, sw: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        return {**self._lin_state(), "classes": list(self._ls.labels)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._set_lin_state(state)
        self._ls = LabelSpace(state["classes"])
        self._W = self._W.reshape(len(self._b), self._W.size // max(len(self._b), 1))


class _SGDClassifier(_LinearClassifier):
    _loss: Literal["log", "hinge"] = "log"

    def _init_sgd(
        self,
        optimizer: Optimizer | None,
        l2: float,
        intercept_lr: float,
        clip_gradient: float,
        multiclass: Multiclass,
    ) -> None:
        name = type(self).__name__
        _check_positive(name, "l2", l2, strict=False)
        _check_positive(name, "intercept_lr", intercept_lr, strict=False)
        _check_choice(name, "multiclass", multiclass, ("ovr", "softmax"))
        self.optimizer = SGD(0.01) if optimizer is None else optimizer
        self.l2 = l2
        self.intercept_lr = intercept_lr
        self.clip_gradient = clip_gradient
        self.multiclass = multiclass
        self._init_clf()

    def _reset_opt(self) -> None:
        self.optimizer.reset()

    def _scalar_ok(self) -> bool:
        return type(self.optimizer) is SGD and self.clip_gradient >= 1e12

    def _scalar_multi_ok(self) -> bool:
        return type(self.optimizer) is SGD and self.clip_gradient >= 1e12

    def _learn_multi(self, x: dict[Hashable, Any], c: int, w: float) -> bool:
        """The multiclass plain-SGD step of :meth:`_update` for one record on the list form
        (same operations, same order); ``False`` if the arrays must be used."""
        xm = self._xmulti(x, grow=True)
        if xm is None:
            return False
        wm, bm, v = xm
        try:
            S = [sum(map(mul, r, v)) + bj for r, bj in zip(wm, bm, strict=True)]
        except TypeError:  # None or non-numbers in x: the array code handles them
            return False
        if self._loss == "log":
            if self.multiclass == "softmax":
                mx = max(S)
                Ex = [math.exp(s - mx) for s in S]
                tot = sum(Ex)
                P = [e / tot for e in Ex]
            else:
                P = [0.5 * (1.0 + math.tanh(0.5 * s)) for s in S]
            E = [p - (1.0 if j == c else 0.0) for j, p in enumerate(P)]
        else:
            E = []
            for j, s in enumerate(S):
                sg = 1.0 if j == c else -1.0
                E.append(-sg if sg * s < 1.0 else 0.0)
        curv = 0.5 if self.multiclass == "softmax" else 0.25
        E = [e * w for e in E]
        lr, blr = self.optimizer.lr, self.intercept_lr
        load = lr * curv * (w * sum(map(mul, v, v)))
        damp = 1.0 / load if load > 1.0 else 1.0
        l2w = self.l2 * w
        for j, ej in enumerate(E):
            r = wm[j]
            if l2w:
                wm[j] = [a - lr * ((ej * b) * damp + l2w * a) for a, b in zip(r, v, strict=True)]
            elif ej:
                wm[j] = [a - lr * ((ej * b) * damp) for a, b in zip(r, v, strict=True)]
        bload = blr * curv * w
        bd = 1.0 / bload if bload > 1.0 else 1.0
        for j, ej in enumerate(E):
            bm[j] -= blr * bd * ej
        return True

    def learn_one(self, x: dict[Hashable, Any], y: Any, w: float = 1.0) -> None:
        """Update on one record (equal to ``learn_many`` on a one-row batch)."""
        c = self._ls.index.get(y)
        if c is not None and len(self._ls) > 2 and self._learn_multi(x, c, w):
            return
        if c is not None:  # a known class: single output (binary) steps on the list form
            xl = self._xlist(x, grow=True)
            if xl is not None:
                wl, vl = xl
                try:
                    sc = sum(map(mul, wl, vl)) + self._bl
                except TypeError:  # None or non-numbers in x: the array code handles them
                    sc = None
                if sc is not None:
                    # The plain-SGD step of _update (same operations, same order) on floats.
                    if self._loss == "log":
                        e = 0.5 * (1.0 + math.tanh(0.5 * sc)) - (1.0 if c == 1 else 0.0)
                    else:
                        sg = 1.0 if c == 1 else -1.0
                        e = -sg if sg * sc < 1.0 else 0.0
                    lr, blr = self.optimizer.lr, self.intercept_lr
                    curv = 0.5 if self.multiclass == "softmax" else 0.25
                    e *= w
                    load = lr * curv * w * sum(map(mul, vl, vl))
                    ew = e / load if load > 1.0 else e
                    if self.l2:
                        f = 1.0 - lr * self.l2 * w
                        wl = list(map(mul, wl, repeat(f)))
                    if ew:
                        wl = list(map(sub, wl, map(mul, repeat(lr * ew), vl)))
                    self._wl = wl
                    bload = blr * curv * w
                    self._bl -= blr * (e / bload if bload > 1.0 else e)
                    return
        if (
            self._W.shape[0] == 1
            and type(self.optimizer) is SGD
            and self.clip_gradient >= 1e12
            and len(self._ls) == 2
        ):
            c = self._ls.index.get(plain_label(y))
            if c is not None:  # binary fast path on the arrays: three array operations
                v = self._fs.vector(x, grow=True)
                self._grow_features()
                Wr = self._W[0]
                s = float(Wr @ v) + float(self._b[0])
                t = 1.0 if c == 1 else 0.0
                if self._loss == "log":
                    e = 0.5 * (1.0 + math.tanh(0.5 * s)) - t
                else:
                    sg = 2.0 * t - 1.0
                    e = -sg if sg * s < 1.0 else 0.0
                lr, blr = self.optimizer.lr, self.intercept_lr
                curv = 0.5 if self.multiclass == "softmax" else 0.25
                e *= w
                load = lr * curv * w * float(v @ v)
                ew = e / load if load > 1.0 else e
                if self.l2:
                    Wr *= 1.0 - lr * self.l2 * w
                if ew:
                    Wr -= (lr * ew) * v
                bload = blr * curv * w
                self._b[0] -= blr * (e / bload if bload > 1.0 else e)
                return
        super().learn_one(x, y, w)

    def _update(self, M: np.ndarray, yi: np.ndarray, sw: np.ndarray) -> None:
        Y = self._targets(yi)
        S = self._scores(M)
        if self._loss == "log":
            if S.shape[1] > 1 and self.multiclass == "softmax":
                S = S - S.max(axis=1, keepdims=True)
                E = np.exp(S)
                P = E / E.sum(axis=1, keepdims=True)
            else:
                P = _sigmoid(S)
            E = P - Y
        else:  # hinge, labels in {-1, +1} per row
            s = 2.0 * Y - 1.0
            E = np.where(s * S < 1.0, -s, 0.0)
        if self.clip_gradient < 1e12:
            np.clip(E, -self.clip_gradient, self.clip_gradient, out=E)
        curv = 0.5 if self.multiclass == "softmax" else 0.25
        E *= sw[:, None]
        G = (E.T @ M) * _damping(self.optimizer, curv, M, sw)
        if self.l2:
            G += self.l2 * sw.sum() * self._W
        self.optimizer.step(self._W, G)
        self._b -= self.intercept_lr * _bias_damping(self.intercept_lr, curv, sw) * E.sum(axis=0)


class LogisticRegression(_SGDClassifier):
    """Logistic regression trained online by gradient descent.

    Binary by default (one weight vector); when a third class appears the model switches to
    one weight vector per class, combined one-vs-rest (``multiclass="ovr"``) or by softmax
    (``multiclass="softmax"``).

    Parameters
    ----------
    optimizer
        Weight optimizer (``optim.SGD(0.01)`` by default, as in River).
    l2
        L2 regularisation strength.
    intercept_lr
        Learning rate of the intercept (plain SGD).
    clip_gradient
        Clip the loss gradient to ``[-clip_gradient, clip_gradient]``.
    multiclass
        ``"ovr"`` or ``"softmax"`` for more than two classes.

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> from tideflow.ml.metrics import Accuracy
    >>> model, acc = LogisticRegression(), Accuracy()
    >>> for x, y in synth.SEA(seed=1).take(2000):
    ...     acc.update(y, model.predict_one(x))
    ...     model.learn_one(x, y)
    >>> acc.get() > 0.8
    True
    """

    _loss = "log"

    def __init__(
        self,
        optimizer: Optimizer | None = None,
        l2: float = 0.0,
        intercept_lr: float = 0.01,
        clip_gradient: float = 1e12,
        multiclass: Multiclass = "ovr",
    ) -> None:
        self._init_sgd(optimizer, l2, intercept_lr, clip_gradient, multiclass)


class SoftmaxRegression(LogisticRegression):
    """Multinomial logistic regression (:class:`LogisticRegression` with softmax)."""

    def __init__(
        self,
        optimizer: Optimizer | None = None,
        l2: float = 0.0,
        intercept_lr: float = 0.01,
        clip_gradient: float = 1e12,
        multiclass: Multiclass = "softmax",
    ) -> None:
        super().__init__(optimizer, l2, intercept_lr, clip_gradient, multiclass)


class LinearSVC(_SGDClassifier):
    """Linear support vector machine: hinge loss and L2, trained online by gradient descent.

    Multiclass is one-vs-rest. ``predict_proba_one`` passes the margin through a sigmoid (a
    score, not a calibrated probability). River's equivalent is
    ``LogisticRegression(loss=optim.losses.Hinge())``.

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> model = LinearSVC()
    >>> for x, y in synth.SEA(seed=2).take(1000):
    ...     model.learn_one(x, y)
    >>> model.predict_one({0: 1.0, 1: 1.0, 2: 5.0})
    True
    """

    _loss = "hinge"

    def __init__(
        self,
        optimizer: Optimizer | None = None,
        l2: float = 0.0001,
        intercept_lr: float = 0.01,
        clip_gradient: float = 1e12,
    ) -> None:
        self._init_sgd(optimizer, l2, intercept_lr, clip_gradient, "ovr")


class PAClassifier(_LinearClassifier):
    """Passive-aggressive classifier (Crammer et al., 2006), PA (mode 0), PA-I (1), PA-II (2).

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> model = PAClassifier()
    >>> for x, y in synth.SEA(seed=3).take(1000):
    ...     model.learn_one(x, y)
    >>> model.predict_one({0: 1.0, 1: 1.0, 2: 5.0})
    True
    """

    def __init__(self, C: float = 1.0, mode: int = 1, learn_intercept: bool = True) -> None:
        _check_positive("PAClassifier", "C", C)
        _check_choice("PAClassifier", "mode", mode, (0, 1, 2))
        self.C = C
        self.mode = mode
        self.learn_intercept = learn_intercept
        self._init_clf()

    def learn_one(self, x: dict[Hashable, Any], y: Any, w: float = 1.0) -> None:
        """Update on one record (equal to ``learn_many`` on a one-row batch)."""
        c = self._ls.index.get(y)
        if c is not None and self._learn_scalar(x, 1.0 if c == 1 else -1.0, w):
            return
        if self._W.shape[0] == 1 and len(self._ls) == 2:
            c = self._ls.index.get(plain_label(y))
            if c is not None:  # binary fast path on the arrays
                v = self._fs.vector(x, grow=True)
                self._grow_features()
                Wr = self._W[0]
                sg = 1.0 if c == 1 else -1.0
                loss = 1.0 - sg * (float(Wr @ v) + float(self._b[0]))
                if loss > 0.0:
                    t = _pa_tau1(loss, float(v @ v), self.C, self.mode) * sg * w
                    Wr += t * v
                    if self.learn_intercept:
                        self._b[0] += t
                return
        super().learn_one(x, y, w)

    def _scalar_ok(self) -> bool:
        return True

    def _learn_scalar(self, x: dict[Hashable, Any], sg: float, w: float) -> bool:
        """The single-output step on the list form; ``False`` if the arrays must be used."""
        xl = self._xlist(x, grow=True)
        if xl is None:
            return False
        wl, v = xl
        try:
            loss = 1.0 - sg * (sum(map(mul, wl, v)) + self._bl)
        except TypeError:  # None or non-numbers in x: the array code handles them
            return False
        if loss > 0.0:
            t = _pa_tau1(loss, sum(map(mul, v, v)), self.C, self.mode) * sg * w
            self._wl = list(map(add, wl, map(mul, repeat(t), v)))
            if self.learn_intercept:
                self._bl += t
        return True

    def _update(self, M: np.ndarray, yi: np.ndarray, sw: np.ndarray) -> None:
        s = 2.0 * self._targets(yi) - 1.0
        S = self._scores(M)
        loss = np.maximum(0.0, 1.0 - s * S)
        tau = _pa_tau(loss, (M * M).sum(axis=1)[:, None], self.C, self.mode)
        T = tau * s * sw[:, None] / max(1, int((tau > 0).any(axis=1).sum()))
        self._W += T.T @ M
        if self.learn_intercept:
            self._b += T.sum(axis=0)


def _damping(opt: Optimizer, curvature: float, M: np.ndarray, sw: np.ndarray) -> float:
    """Scale for a plain-SGD step so that ``lr * curvature * sum(w |x|^2) <= 1``.

    Summing a batch's gradients is like taking its records one by one only while the step stays
    inside the loss's stability limit; beyond it (large batches, unscaled features) the sum
    would overshoot or diverge. On standardised features a single record never reaches the
    limit, so per-record learning is the plain SGD step (as in River).
    """
    if type(opt) is not SGD:
        return 1.0
    load = opt.lr * curvature * _lambda_max(M, sw)
    return 1.0 / load if load > 1.0 else 1.0


def _lambda_max(M: np.ndarray, sw: np.ndarray) -> float:
    """Largest eigenvalue of ``sum_i w_i x_i x_i^T`` (exact for one row or up to 256 features)."""
    if M.shape[0] == 1:
        return float(sw[0] * (M[0] @ M[0]))
    d = M.shape[1]
    if d == 0:
        return 0.0
    if d <= 256:
        A = (M * sw[:, None]).T @ M
        return float(np.linalg.eigvalsh(A)[-1])
    v = np.ones(d) / math.sqrt(d)
    lam = 0.0
    for _ in range(12):  # power iteration, from below: pad by 20%
        u = M.T @ (sw * (M @ v))
        lam = float(np.linalg.norm(u))
        if lam == 0.0:
            return 0.0
        v = u / lam
    return 1.2 * lam


def _bias_damping(lr: float, curvature: float, sw: np.ndarray) -> float:
    load = lr * curvature * float(sw.sum())
    return 1.0 / load if load > 1.0 else 1.0


def _pa_tau1(loss: float, norm: float, C: float, mode: int) -> float:
    """:func:`_pa_tau` for one record."""
    if mode == 0:
        return loss / norm if norm > 0 else 0.0
    if mode == 1:
        return min(C, loss / norm) if norm > 0 else C
    return loss / (norm + 0.5 / C)


def _pa_tau(loss: np.ndarray, norm: np.ndarray, C: float, mode: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        if mode == 0:
            tau = loss / norm
        elif mode == 1:
            tau = np.minimum(C, loss / norm)
        else:
            tau = loss / (norm + 0.5 / C)
    return np.where(np.isfinite(tau), tau, 0.0)


class _LinearRegressor(_Linear, Regressor):
    def predict_one(self, x: dict[Hashable, Any]) -> float:
        """Prediction for one record."""
        xl = self._xlist(x, grow=False)
        if xl is not None:
            try:
                return float(sum(map(mul, *xl)) + self._bl)
            except TypeError:  # None or non-numbers in x: the array code handles them
                pass
        va = self._fs.vector(x, grow=False)
        d = min(len(va), self._W.shape[1])
        return float(self._W[0, :d] @ va[:d]) + float(self._b[0])

    def predict_many(self, X: Any) -> np.ndarray:
        """Predictions for a mini-batch."""
        return self._scores(self._xm(X, grow=False))[:, 0]

    def learn_one(self, x: dict[Hashable, Any], y: float, w: float = 1.0) -> None:
        """Update on one record (equal to ``learn_many`` on a one-row batch)."""
        self._update(self._x1(x, grow=True), np.asarray([float(y)]), np.asarray([w], dtype=float))

    def learn_many(self, X: Any, y: Any, w: Any = None) -> None:
        """One step on a mini-batch: per-record gradients at the same weights, summed."""
        M = self._xm(X, grow=True)
        yy = as_labels(y).astype(np.float64)
        sw = np.ones(len(yy)) if w is None else np.asarray(w, dtype=float)
        self._update(M, yy, sw)

    def _update(self, M: np.ndarray, y: np.ndarray, sw: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        return self._lin_state()

    def _set_state(self, state: dict[str, Any]) -> None:
        self._set_lin_state(state)


class LinearRegression(_LinearRegressor):
    """Linear least-squares regression trained online by gradient descent.

    Scale the inputs (``StandardScaler() | LinearRegression()``): plain SGD diverges on
    features with large values, as in River.

    Examples
    --------
    >>> from tideflow.ml.preprocessing import StandardScaler
    >>> model = StandardScaler() | LinearRegression()
    >>> for i in range(3000):
    ...     x = {"a": (i * 7919) % 100 / 10.0}
    ...     model.learn_one(x, 3.0 * x["a"] + 1.0)
    >>> round(model.predict_one({"a": 5.0}))
    16
    """

    def __init__(
        self,
        optimizer: Optimizer | None = None,
        l2: float = 0.0,
        intercept_init: float = 0.0,
        intercept_lr: float = 0.01,
        clip_gradient: float = 1e12,
    ) -> None:
        _check_positive("LinearRegression", "l2", l2, strict=False)
        self.optimizer = SGD(0.01) if optimizer is None else optimizer
        self.l2 = l2
        self.intercept_init = intercept_init
        self.intercept_lr = intercept_lr
        self.clip_gradient = clip_gradient
        self._init_linear(intercept_init)

    def learn_one(self, x: dict[Hashable, Any], y: float, w: float = 1.0) -> None:
        """Update on one record (equal to ``learn_many`` on a one-row batch)."""
        xl = self._xlist(x, grow=True)  # None unless plain SGD without clipping, few features
        if xl is not None:
            wl, v0 = xl
            try:
                e = 2.0 * (sum(map(mul, wl, v0)) + self._bl - float(y))
            except TypeError:  # None or non-numbers in x: the array code handles them
                e = None
            if e is not None:  # the step below (same operations, same order) on floats
                lr, blr = self.optimizer.lr, self.intercept_lr
                e *= w
                load = lr * 2.0 * w * sum(map(mul, v0, v0))
                ew = e / load if load > 1.0 else e
                if self.l2:
                    wl = list(map(mul, wl, repeat(1.0 - lr * self.l2 * w)))
                if ew:
                    wl = list(map(sub, wl, map(mul, repeat(lr * ew), v0)))
                self._wl = wl
                bload = blr * 2.0 * w
                self._bl -= blr * (e / bload if bload > 1.0 else e)
                return
        if type(self.optimizer) is not SGD or self.clip_gradient < 1e12:
            super().learn_one(x, y, w)
            return
        v = self._fs.vector(x, grow=True)
        self._grow_features()
        Wr = self._W[0]
        e = 2.0 * (float(Wr @ v) + float(self._b[0]) - float(y))
        lr, blr = self.optimizer.lr, self.intercept_lr
        e *= w
        load = lr * 2.0 * w * float(v @ v)
        ew = e / load if load > 1.0 else e
        if self.l2:
            Wr *= 1.0 - lr * self.l2 * w
        if ew:
            Wr -= (lr * ew) * v
        bload = blr * 2.0 * w
        self._b[0] -= blr * (e / bload if bload > 1.0 else e)

    def _scalar_ok(self) -> bool:
        return type(self.optimizer) is SGD and self.clip_gradient >= 1e12

    def _update(self, M: np.ndarray, y: np.ndarray, sw: np.ndarray) -> None:
        e = 2.0 * (self._scores(M)[:, 0] - y)
        if self.clip_gradient < 1e12:
            np.clip(e, -self.clip_gradient, self.clip_gradient, out=e)
        e *= sw
        G = (e @ M)[None, :] * _damping(self.optimizer, 2.0, M, sw)
        if self.l2:
            G += self.l2 * sw.sum() * self._W
        self.optimizer.step(self._W, G)
        self._b -= self.intercept_lr * _bias_damping(self.intercept_lr, 2.0, sw) * e.sum()


class PARegressor(_LinearRegressor):
    """Passive-aggressive regressor with an epsilon-insensitive loss (Crammer et al., 2006).

    Examples
    --------
    >>> model = PARegressor()
    >>> for i in range(500):
    ...     x = {"a": (i * 7919) % 100 / 10.0}
    ...     model.learn_one(x, 2.0 * x["a"])
    >>> abs(model.predict_one({"a": 4.0}) - 8.0) < 0.5
    True
    """

    def __init__(
        self, C: float = 1.0, mode: int = 1, eps: float = 0.1, learn_intercept: bool = True
    ) -> None:
        _check_positive("PARegressor", "C", C)
        _check_choice("PARegressor", "mode", mode, (0, 1, 2))
        self.C = C
        self.mode = mode
        self.eps = eps
        self.learn_intercept = learn_intercept
        self._init_linear(0.0)

    def _scalar_ok(self) -> bool:
        return True

    def learn_one(self, x: dict[Hashable, Any], y: float, w: float = 1.0) -> None:
        """Update on one record (equal to ``learn_many`` on a one-row batch)."""
        xl = self._xlist(x, grow=True)
        if xl is not None:
            wl, vl = xl
            try:
                r = float(y) - (sum(map(mul, wl, vl)) + self._bl)
            except TypeError:  # None or non-numbers in x: the array code handles them
                r = None
            if r is not None:  # the step below (same operations, same order) on floats
                loss = abs(r) - self.eps
                if loss > 0.0:
                    sg = 1.0 if r > 0 else -1.0
                    t = _pa_tau1(loss, sum(map(mul, vl, vl)), self.C, self.mode) * sg * w
                    self._wl = list(map(add, wl, map(mul, repeat(t), vl)))
                    if self.learn_intercept:
                        self._bl += t
                return
        v = self._fs.vector(x, grow=True)
        self._grow_features()
        Wr = self._W[0]
        r = float(y) - (float(Wr @ v) + float(self._b[0]))
        loss = abs(r) - self.eps
        if loss > 0.0:
            t = _pa_tau1(loss, float(v @ v), self.C, self.mode) * (1.0 if r > 0 else -1.0) * w
            Wr += t * v
            if self.learn_intercept:
                self._b[0] += t

    def _update(self, M: np.ndarray, y: np.ndarray, sw: np.ndarray) -> None:
        r = y - self._scores(M)[:, 0]
        loss = np.maximum(0.0, np.abs(r) - self.eps)
        tau = _pa_tau(loss, (M * M).sum(axis=1), self.C, self.mode) * np.sign(r) * sw
        tau /= max(1, int((tau != 0).sum()))  # average the projections of the active records
        self._W[0] += tau @ M
        if self.learn_intercept:
            self._b[0] += tau.sum()
