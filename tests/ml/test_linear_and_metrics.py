"""Linear models, preprocessing and metrics: they learn, and batch == per-record paths."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ml._streams import dicts, stream

from tideflow import ConfigError, DataError
from tideflow.ml import linear_model as lm
from tideflow.ml import metrics, optim
from tideflow.ml import preprocessing as pp
from tideflow.ml.datasets import synth


def _prequential(model: Any, X: np.ndarray, y: np.ndarray, metric: metrics.Metric) -> float:
    for x, t in zip(dicts(X), y.tolist(), strict=True):
        p = model.predict_one(x)
        if p is not None:
            metric.update(t, p)
        model.learn_one(x, t)
    return metric.get()


@pytest.mark.parametrize(
    "model",
    [
        pp.StandardScaler() | lm.LogisticRegression(),
        pp.StandardScaler() | lm.LogisticRegression(optimizer=optim.Adam(0.05), l2=1e-4),
        pp.StandardScaler() | lm.LogisticRegression(optimizer=optim.AdaGrad()),
        pp.StandardScaler() | lm.LinearSVC(),
        pp.StandardScaler() | lm.PAClassifier(),
    ],
    ids=["logreg-sgd", "logreg-adam", "logreg-adagrad", "svc", "pa"],
)
def test_linear_classifiers_beat_majority_on_sea(model: Any) -> None:
    X, y = stream("binary", 3000, seed=5)
    majority = max(y.mean(), 1 - y.mean())
    acc = _prequential(model, X, y, metrics.Accuracy())
    assert acc > majority + 0.15, (acc, majority)


@pytest.mark.parametrize("multiclass", ["ovr", "softmax"])
def test_multiclass_logistic_regression(multiclass: str) -> None:
    X, y = stream("multiclass", 4000, seed=6)
    model = pp.StandardScaler() | lm.LogisticRegression(
        optimizer=optim.Adam(0.05), multiclass=multiclass
    )
    acc = _prequential(model, X, y, metrics.Accuracy())
    majority = max(np.mean(y == c) for c in np.unique(y))
    assert acc > majority + 0.2, (acc, majority)


@pytest.mark.parametrize(
    "model",
    [pp.StandardScaler() | lm.LinearRegression(), pp.StandardScaler() | lm.PARegressor()],
    ids=["linreg", "pa"],
)
def test_linear_regressors_beat_the_mean_on_friedman(model: Any) -> None:
    X, y = synth.Friedman(seed=7).arrays(4000)
    mae = _prequential(model, X, y, metrics.MAE())
    baseline = np.abs(y - y.mean()).mean()
    assert mae < 0.8 * baseline, (mae, baseline)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: lm.LogisticRegression(),
        lambda: lm.LogisticRegression(optimizer=optim.Adam(), l2=0.01),
        lambda: lm.SoftmaxRegression(optimizer=optim.AdaGrad()),
        lambda: lm.LinearSVC(),
        lambda: lm.PAClassifier(mode=2),
        lambda: lm.LinearRegression(l2=0.1),
        lambda: lm.LinearRegression(optimizer=optim.SGD(0.05)),  # damped steps
        lambda: lm.LogisticRegression(optimizer=optim.SGD(0.5), l2=0.01),  # damped steps
        lambda: lm.PARegressor(mode=0),
    ],
)
def test_learn_one_equals_one_row_batches(factory: Any) -> None:
    name = type(factory()).__name__
    tasks = (
        ["regression"] if name in ("LinearRegression", "PARegressor") else ["binary", "multiclass"]
    )
    for task in tasks:  # binary exercises the scalar fast paths, multiclass the general one
        X, y = stream(task, 300, seed=8)
        X = X * 3.0  # large enough that the damping of plain SGD steps kicks in sometimes
        a, b = factory(), factory()
        for i, x in enumerate(dicts(X)):
            a.learn_one(x, y[i].item())
            b.learn_many(X[i : i + 1], y[i : i + 1])
        np.testing.assert_allclose(a._W, b._W, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a._b, b._b, rtol=1e-10, atol=1e-12)


def test_learn_many_is_one_summed_gradient_step() -> None:
    X, y = stream("binary", 64, seed=9)
    batch = lm.LogisticRegression()
    batch.learn_many(X, y)
    # the same: per-record gradients all taken at the initial (zero) weights, summed
    p0 = 0.5
    g = ((p0 - (y == batch.classes_[1]).astype(float))[:, None] * X).sum(axis=0)
    np.testing.assert_allclose(batch._W[0], -0.01 * g, rtol=1e-12)


def test_linear_model_needs_numeric_features() -> None:
    model = lm.LogisticRegression()
    with pytest.raises(DataError, match="OneHotEncoder"):
        model.learn_many({"city": np.asarray(["a", "b"], dtype=object)}, [True, False])
    enc = pp.OneHotEncoder() | lm.LogisticRegression()
    enc.learn_many({"city": np.asarray(["a", "b"], dtype=object)}, [True, False])
    assert enc.predict_one({"city": "a"}) in (True, False)


def test_bad_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="multiclass"):
        lm.LogisticRegression(multiclass="bogus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lr"):
        optim.SGD(-1.0)
    with pytest.raises(ConfigError, match="window_size"):
        metrics.Rolling(metrics.MAE(), 0)


def test_one_hot_and_hasher_batch_equal_per_record() -> None:
    rows = [{"c": "x", "n": 1.0}, {"c": "y", "n": 2.0}, {"c": "x", "n": 3.0}]
    cols = {"c": np.asarray(["x", "y", "x"], dtype=object), "n": np.asarray([1.0, 2.0, 3.0])}
    h = pp.FeatureHasher(n_features=32, seed=3)
    M = h.transform_many(cols).matrix()
    for i, r in enumerate(rows):
        dense = np.zeros(32)
        for k, v in h.transform_one(r).items():
            dense[k] += v
        np.testing.assert_allclose(M[i], dense)
    enc = pp.OneHotEncoder()
    enc.learn_many(cols)
    out = enc.transform_many(cols)
    assert out.names == ["c_x", "c_y", "n"]
    assert out.matrix()[:, 0].tolist() == [1.0, 0.0, 1.0]


# -- hypothesis: order-independent pieces, batch == per record --------------------------------
floats = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(floats, min_size=3, max_size=3), min_size=1, max_size=40),
    st.integers(1, 7),
)
def test_scaler_learn_many_equals_learn_one(rows: list[list[float]], chunk: int) -> None:
    X = np.asarray(rows)
    a, b = pp.StandardScaler(), pp.StandardScaler()
    for r in rows:
        a.learn_one(dict(enumerate(r)))
    for i in range(0, len(rows), chunk):
        b.learn_many(X[i : i + chunk])
    for key in ("counts", "means", "vars"):
        va, vb = getattr(a, key), getattr(b, key)
        np.testing.assert_allclose(list(va.values()), list(vb.values()), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(
        b.transform_many(X).matrix(),
        np.asarray([list(b.transform_one(dict(enumerate(r))).values()) for r in rows]),
        rtol=1e-9,
        atol=1e-9,
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=1, max_size=60), st.integers(1, 50)
)
def test_classification_metrics_update_many_equals_update(
    pairs: list[tuple[bool, float]], window: int
) -> None:
    yt = np.asarray([t for t, _ in pairs])
    score = np.asarray([s for _, s in pairs])
    yp = score > 0.5
    for make, pred in [
        (metrics.Accuracy, yp),
        (metrics.F1, yp),
        (metrics.ROCAUC, score),
        (metrics.LogLoss, score),
        (lambda: metrics.Rolling(metrics.Accuracy(), window), yp),
        (lambda: metrics.Rolling(metrics.ROCAUC(), window), score),
    ]:
        a, b = make(), make()
        for t, p in zip(yt.tolist(), pred.tolist(), strict=True):
            a.update(t, p)
        b.update_many(yt, pred)
        assert a.get() == pytest.approx(b.get(), rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=2, max_size=60), st.integers(1, 50))
def test_regression_metrics_update_many_equals_update(
    pairs: list[tuple[float, float]], window: int
) -> None:
    yt = np.asarray([t for t, _ in pairs])
    yp = np.asarray([p for _, p in pairs])
    for make in [
        metrics.MAE,
        metrics.RMSE,
        metrics.R2,
        lambda: metrics.Rolling(metrics.MAE(), window),
    ]:
        a, b = make(), make()
        for t, p in zip(yt.tolist(), yp.tolist(), strict=True):
            a.update(t, p)
        b.update_many(yt, yp)
        assert a.get() == pytest.approx(b.get(), rel=1e-6, abs=1e-6)


def test_metrics_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    yt = rng.random(500) < 0.4
    s = np.clip(yt * 0.3 + rng.random(500) * 0.7, 0, 1)
    auc = metrics.ROCAUC()
    auc.update_many(yt, s)
    pos, neg = s[yt], s[~yt]
    exact = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auc.get() == pytest.approx(exact, abs=2e-3)
    r2 = metrics.R2()
    y = rng.normal(size=200)
    p = y + rng.normal(scale=0.5, size=200)
    r2.update_many(y, p)
    assert r2.get() == pytest.approx(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    roll = metrics.Rolling(metrics.MAE(), 10)
    for t, q in zip(y.tolist(), p.tolist(), strict=True):
        roll.update(t, q)
    assert roll.get() == pytest.approx(np.abs(y[-10:] - p[-10:]).mean())
