"""Small seeded streams shared by the tideflow.ml tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.ml.datasets import synth

NAMES = ["a", "b", "c", "d"]


def stream(task: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 4) in roughly [0, 1] and labels for a task."""
    rng = np.random.default_rng(seed)
    if task in ("binary", "anomaly", "cluster", "transformer"):
        X, y = synth.SEA(seed=seed, noise=0.02).arrays(n)
        X = np.column_stack([X / 10.0, rng.random(n)])
        if task == "anomaly":
            y = np.zeros(n, dtype=bool)
            out = rng.random(n) < 0.02
            X[out] = rng.random((int(out.sum()), 4)) * 3 + 2
            y[out] = True
        return X, y
    if task == "multiclass":
        X = rng.random((n, 4))
        y = np.where(X[:, 0] > 0.6, "hi", np.where(X[:, 1] > 0.5, "mid", "lo"))
        return X, y
    if task == "regression":
        X, y = synth.Friedman(seed=seed).arrays(n)
        return X[:, :4], y
    raise AssertionError(task)


def dicts(X: np.ndarray) -> list[dict[str, Any]]:
    names = NAMES if X.shape[1] == len(NAMES) else [f"f{j}" for j in range(X.shape[1])]
    return [dict(zip(names, r, strict=True)) for r in X.tolist()]
