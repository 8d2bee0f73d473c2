"""Optimizers for the linear models: SGD, Adam, AdaGrad.

An optimizer updates a weight matrix in place from a gradient of the same shape; its own state
(moments, accumulated squares) grows with the matrix when new features or classes appear.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.ml._base import Estimator, _check_positive

__all__ = ["SGD", "AdaGrad", "Adam", "Optimizer"]


def _fit(a: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if a is None:
        return np.zeros(shape)
    if a.shape == shape:
        return a
    out = np.zeros(shape)
    out[: a.shape[0], : a.shape[1]] = a
    return out


class Optimizer(Estimator):
    """Base optimizer; ``step(W, G)`` updates ``W`` in place."""

    def __init__(self, lr: float = 0.01) -> None:
        _check_positive(type(self).__name__, "lr", lr)
        self.lr = lr

    def step(self, W: np.ndarray, G: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the optimizer's state (after the model's parametrisation changes)."""


class SGD(Optimizer):
    """Plain stochastic gradient descent: ``w -= lr * g``.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.ones((1, 2)); SGD(0.5).step(W, np.ones((1, 2))); W.tolist()
    [[0.5, 0.5]]
    """

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)

    def step(self, W: np.ndarray, G: np.ndarray) -> None:
        W -= self.lr * G


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al., 2011): per-weight rates scaled by accumulated squared gradients."""

    def __init__(self, lr: float = 0.1, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.eps = eps
        self._g2: np.ndarray | None = None

    def step(self, W: np.ndarray, G: np.ndarray) -> None:
        g2 = self._g2 = _fit(self._g2, W.shape)
        g2 += G * G
        W -= self.lr * G / (np.sqrt(g2) + self.eps)

    def reset(self) -> None:
        self._g2 = None

    def _get_state(self) -> dict[str, Any]:
        return {"g2": self._g2}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._g2 = state["g2"]


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias correction."""

    def __init__(
        self, lr: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999, eps: float = 1e-8
    ) -> None:
        super().__init__(lr)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.eps = eps
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._t = 0

    def step(self, W: np.ndarray, G: np.ndarray) -> None:
        m = self._m = _fit(self._m, W.shape)
        v = self._v = _fit(self._v, W.shape)
        self._t += 1
        b1, b2 = self.beta_1, self.beta_2
        m *= b1
        m += (1 - b1) * G
        v *= b2
        v += (1 - b2) * G * G
        lr = self.lr * np.sqrt(1 - b2**self._t) / (1 - b1**self._t)
        W -= lr * m / (np.sqrt(v) + self.eps)

    def reset(self) -> None:
        self._m = self._v = None
        self._t = 0

    def _get_state(self) -> dict[str, Any]:
        return {"m": self._m, "v": self._v, "t": self._t}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._m, self._v, self._t = state["m"], state["v"], int(state["t"])
