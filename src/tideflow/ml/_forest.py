"""Adaptive random forest classifier (Gomes et al., 2017).

``n_models`` Hoeffding trees, each trained on Poisson(``lambda_value``)-weighted records and
choosing splits from a random subset of ``max_features`` features per leaf. Each tree has a
warning detector (which starts a background tree) and a drift detector (which replaces the tree
by its background tree, or a fresh one) over its prequential 0/1 errors. Votes are weighted by
each tree's accuracy since it was (re)created.

The trees share the forest's feature and label mappings, so each record is converted once.
``learn_many`` takes each tree's errors from its predictions before the batch (those
``predict_many`` just computed for the same rows are reused), learns in chunks of
``grace_period`` rows, and feeds the errors to the detectors in order (in runs, with the same
detections as value by value). A chunk is one step for all trees at once: every (tree, row)
pair with a positive Poisson weight is routed on array views of the trees, the rows are merged
into the statistics of all reached leaves in one stacked NumPy step, and the leaves due for a
split attempt are evaluated together (see ``_tree_stack``). Splits thus happen at most one
chunk later than per record.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Literal

import numpy as np

from tideflow.ml._base import Classifier, _check_positive, from_snapshot
from tideflow.ml._data import as_labels, plain_label
from tideflow.ml._drift import ADWIN
from tideflow.ml._tree import CLeaf, HoeffdingTreeClassifier, LeafPrediction
from tideflow.ml._tree_base import rng_from_state, rng_state
from tideflow.ml._tree_stack import route_trees, stacked_attempt, stacked_learn, stacked_proba

__all__ = ["ARFClassifier"]

MaxFeatures = int | float | Literal["sqrt", "log2"] | None


class _Member:
    __slots__ = ("bg", "correct", "drift", "n", "tree", "warn")

    def __init__(self, tree: HoeffdingTreeClassifier, drift: Any, warn: Any) -> None:
        self.tree = tree
        self.bg: HoeffdingTreeClassifier | None = None
        self.drift = drift
        self.warn = warn
        self.correct = 0.0
        self.n = 0.0


class ARFClassifier(Classifier):
    """Adaptive random forest of Hoeffding trees with drift and warning detectors.

    Parameters
    ----------
    n_models
        Number of trees.
    max_features
        Features per split candidate set: an int, a share of all features, ``"sqrt"``,
        ``"log2"`` or ``None`` (all).
    lambda_value
        Mean of the Poisson record weights (online bagging).
    grace_period, max_depth, delta, tau, leaf_prediction, nb_threshold, nominal_attributes
        Settings of the trees (River's ARF defaults).
    drift_detector, warning_detector
        Detector prototypes (``ADWIN(0.001)`` and ``ADWIN(0.01)`` by default); ``None`` to turn
        drift handling off is not supported, pass a detector with a tiny ``delta`` instead.
    disable_weighted_vote
        Plain average of the trees' probabilities.
    seed
        Seed of the Poisson weights, feature subsets and tree seeds.

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> from tideflow.ml.metrics import Accuracy
    >>> model, acc = ARFClassifier(n_models=5, seed=1), Accuracy()
    >>> for x, y in synth.SEA(seed=3).take(2000):
    ...     acc.update(y, model.predict_one(x))
    ...     model.learn_one(x, y)
    >>> acc.get() > 0.85
    True
    """

    #: Rows per tree update in ``learn_many`` (``None``: ``grace_period`` rows, which keeps
    #: the accuracy of the per-record path; larger chunks are faster but split later).
    batch_chunk: int | None = None

    def __init__(
        self,
        n_models: int = 10,
        max_features: MaxFeatures = "sqrt",
        lambda_value: float = 6.0,
        grace_period: int = 50,
        max_depth: int | None = None,
        delta: float = 0.01,
        tau: float = 0.05,
        leaf_prediction: LeafPrediction = "nba",
        nb_threshold: int = 0,
        nominal_attributes: list[Hashable] | None = None,
        drift_detector: Any = None,
        warning_detector: Any = None,
        disable_weighted_vote: bool = False,
        seed: int | None = None,
    ) -> None:
        _check_positive("ARFClassifier", "n_models", n_models)
        _check_positive("ARFClassifier", "lambda_value", lambda_value)
        self.n_models = n_models
        self.max_features = max_features
        self.lambda_value = lambda_value
        self.grace_period = grace_period
        self.max_depth = max_depth
        self.delta = delta
        self.tau = tau
        self.leaf_prediction = leaf_prediction
        self.nb_threshold = nb_threshold
        self.nominal_attributes = nominal_attributes
        self.drift_detector = ADWIN(delta=0.001) if drift_detector is None else drift_detector
        self.warning_detector = ADWIN(delta=0.01) if warning_detector is None else warning_detector
        self.disable_weighted_vote = disable_weighted_vote
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._proto = self._new_tree()  # holds the shared feature and label mappings
        self._ls = self._proto._ls
        self._members: list[_Member] = []
        self._pcache: Any = None
        self._bcache: Any = None

    @property
    def classes_(self) -> list[Any]:
        return list(self._ls.labels)

    @property
    def models(self) -> list[HoeffdingTreeClassifier]:
        return [m.tree for m in self._members]

    def _n_features(self) -> int | None:
        d = len(self._proto._fs)
        mf = self.max_features
        if mf is None or d == 0:
            return None
        if mf == "sqrt":
            k = round(math.sqrt(d))
        elif mf == "log2":
            k = round(math.log2(d))
        elif isinstance(mf, float):
            k = int(mf * d)
        else:
            k = int(mf)
        return max(1, min(k, d))

    def _new_tree(self) -> HoeffdingTreeClassifier:
        tree = HoeffdingTreeClassifier(
            grace_period=self.grace_period,
            max_depth=self.max_depth,
            delta=self.delta,
            tau=self.tau,
            leaf_prediction=self.leaf_prediction,
            nb_threshold=self.nb_threshold,
            nominal_attributes=self.nominal_attributes,
            max_features=self._n_features() if hasattr(self, "_proto") else None,
            seed=int(self._rng.integers(2**31)),
        )
        if hasattr(self, "_proto"):
            self._share(tree)
        return tree

    def _share(self, tree: HoeffdingTreeClassifier) -> None:
        p = self._proto
        tree._fs, tree._nominal, tree._vocab, tree._ls = p._fs, p._nominal, p._vocab, p._ls
        tree._chunk = self.batch_chunk or self.grace_period

    def _init_members(self) -> None:
        if not self._members:
            self._members = [
                _Member(
                    self._new_tree(), self.drift_detector.clone(), self.warning_detector.clone()
                )
                for _ in range(self.n_models)
            ]

    # -- prediction -----------------------------------------------------------------------------
    def _vote(self, probas: list[np.ndarray], weights: list[float]) -> np.ndarray:
        tot = np.zeros_like(probas[0])
        for P, w in zip(probas, weights, strict=True):
            tot += w * P
        s = tot.sum(axis=-1, keepdims=True)
        k = tot.shape[-1]
        return np.where(s > 0, tot / np.where(s > 0, s, 1.0), 1.0 / max(k, 1))

    def _weights(self) -> list[float]:
        if self.disable_weighted_vote:
            return [1.0] * len(self._members)
        return [m.correct / m.n if m.n > 0 else 0.0 for m in self._members]

    def predict_proba_one(self, x: dict[Hashable, Any]) -> dict[Any, float]:
        """Accuracy-weighted vote of the trees' probabilities."""
        if not self._members or not self._ls.labels:
            return {}
        row = self._proto._row(x, grow=False)
        probas = [m.tree._proba_row(row) for m in self._members]
        self._pcache = (row, probas)
        P = self._vote(probas, self._weights())
        return dict(zip(self._ls.labels, P.tolist(), strict=True))

    def predict_proba_many(self, X: Any) -> np.ndarray:
        """Probabilities, shape ``(n, len(classes_))``, columns in ``classes_`` order."""
        M = self._proto._matrix(X, grow=False)
        if not self._members or not self._ls.labels:
            return np.zeros((M.shape[0], len(self._ls)))
        probas = self._tree_probas(M)
        self._bcache = (M, probas)  # learn_many on the same rows scores with these
        return self._vote(probas, self._weights())

    def predict_many(self, X: Any) -> np.ndarray:
        """The most likely class per row."""
        P = self.predict_proba_many(X)
        if P.shape[1] == 0:
            return np.full(P.shape[0], None, dtype=object)
        return self._ls.decode(P.argmax(axis=1))

    # -- learning -------------------------------------------------------------------------------
    def learn_one(self, x: dict[Hashable, Any], y: Any) -> None:
        """Update every tree with one record."""
        self._bcache = None
        c = self._ls.add(plain_label(y))
        row = self._proto._row(x, grow=True)
        self._init_members()
        lam = self.lambda_value
        ks = self._rng.poisson(lam, len(self._members)).tolist()
        cache, self._pcache = self._pcache, None
        k_now = len(self._ls)
        if (
            cache is None
            or len(cache[0]) != len(row)
            or len(cache[1]) != len(self._members)
            or not np.array_equal(cache[0], row, equal_nan=True)
            or any(len(p) != k_now for p in cache[1])
        ):
            cache = None
        else:
            row = cache[0]  # the very array the trees remembered their votes for
        for i, (m, k) in enumerate(zip(self._members, ks, strict=True)):
            P = cache[1][i] if cache is not None else m.tree._proba_row(row)
            ok = len(P) > 0 and int(P.argmax()) == c
            m.n += 1.0
            m.correct += ok
            if k > 0:
                m.tree._learn_row(row, c, float(k))
                if m.bg is not None:
                    m.bg._learn_row(row, c, float(k))
            self._detect(m, 0.0 if ok else 1.0)

    def _detect(self, m: _Member, err: float) -> None:
        m.warn.update(err)
        if m.warn.drift_detected:
            m.bg = self._new_tree()
            m.warn = self.warning_detector.clone()
        m.drift.update(err)
        if m.drift.drift_detected:
            m.tree = m.bg if m.bg is not None else self._new_tree()
            m.bg = None
            m.drift = self.drift_detector.clone()
            m.warn = self.warning_detector.clone()
            m.correct = m.n = 0.0

    def learn_many(self, X: Any, y: Any) -> None:
        """Update every tree with a mini-batch (see the module notes)."""
        self._pcache = None
        yi = self._ls.encode(as_labels(y))
        M = self._proto._matrix(X, grow=True)
        self._init_members()
        n = M.shape[0]
        K = self._rng.poisson(self.lambda_value, (len(self._members), n)).astype(float)
        probas, self._bcache = self._batch_probas(M), None
        trees = [(m.tree, k) for m, k in zip(self._members, K, strict=True)]
        trees += [(m.bg, k) for m, k in zip(self._members, K, strict=True) if m.bg is not None]
        step = max(int(self.batch_chunk or self.grace_period), 1)
        for a in range(0, n, step):
            Mc, yc = M[a : a + step], yi[a : a + step]
            Kc = np.stack([k[a : a + step] for _, k in trees])
            for tree, _ in trees:
                tree._memo = None
            routed = route_trees([tree for tree, _ in trees], Mc, Kc)
            if routed is None:  # nominal splits: tree by tree
                routed = [
                    (leaf, idx, t)
                    for t, (tree, _) in enumerate(trees)
                    for leaf, idx in tree._route(Mc, grow=True, rows=np.flatnonzero(Kc[t] > 0))
                ]
            groups: list[tuple[CLeaf, np.ndarray, np.ndarray]] = []
            owners: list[HoeffdingTreeClassifier] = []
            for leaf, idx, t in routed:
                if isinstance(leaf, CLeaf):
                    groups.append((leaf, idx, Kc[t, idx]))
                    owners.append(trees[t][0])
            if not stacked_learn(self._proto, groups, Mc, yc):
                for (leaf, idx, w), tree in zip(groups, owners, strict=True):
                    tree._learn_leaf(leaf, Mc[idx], yc[idx], w)
            stacked_attempt(
                [
                    (tree, leaf)
                    for (leaf, _, _), tree in zip(groups, owners, strict=True)
                    if leaf.active and leaf.weight - leaf.last >= tree.grace_period
                ]
            )
        for m, P in zip(self._members, probas, strict=True):
            ok = (P.argmax(axis=1) == yi) if P.shape[1] else np.zeros(n, dtype=bool)
            self._detect_many(m, (~ok).astype(float).tolist())

    def _detect_many(self, m: _Member, errs: list[float]) -> None:
        """:meth:`_detect` for each error in order, each detector fed in runs."""
        pos, n = 0, len(errs)
        while pos < n:
            hits, _ = m.drift._feed(errs[pos:], stop=True)
            seg = errs[pos:] if not hits else errs[pos : pos + hits[0] + 1]
            at = 0
            while at < len(seg):  # the warning detector sees the same values first
                wh, _ = m.warn._feed(seg[at:], stop=True)
                if not wh:
                    break
                m.bg = self._new_tree()
                m.warn = self.warning_detector.clone()
                at += wh[0] + 1
            m.n += len(seg)
            m.correct += len(seg) - sum(seg)
            if hits:
                m.tree = m.bg if m.bg is not None else self._new_tree()
                m.bg = None
                m.drift = self.drift_detector.clone()
                m.warn = self.warning_detector.clone()
                m.correct = m.n = 0.0
            pos += len(seg)

    def _batch_probas(self, M: np.ndarray) -> list[np.ndarray]:
        """Every tree's probabilities for ``M`` (those ``predict_proba_many`` just computed
        for the same rows, if the forest has not learned since)."""
        c = self._bcache
        if (
            c is not None
            and c[0].shape == M.shape
            and len(c[1]) == len(self._members)
            and all(P.shape[1] == len(self._ls) for P in c[1])
            and np.array_equal(c[0], M, equal_nan=True)
        ):
            return c[1]  # type: ignore[no-any-return]
        return self._tree_probas(M)

    def _tree_probas(self, M: np.ndarray) -> list[np.ndarray]:
        """Each tree's probabilities for ``M``, all trees' leaves scored in one step."""
        k = len(self._ls)
        routed = route_trees([m.tree for m in self._members], M)
        if routed is None:  # nominal splits: tree by tree
            routed = [
                (node, idx, t)
                for t, m in enumerate(self._members)
                for node, idx in m.tree._route(M)
            ]
        groups = [(node, idx) for node, idx, _ in routed]
        owner = [t for _, _, t in routed]
        out = [np.zeros((M.shape[0], k)) for _ in self._members]
        if k:
            for (_, idx), t, P in zip(
                groups, owner, stacked_proba(self._proto, groups, M), strict=True
            ):
                out[t][idx] = P
        return out

    # -- state ----------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "proto": self._proto.snapshot(),
            "rng": rng_state(self._rng),
            "members": [
                {
                    "tree": m.tree.snapshot(),
                    "bg": None if m.bg is None else m.bg.snapshot(),
                    "drift": m.drift.snapshot(),
                    "warn": m.warn.snapshot(),
                    "correct": m.correct,
                    "n": m.n,
                }
                for m in self._members
            ],
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._pcache = self._bcache = None
        self._proto = from_snapshot(state["proto"])
        self._ls = self._proto._ls
        self._rng = rng_from_state(state["rng"])
        self._members = []
        for s in state["members"]:
            tree = from_snapshot(s["tree"])
            self._share(tree)
            m = _Member(tree, from_snapshot(s["drift"]), from_snapshot(s["warn"]))
            if s["bg"] is not None:
                m.bg = from_snapshot(s["bg"])
                self._share(m.bg)
            m.correct, m.n = float(s["correct"]), float(s["n"])
            self._members.append(m)
