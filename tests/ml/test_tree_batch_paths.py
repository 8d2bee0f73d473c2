"""Mini-batch paths of the adaptive trees: their vectorized pieces equal the per-leaf and
per-value steps they replace.

- ``ADWIN.update_many`` / ``_feed`` take the same steps as ``update`` value by value: same
  detections, same state (hypothesis, 0/1 and real values, small clocks so cuts happen).
- ``stacked_learn`` / ``stacked_proba`` (all the leaves of a chunk in one step, several trees
  at once) give the leaf statistics and probabilities of ``_learn_leaf`` / ``_leaf_proba``
  leaf by leaf (hypothesis, random trees, missing values, weights).
- The adaptive tree's and the forest's mini-batch paths still detect drift, switch branches
  and restore mid-stream to identical predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow.ml import drift, tree
from tideflow.ml._tree import CLeaf
from tideflow.ml._tree_stack import route_trees, stacked_attempt, stacked_learn, stacked_proba
from tideflow.ml.datasets import synth
from tideflow.ml.forest import ARFClassifier


def _adwin_state(a: drift.ADWIN) -> dict[str, Any]:
    return dict(a.snapshot()["state"])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    binary=st.booleans(),
    clock=st.sampled_from([1, 4, 32]),
    cuts=st.lists(st.integers(1, 300), max_size=6),
)
def test_adwin_feed_equals_update_per_value(
    seed: int, binary: bool, clock: int, cuts: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    n = 1500
    p = np.where(np.arange(n) < int(rng.integers(200, 1300)), 0.1, 0.6)
    vals = (rng.random(n) < p).astype(float) if binary else rng.normal(p * 4, 1.0)
    one = drift.ADWIN(delta=0.05, clock=clock)
    hits_one, rises_one = [], []
    for i, v in enumerate(vals.tolist()):
        before = one.estimation
        one.update(v)
        if one.drift_detected:
            hits_one.append(i)
            rises_one.append(one.estimation > before)
    many = drift.ADWIN(delta=0.05, clock=clock)
    hits, rises, at = [], [], 0
    for size in [*cuts, n]:
        part = vals[at : at + size].tolist()
        h, r = many._feed(part)
        hits += [at + j for j in h]
        rises += r
        at += len(part)
        if at >= n:
            break
    assert hits == hits_one and rises == rises_one
    assert _adwin_state(many) == _adwin_state(one)
    # stop=True consumes up to the first detection only
    again = drift.ADWIN(delta=0.05, clock=clock)
    h, _ = again._feed(vals.tolist(), stop=True)
    assert h == hits_one[:1]
    assert again.drift_detected == bool(hits_one)
    assert np.array_equal(drift.ADWIN(delta=0.05, clock=clock).update_many(vals), hits_one)


def _random_tree(seed: int, d: int, k: int, leaf_prediction: str) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, d)) * rng.choice([0.1, 1.0, 10.0], size=d)
    y = (X @ rng.normal(size=d) > 0).astype(int) + (X[:, 0] > 1).astype(int) * (k - 2)
    model = tree.HoeffdingTreeClassifier(
        grace_period=30,
        delta=0.2,
        leaf_prediction=leaf_prediction,  # type: ignore[arg-type]
    )
    model.learn_many(X[:400], y[:400])
    M = X[400:].copy()
    M[rng.random(M.shape) < 0.05] = np.nan
    return model, np.column_stack([M, y[400:]])


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d=st.integers(1, 5),
    k=st.integers(2, 4),
    leaf_prediction=st.sampled_from(["nba", "nb", "mc"]),
)
def test_stacked_leaf_steps_equal_per_leaf_steps(
    seed: int, d: int, k: int, leaf_prediction: str
) -> None:
    a, data = _random_tree(seed, d, k, leaf_prediction)
    b = tree.HoeffdingTreeClassifier().restore(a.snapshot())
    M, labels = data[:, :d], data[:, d].astype(np.int64)
    yi = a._ls.encode(labels)
    assert np.array_equal(b._ls.encode(labels), yi)  # (a label new to both: same index)
    w = np.random.default_rng(seed).choice([0.0, 1.0, 2.0, 0.5], size=len(yi))
    ga, gb = a._route(M, grow=True), b._route(M, grow=True)
    # probabilities, all leaves at once
    for (node, idx), P in zip(ga, stacked_proba(a, ga, M), strict=True):
        np.testing.assert_allclose(P, a._leaf_proba(node, M[idx]), rtol=1e-12, atol=1e-15)
    # learning, all leaves at once against leaf by leaf
    leaves_a = [(n, i, w[i]) for n, i in ga if isinstance(n, CLeaf)]
    if not stacked_learn(a, leaves_a, M, yi):  # one leaf: callers learn leaf by leaf
        assert len(leaves_a) == 1
        a._learn_leaf(leaves_a[0][0], M[leaves_a[0][1]], yi[leaves_a[0][1]], leaves_a[0][2])
    for n, i in gb:
        b._learn_leaf(n, M[i], yi[i], w[i])
    for (la, _), (lb, _) in zip(ga, gb, strict=True):
        for name in ("dist", "n", "mean", "m2", "lo", "hi"):
            np.testing.assert_allclose(
                getattr(la, name), getattr(lb, name), rtol=1e-9, atol=1e-9, err_msg=name
            )
        assert la.total == pytest.approx(lb.total) and la.mc_ok == pytest.approx(lb.mc_ok)
        assert la.nb_ok == pytest.approx(lb.nb_ok)


def _drift_stream(n: int) -> tuple[np.ndarray, np.ndarray]:
    return synth.ConceptDriftStream(
        synth.Agrawal(classification_function=0, seed=1),
        synth.Agrawal(classification_function=5, seed=2),
        position=n // 2,
        width=10,
        seed=3,
    ).arrays(n)


def _batch_accuracy(model: Any, X: np.ndarray, y: np.ndarray, bs: int) -> float:
    hits = 0
    for i in range(0, len(y), bs):
        hits += int((model.predict_many(X[i : i + bs]) == y[i : i + bs]).sum())
        model.learn_many(X[i : i + bs], y[i : i + bs])
    return hits / len(y)


def test_adaptive_tree_batch_path_adapts_to_drift() -> None:
    X, y = _drift_stream(12_000)
    hat, ht = tree.HoeffdingAdaptiveTreeClassifier(seed=1), tree.HoeffdingTreeClassifier()
    _batch_accuracy(hat, X[:6000], y[:6000], 500)
    _batch_accuracy(ht, X[:6000], y[:6000], 500)
    acc_hat = _batch_accuracy(hat, X[6000:], y[6000:], 500)
    acc_ht = _batch_accuracy(ht, X[6000:], y[6000:], 500)
    assert hat.n_switches >= 1
    assert acc_hat > acc_ht + 0.02, (acc_hat, acc_ht)


@pytest.mark.parametrize(
    "factory",
    [lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=2), lambda: ARFClassifier(seed=2)],
    ids=["hat", "arf"],
)
def test_batch_path_restored_mid_stream_predicts_identically(factory: Any) -> None:
    X, y = _drift_stream(4000)
    a = factory()
    _batch_accuracy(a, X[:2000], y[:2000], 250)
    b = factory().restore(a.snapshot())
    for i in range(2000, 4000, 250):
        np.testing.assert_array_equal(
            a.predict_proba_many(X[i : i + 250]), b.predict_proba_many(X[i : i + 250])
        )
        a.learn_many(X[i : i + 250], y[i : i + 250])
        b.learn_many(X[i : i + 250], y[i : i + 250])


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    d=st.integers(1, 5),
    k=st.integers(2, 4),
    max_features=st.sampled_from([None, 1, 2]),
)
def test_stacked_split_attempts_equal_per_leaf_attempts(
    seed: int, d: int, k: int, max_features: int | None
) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(900, d))
    y = (X @ rng.normal(size=d) > 0).astype(int) + (X[:, 0] > 1).astype(int) * (k - 2)
    a = tree.HoeffdingTreeClassifier(
        grace_period=1000, delta=0.3, tau=0.2, max_features=max_features, seed=seed
    )
    a.learn_many(X[:600], y[:600])  # no split yet (grace period); then split leaves by hand
    a.grace_period = 50
    a.learn_many(X[600:], y[600:])
    b = tree.HoeffdingTreeClassifier().restore(a.snapshot())
    leaves_a, leaves_b = list(a._leaves()), list(b._leaves())
    stacked_attempt([(a, leaf) for leaf in leaves_a])
    for leaf in leaves_b:
        b._attempt_split(leaf)
    assert a.snapshot()["state"]["root"] is not None
    sa, sb = a.snapshot(), b.snapshot()
    np.testing.assert_equal(sa["state"]["root"], sb["state"]["root"])
    assert a.n_nodes == b.n_nodes


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 5), n_trees=st.integers(1, 4))
def test_routing_all_trees_at_once_equals_routing_each(seed: int, d: int, n_trees: int) -> None:
    trees = [_random_tree(seed + t, d, 3, "nba")[0] for t in range(n_trees)]
    for t in trees:
        t._ls = trees[0]._ls  # routing only reads the features
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(300, d)) * 3
    M[rng.random(M.shape) < 0.1] = np.nan
    K = rng.poisson(1.0, (n_trees, 300)).astype(float)
    for weights in (None, K):
        got = route_trees(trees, M, weights)
        assert got is not None
        want = {
            (t, id(node)): idx if weights is None else idx[weights[t, idx] > 0]
            for t, tr in enumerate(trees)
            for node, idx in tr._route(M)
        }
        want = {key: idx for key, idx in want.items() if len(idx)}
        assert {(t, id(node)): list(idx) for node, idx, t in got} == {
            key: list(idx) for key, idx in want.items()
        }


@pytest.mark.parametrize(
    "factory",
    [
        tree.HoeffdingTreeClassifier,
        lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=1),
        lambda: ARFClassifier(n_models=3, seed=1),
    ],
    ids=["ht", "hat", "arf"],
)
def test_empty_batches_are_no_ops(factory: Any) -> None:
    X, y = _drift_stream(600)
    model = factory()
    model.learn_many(X[:0], y[:0])
    assert model.predict_many(X[:0]).shape == (0,)
    model.learn_many(X, y)
    before = model.predict_proba_many(X)
    model.learn_many(X[:0], y[:0])
    assert model.predict_proba_many(X[:0]).shape == (0, 2)
    np.testing.assert_array_equal(model.predict_proba_many(X), before)
