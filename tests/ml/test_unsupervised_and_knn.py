"""KNN, anomaly detectors, clustering and drift detectors: they work, batch == per record."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ml._streams import dicts, stream

from tideflow import ConfigError
from tideflow.ml import anomaly, cluster, drift, metrics, neighbors
from tideflow.ml.datasets import synth


def test_knn_classifier_beats_majority_and_batch_equals_per_record() -> None:
    X, y = stream("binary", 3000, seed=11)
    one, many = neighbors.KNNClassifier(window_size=500), neighbors.KNNClassifier(window_size=500)
    acc = metrics.Accuracy()
    for x, t in zip(dicts(X), y.tolist(), strict=True):
        p = one.predict_one(x)
        if p is not None:
            acc.update(t, p)
        one.learn_one(x, t)
    assert acc.get() > max(y.mean(), 1 - y.mean()) + 0.15
    for i in range(0, 3000, 128):
        many.learn_many(X[i : i + 128], y[i : i + 128])
    np.testing.assert_array_equal(one._X, many._X)
    np.testing.assert_allclose(one.predict_proba_many(X[:50]), many.predict_proba_many(X[:50]))


def test_knn_regressor_beats_the_mean() -> None:
    X, y = synth.Friedman(seed=3).arrays(3000)
    model = neighbors.KNNRegressor(aggregation_method="weighted_mean")
    model.learn_many(X[:2500], y[:2500])
    err = np.abs(model.predict_many(X[2500:]) - y[2500:]).mean()
    assert err < 0.8 * np.abs(y - y.mean()).mean()
    with pytest.raises(ConfigError, match="aggregation_method"):
        neighbors.KNNRegressor(aggregation_method="mode")  # type: ignore[arg-type]


def test_half_space_trees_rank_anomalies_and_batch_equals_per_record() -> None:
    X, y = synth.Anomalies(seed=4, anomaly_rate=0.02).arrays(3000)
    one, many = anomaly.HalfSpaceTrees(seed=7), anomaly.HalfSpaceTrees(seed=7)
    auc = metrics.ROCAUC()
    scores = []
    for r, t in zip(X.tolist(), y.tolist(), strict=True):
        x = dict(enumerate(r))
        s = one.score_one(x)
        scores.append(s)
        auc.update(t, s)
        one.learn_one(x)
    assert auc.get() > 0.9
    batch_scores = []
    for i in range(0, 3000, 300):
        batch_scores.append(many.score_many(X[i : i + 300]))
        many.learn_many(X[i : i + 300])
    assert one._l == many._l and one._r == many._r
    np.testing.assert_allclose(
        many.score_many(X[:100]), [one.score_one(dict(enumerate(r))) for r in X[:100].tolist()]
    )


def test_robust_zscore_is_per_key_and_resists_outliers() -> None:
    rng = np.random.default_rng(0)
    det = anomaly.RobustZScore(key="user", alpha=0.05)
    for _ in range(300):
        det.learn_one({"user": "a", "v": rng.normal(0, 1)})
        det.learn_one({"user": "b", "v": rng.normal(100, 10)})
    for _ in range(5):  # a few outliers barely move the statistics
        det.learn_one({"user": "a", "v": 1e6})
    assert det.score_one({"user": "a", "v": 10.0}) > 4
    assert det.score_one({"user": "b", "v": 108.0}) < 2
    assert det.score_one({"user": "new", "v": 1.0}) == 0.0
    many = anomaly.RobustZScore(key="user", alpha=0.05)
    rows = [{"user": "a" if i % 2 else "b", "v": float(i % 7)} for i in range(100)]
    one = anomaly.RobustZScore(key="user", alpha=0.05)
    for r in rows:
        one.learn_one(r)
    many.learn_many(
        {
            "user": np.asarray([r["user"] for r in rows], dtype=object),
            "v": np.asarray([r["v"] for r in rows]),
        }
    )
    for k in ("a", "b"):
        np.testing.assert_allclose(one._stats[k][1], many._stats[k][1])
        np.testing.assert_allclose(one._stats[k][2], many._stats[k][2])


def test_clusterers_separate_blobs() -> None:
    rng = np.random.default_rng(5)
    centers = np.asarray([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
    lab = rng.integers(0, 3, 3000)
    X = centers[lab] + rng.normal(0, 0.5, (3000, 2))
    for model in (
        cluster.KMeans(n_clusters=5, halflife=0.05, sigma=5.0, seed=2),
        cluster.CluStream(n_macro_clusters=3, seed=2),
    ):
        for x in dicts(np.column_stack([X, X])[:, :4]):
            model.learn_one(x)
        pred = model.predict_many(np.column_stack([X, X])[:, :4])
        # purity: each found cluster is (almost) one true blob
        purity = sum(np.bincount(lab[pred == c]).max() for c in np.unique(pred)) / len(lab)
        assert purity > 0.95, (type(model).__name__, purity)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 1000),
)
def test_kmeans_assignments_and_moves_for_a_fixed_state(rows: list[list[float]], seed: int) -> None:
    X = np.asarray(rows)
    base = cluster.KMeans(n_clusters=3, halflife=0.3, seed=seed)
    base.learn_one({0: 0.0, 1: 0.0, 2: 0.0})
    assign = base.predict_many(X)
    assert assign.tolist() == [base.predict_one(dict(enumerate(r))) for r in rows]
    # with assignments fixed, the batch update equals the per-record moves in order
    one, many = base.clone().restore(base.snapshot()), base.clone().restore(base.snapshot())
    for r, a in zip(rows, assign.tolist(), strict=True):
        one._C[a] += one.halflife * (np.asarray(r) - one._C[a])
    many.learn_many(X)
    np.testing.assert_allclose(one._C, many._C, rtol=1e-9, atol=1e-9)


def test_drift_detectors_find_a_mean_shift() -> None:
    rng = np.random.default_rng(3)
    data = np.concatenate([rng.normal(0, 1, 2000), rng.normal(3, 1, 2000)])
    for det in (drift.ADWIN(), drift.PageHinkley()):
        hits = det.update_many(data)
        assert len(hits) >= 1 and 2000 <= hits[0] < 2300, (type(det).__name__, hits[:3])
    quiet = drift.ADWIN()
    assert len(quiet.update_many(rng.normal(0, 1, 4000))) == 0
    a, b = drift.ADWIN(), drift.ADWIN()
    a.update_many(data[:1500])
    b.restore(a.snapshot())
    np.testing.assert_array_equal(a.update_many(data[1500:]), b.update_many(data[1500:]))
    assert a.width == b.width and a.estimation == pytest.approx(b.estimation)
