"""Shared conformance checks run over every tideflow.ml model (River's ``checks`` idea)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from tests.ml._streams import NAMES, dicts, stream

from tideflow.ml import from_snapshot, load
from tideflow.ml import linear_model as lm
from tideflow.ml import preprocessing as pp

# (factory, task); the factory is the class itself where defaults are enough.
MODELS: list[tuple[Any, str]] = [
    (lm.LogisticRegression, "binary"),
    (lm.LogisticRegression, "multiclass"),
    (lm.SoftmaxRegression, "multiclass"),
    (lm.LinearSVC, "binary"),
    (lm.PAClassifier, "binary"),
    (lm.PAClassifier, "multiclass"),
    (lm.LinearRegression, "regression"),
    (lm.PARegressor, "regression"),
    (lambda: pp.StandardScaler() | lm.LogisticRegression(), "binary"),
    (pp.StandardScaler, "transformer"),
    (pp.OneHotEncoder, "transformer"),
    (pp.FeatureHasher, "transformer"),
]

try:  # later model families register themselves here when present
    from tests.ml._more_models import MORE_MODELS

    MODELS += MORE_MODELS
except ImportError:  # pragma: no cover
    pass


def _id(p: tuple[Any, str]) -> str:
    f, task = p
    name = getattr(f, "__name__", "pipeline")
    return f"{name}-{task}"


def _learn(model: Any, task: str, x: dict[str, Any], y: Any) -> None:
    if task in ("anomaly", "cluster", "transformer"):
        model.learn_one(x)
    else:
        model.learn_one(x, y)


def _learn_many(model: Any, task: str, X: Any, y: Any) -> None:
    if task in ("anomaly", "cluster", "transformer"):
        model.learn_many(X)
    else:
        model.learn_many(X, y)


def _outputs_one(model: Any, task: str, rows: list[dict[str, Any]]) -> list[Any]:
    if task == "anomaly":
        return [model.score_one(x) for x in rows]
    if task == "transformer":
        return [model.transform_one(x) for x in rows]
    if task in ("binary", "multiclass"):
        return [model.predict_proba_one(x) for x in rows]
    return [model.predict_one(x) for x in rows]


def _outputs_many(model: Any, task: str, X: Any) -> np.ndarray:
    if task == "anomaly":
        return np.asarray(model.score_many(X))
    if task == "transformer":
        return model.transform_many(X).matrix()
    if task in ("binary", "multiclass"):
        return np.asarray(model.predict_proba_many(X))
    return np.asarray(model.predict_many(X))


PARAMS = [pytest.param(f, t, id=_id((f, t))) for f, t in MODELS]


@pytest.mark.parametrize(("factory", "task"), PARAMS)
def test_defaults_learn_and_predict_on_dicts_and_arrays(factory: Any, task: str) -> None:
    X, y = stream(task, 400, seed=1)
    rows = dicts(X)
    model = factory()
    for x, t in zip(rows[:200], y[:200].tolist(), strict=True):
        _learn(model, task, x, t)
    _learn_many(model, task, X[200:], y[200:])
    out_one = _outputs_one(model, task, rows[:20])
    out_many = _outputs_many(model, task, pl.DataFrame(X[:20], schema=NAMES, orient="row"))
    assert len(out_one) == 20
    assert out_many.shape[0] == 20
    if task in ("binary", "multiclass"):
        classes = model.classes_
        assert set(classes) == set(np.unique(y).tolist())
        for p, row in zip(out_one, out_many, strict=True):
            assert math.isclose(sum(p.values()), 1.0, rel_tol=1e-6)
            np.testing.assert_allclose([p[c] for c in classes], row, rtol=1e-6, atol=1e-9)
        labels = model.predict_many(X[:20])
        assert [model.predict_one(r) for r in rows[:20]] == labels.tolist()
    elif task in ("regression", "anomaly", "cluster"):
        np.testing.assert_allclose(np.asarray(out_one, dtype=float), out_many, rtol=1e-6, atol=1e-9)
    # the same through an Arrow table
    out_arrow = _outputs_many(model, task, pa.table({n: X[:20, j] for j, n in enumerate(NAMES)}))
    np.testing.assert_allclose(out_arrow, out_many, rtol=1e-9)


@pytest.mark.parametrize(("factory", "task"), PARAMS)
def test_snapshot_restore_mid_stream_gives_identical_predictions(
    factory: Any, task: str, tmp_path: Any
) -> None:
    X, y = stream(task, 600, seed=2)
    rows = dicts(X)
    model = factory()
    for x, t in zip(rows[:300], y[:300].tolist(), strict=True):
        _learn(model, task, x, t)
    snap = model.snapshot()
    restored = from_snapshot(snap)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = load(path)
    twin = factory().restore(snap)
    for other in (restored, loaded, twin):
        assert type(other) is type(model)
    for x, t in zip(rows[300:500], y[300:500].tolist(), strict=True):
        for m in (model, restored, loaded, twin):
            _learn(m, task, x, t)
    ref = _outputs_many(model, task, X[500:])
    for other in (restored, loaded, twin):
        np.testing.assert_array_equal(_outputs_many(other, task, X[500:]), ref)
        assert _outputs_one(other, task, rows[500:520]) == _outputs_one(model, task, rows[500:520])
    # the snapshot is a copy: learning after it does not change it
    assert from_snapshot(snap).snapshot()["state"].keys() == snap["state"].keys()


@pytest.mark.parametrize(("factory", "task"), PARAMS)
def test_unseen_features_are_handled(factory: Any, task: str) -> None:
    X, y = stream(task, 300, seed=3)
    rows = dicts(X)
    model = factory()
    for x, t in zip(rows[:200], y[:200].tolist(), strict=True):
        _learn(model, task, x, t)
    odd = {**rows[200], "new_feature": 0.5}
    _outputs_one(model, task, [odd, {"only_new": 1.0}, {}])
    _learn(model, task, odd, y[200].item())
    out = _outputs_one(model, task, rows[201:210])
    assert len(out) == 9


def test_snapshot_is_plain_data() -> None:
    model = pp.StandardScaler() | lm.LogisticRegression()
    X, y = stream("binary", 100)
    model.learn_many(X, y)

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k, i in v.items():
                assert isinstance(k, (str, int))
                walk(i)
        elif isinstance(v, list):
            for i in v:
                walk(i)
        else:
            assert v is None or isinstance(v, (bool, int, float, str, np.ndarray)), type(v)

    walk(model.snapshot())
