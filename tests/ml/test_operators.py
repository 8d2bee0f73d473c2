"""Dataflow operators: predict / learn / evaluate on a tideflow stream."""

from __future__ import annotations

import numpy as np
import pytest

import tideflow as tf
from tideflow.ml import anomaly, evaluate, learn, metrics, predict, preprocessing, tree
from tideflow.ml import linear_model as lm
from tideflow.ml.datasets import synth
from tideflow.testing import CollectSink, TestingSource


def _rows(n: int, seed: int) -> list[dict[str, float | bool]]:
    X, y = synth.SEA(seed=seed).arrays(n)
    return [
        {"a": r[0], "b": r[1], "c": r[2], "label": bool(t)}
        for r, t in zip(X.tolist(), y.tolist(), strict=True)
    ]


def test_learn_then_predict_in_a_flow_matches_the_library_calls() -> None:
    rows = _rows(3000, seed=1)
    model = preprocessing.StandardScaler() | lm.LogisticRegression()
    flow = tf.Dataflow("ml_learn")
    learn(flow.source(TestingSource(rows)), model, target="label").sink(CollectSink())
    tf.run(flow, batch_size=250)
    twin = preprocessing.StandardScaler() | lm.LogisticRegression()
    X = np.asarray([[r["a"], r["b"], r["c"]] for r in rows])
    y = np.asarray([r["label"] for r in rows])
    for i in range(0, 3000, 250):
        twin.learn_many(
            {"a": X[i : i + 250, 0], "b": X[i : i + 250, 1], "c": X[i : i + 250, 2]}, y[i : i + 250]
        )
    np.testing.assert_allclose(model.steps[1]._W, twin.steps[1]._W)

    test = _rows(500, seed=2)
    flow2 = tf.Dataflow("ml_predict")
    out = CollectSink()
    predict(flow2.source(TestingSource(test)), model, features=["a", "b", "c"]).sink(out)
    tf.run(flow2)
    frame = out.frame()
    assert frame.columns == ["a", "b", "c", "label", "prediction"]
    acc = (frame["prediction"] == frame["label"]).mean()
    assert acc > 0.9


def test_evaluate_emits_a_rolling_metric_per_batch() -> None:
    rows = _rows(4000, seed=3)
    flow = tf.Dataflow("ml_eval")
    out = CollectSink()
    evaluate(
        flow.source(TestingSource(rows)),
        tree.HoeffdingTreeClassifier(),
        metrics.Accuracy(),
        target="label",
        window=1000,
    ).sink(out)
    tf.run(flow, batch_size=200)
    frame = out.frame().sort("n")
    assert frame["n"].to_list() == list(range(200, 4001, 200))
    assert frame["metric"].unique().to_list() == ["Accuracy@1000"]
    assert frame["value"][-1] > 0.85


def test_predict_scores_anomalies_and_checks_the_model() -> None:
    X, y = synth.Anomalies(seed=4).arrays(2000)
    rows = [{f"f{j}": v for j, v in enumerate(r)} for r in X.tolist()]
    hst = anomaly.HalfSpaceTrees(seed=1)
    flow = tf.Dataflow("ml_hst")
    out = CollectSink()
    s = learn(flow.source(TestingSource(rows)), hst, target=None)
    predict(s, hst, output="score").sink(out)
    tf.run(flow, batch_size=500)
    scores = out.frame()["score"].to_numpy()
    assert scores[1000:][y[1000:]].mean() > scores[1000:][~y[1000:]].mean()
    with pytest.raises(tf.ConfigError, match="learn_many"):
        predict(flow.source(TestingSource(rows)), object())
