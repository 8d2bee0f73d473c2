"""Hoeffding trees: the per-record steps on Python floats equal the NumPy ones.

Up to ``_SCALAR_MAX_FEATURES`` numeric features, the classifier's naive Bayes leaf scoring and
Gaussian estimator update, and the regressor's feature scaler, standardisation and leaf model
step, run on Python floats. A twin forced onto the arrays (threshold below zero) must give the
same predictions (to 1e-12), the same tree and the same leaf statistics on random streams with
missing values and record weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow.ml import _tree, _tree_reg, tree


@contextmanager
def _threshold(value: int, module: Any = _tree) -> Iterator[None]:
    saved = module._SCALAR_MAX_FEATURES
    module._SCALAR_MAX_FEATURES = value
    try:
        yield
    finally:
        module._SCALAR_MAX_FEATURES = saved


def _records(seed: int, n: int, d: int) -> list[tuple[dict[str, Any], Any, float]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.choice([0.1, 1.0, 10.0], size=d)
    score = X @ rng.normal(size=d)
    y = np.where(score > 0.5, "a", np.where(score < -0.5, "b", "c"))
    out: list[tuple[dict[str, Any], Any, float]] = []
    for i in range(n):
        x: dict[str, Any] = {f"f{j}": X[i, j] for j in range(d)}
        if rng.random() < 0.1:
            x[f"f{int(rng.integers(d))}"] = None if rng.random() < 0.5 else float("nan")
        w = 1.0 if rng.random() < 0.8 else float(rng.uniform(0.3, 3.0))
        out.append((x, str(y[i]), w))
    return out


@settings(max_examples=5, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d=st.integers(1, 6),
    leaf_prediction=st.sampled_from(["nba", "nb"]),
)
def test_float_path_equals_array_path(seed: int, d: int, leaf_prediction: str) -> None:
    _compare_classifiers(seed, d, leaf_prediction)


def _compare_classifiers(seed: int, d: int, leaf_prediction: str) -> int:
    fast = tree.HoeffdingTreeClassifier(
        grace_period=40, delta=0.05, leaf_prediction=leaf_prediction
    )
    slow = tree.HoeffdingTreeClassifier(
        grace_period=40, delta=0.05, leaf_prediction=leaf_prediction
    )
    for i, (x, y, w) in enumerate(_records(seed, 600, d)):
        p_fast = fast.predict_proba_one(x)
        fast.learn_one(x, y, w)
        with _threshold(-1):
            p_slow = slow.predict_proba_one(x)
            slow.learn_one(x, y, w)
        assert p_fast.keys() == p_slow.keys(), i
        np.testing.assert_allclose(
            [p_fast[c] for c in p_slow], list(p_slow.values()), rtol=1e-12, atol=1e-12
        )
    assert fast.n_nodes == slow.n_nodes
    for a, b in zip(fast._leaves(), slow._leaves(), strict=True):
        for name in ("dist", "n", "mean", "m2", "lo", "hi"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=0)
        assert (a.mc_ok, a.nb_ok) == (b.mc_ok, b.nb_ok)
    return int(fast.n_nodes)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 6))
def test_regressor_float_path_equals_array_path(seed: int, d: int) -> None:
    _compare_regressors(seed, d)


def _compare_regressors(seed: int, d: int) -> int:
    recs = _records(seed, 600, d)
    rng = np.random.default_rng(seed)
    targets = rng.normal(size=len(recs)) + [
        3.0 * float(x.get("f0") or 0.0) ** 2 - float(x.get(f"f{d - 1}") or 0.0) for x, _, _ in recs
    ]
    fast = tree.HoeffdingTreeRegressor(grace_period=50, delta=0.05, seed=1)
    slow = tree.HoeffdingTreeRegressor(grace_period=50, delta=0.05, seed=1)
    for (x, _, w), t in zip(recs, targets.tolist(), strict=True):
        p_fast = fast.predict_one(x)
        fast.learn_one(x, t, w)
        with _threshold(-1, _tree_reg):
            p_slow = slow.predict_one(x)
            slow.learn_one(x, t, w)
        np.testing.assert_allclose(p_fast, p_slow, rtol=1e-12, atol=1e-12)
    assert fast.n_nodes == slow.n_nodes
    for name in ("_sn", "_smean", "_sm2"):
        np.testing.assert_allclose(getattr(fast, name), getattr(slow, name), rtol=1e-12, atol=0)
    for a, b in zip(fast._leaves(), slow._leaves(), strict=True):
        np.testing.assert_allclose(a.w, b.w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            [a.mean, a.m2, a.err_mean, a.err_model],
            [b.mean, b.m2, b.err_mean, b.err_model],
            rtol=1e-12,
        )
    return int(fast.n_nodes)


def test_paths_agree_through_splits() -> None:
    # fixed streams on which both trees split, so routing after splits is compared too
    assert _compare_classifiers(3, 4, "nba") > 1
    assert _compare_regressors(3, 4) > 1
