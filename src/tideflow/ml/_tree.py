"""Hoeffding tree classifier (VFDT; Domingos and Hulten, 2000).

A leaf accumulates class weights and, per numeric feature and class, a weighted Gaussian
estimator (count, mean, M2, min, max); per nominal feature, a value x class count table. Every
``grace_period`` weight it evaluates candidate splits by information gain (numeric thresholds:
``n_splits`` points between the observed min and max, class weights on each side from the
Gaussian CDFs) and splits when the best candidate beats the second best by more than the
Hoeffding bound, or the bound falls below the tie threshold ``tau`` ("no split" is not a
candidate, as in River). A leaf whose majority class holds more than ``max_share_to_split`` of
its weight is not split; its estimators restart instead, so that they follow recent records
(after a concept change, the gains of all candidates may be negative against the leaf's whole
history: the best still wins over the second best). Leaves predict by
majority class, naive Bayes, or whichever of the two has been more accurate at that leaf
(``"nba"``, the default, as in River).

``learn_many`` works through the batch in chunks of ``grace_period`` rows: it routes a chunk
through the tree, updates every reached leaf's statistics with the chunk's rows (vectorized,
an exact merge of the same sums ``learn_one`` accumulates) and then attempts splits at leaves
that saw ``grace_period`` weight; the per-record path attempts them at each grace period
boundary instead, so the two differ only in when, within a chunk, a split happens.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Literal

import numpy as np

from tideflow._errors import ConfigError
from tideflow.ml._base import Classifier, _check_choice, _check_positive
from tideflow.ml._data import LabelSpace, as_labels, plain_label
from tideflow.ml._tree_base import Split, TreeBase, hoeffding_bound
from tideflow.ml._tree_stack import stacked_attempt, stacked_learn, stacked_proba

__all__ = ["HoeffdingTreeClassifier"]

LeafPrediction = Literal["mc", "nb", "nba"]
_LOG2PI = math.log(2 * math.pi)
_TWO_PI = 2 * math.pi
# Up to this many (all numeric) features, the per-record naive Bayes scores and Gaussian
# estimator update run on Python floats, above it on NumPy arrays. Measured (predict_one +
# learn_one on random streams, 2-core machine): 2.4x faster at 3 features, 1.2-1.4x at 8-24,
# 0.9x at 32.
_SCALAR_MAX_FEATURES = 24


class CLeaf:
    """A classification leaf and its sufficient statistics."""

    __slots__ = (
        "active",
        "depth",
        "dist",
        "ext",
        "feats",
        "hi",
        "last",
        "lo",
        "m2",
        "mc_ok",
        "mean",
        "n",
        "nb_ok",
        "nom",
        "total",
    )

    def __init__(self, dist: np.ndarray, depth: int, d: int, k: int) -> None:
        self.dist = dist
        self.depth = depth
        self.n = np.zeros((d, k))
        self.mean = np.zeros((d, k))
        self.m2 = np.zeros((d, k))
        self.lo = np.full((d, k), np.inf)
        self.hi = np.full((d, k), -np.inf)
        self.nom: dict[int, np.ndarray] = {}
        self.total = float(dist.sum())
        self.last = self.total
        self.mc_ok = 0.0
        self.nb_ok = 0.0
        self.active = True
        self.feats: np.ndarray | None = None
        self.ext: Any = None

    def fit(self, d: int, k: int) -> None:
        """Grow the statistics to ``d`` features and ``k`` classes."""
        if len(self.dist) < k:
            self.dist = np.concatenate([self.dist, np.zeros(k - len(self.dist))])
        d0, k0 = self.n.shape
        if d0 >= d and k0 >= k:
            return
        d1, k1 = max(d0, d), max(k0, k)

        def pad(a: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((d1, k1), fill)
            out[:d0, :k0] = a
            return out

        self.n, self.mean, self.m2 = pad(self.n, 0.0), pad(self.mean, 0.0), pad(self.m2, 0.0)
        self.lo, self.hi = pad(self.lo, np.inf), pad(self.hi, -np.inf)

    @property
    def weight(self) -> float:
        return self.total


class HoeffdingTreeClassifier(TreeBase, Classifier):
    """Hoeffding tree classifier with Gaussian split estimators and nominal multiway splits.

    Parameters
    ----------
    grace_period
        Weight a leaf must see between split attempts.
    max_depth
        Maximum depth (``None``: unbounded).
    delta
        Significance of the Hoeffding bound (1 - confidence).
    tau
        Tie threshold: split when the bound falls below it even if candidates are close.
    leaf_prediction
        ``"mc"`` majority class, ``"nb"`` naive Bayes, ``"nba"`` adaptive naive Bayes.
    nb_threshold
        Weight a leaf must see before naive Bayes is used.
    nominal_attributes
        Feature names to treat as nominal (strings are nominal anyway).
    n_splits
        Candidate thresholds per numeric feature.
    min_branch_fraction
        A split needs two branches with at least this share of the weight.
    max_features
        Features considered per leaf (a random subset chosen at leaf creation; ``None``: all).
        Used by the adaptive random forest.
    seed
        Seed of the feature subsets.
    max_share_to_split
        A leaf whose majority class holds more than this share of its weight is not split;
        instead its split estimators restart (as in River, where such a leaf is deactivated
        and reactivated empty), so that they describe recent records: after a concept change
        such leaves find new splits quickly.

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> from tideflow.ml.metrics import Accuracy
    >>> model, acc = HoeffdingTreeClassifier(), Accuracy()
    >>> for x, y in synth.Agrawal(classification_function=0, seed=1).take(3000):
    ...     acc.update(y, model.predict_one(x))
    ...     model.learn_one(x, y)
    >>> acc.get() > 0.9
    True
    """

    #: Version 2 keeps each leaf's running weight total; version 1 snapshots still restore,
    #: with the total recomputed from the class weights (which can move a later split).
    _STATE_VERSION = 2
    _OLDER_STATE_VERSIONS = (1,)

    def __init__(
        self,
        grace_period: int = 200,
        max_depth: int | None = None,
        delta: float = 1e-7,
        tau: float = 0.05,
        leaf_prediction: LeafPrediction = "nba",
        nb_threshold: int = 0,
        nominal_attributes: list[Hashable] | None = None,
        n_splits: int = 10,
        min_branch_fraction: float = 0.01,
        max_features: int | None = None,
        seed: int | None = None,
        max_share_to_split: float = 0.99,
    ) -> None:
        name = type(self).__name__
        _check_positive(name, "grace_period", grace_period)
        _check_positive(name, "delta", delta)
        _check_positive(name, "tau", tau, strict=False)
        _check_positive(name, "n_splits", n_splits)
        _check_choice(name, "leaf_prediction", leaf_prediction, ("mc", "nb", "nba"))
        self.grace_period = grace_period
        self.max_depth = max_depth
        self.delta = delta
        self.tau = tau
        self.leaf_prediction = leaf_prediction
        self.nb_threshold = nb_threshold
        self.nominal_attributes = nominal_attributes
        self.n_splits = n_splits
        self.min_branch_fraction = min_branch_fraction
        self.max_features = max_features
        self.seed = seed
        if not 0.0 < max_share_to_split <= 1.0:
            msg = f"{name}: max_share_to_split must be in (0, 1], got {max_share_to_split!r}"
            raise ConfigError(msg)
        self.max_share_to_split = max_share_to_split
        self._init_base()
        self._ls = LabelSpace()
        self._root = self._new_leaf(None, 0)
        self._memo: Any = None
        self._numc: np.ndarray | None = None
        self._chunk: int | None = grace_period  # rows per learn_many step (None: whole batch)

    @property
    def classes_(self) -> list[Any]:
        return list(self._ls.labels)

    # -- leaves -------------------------------------------------------------------------------
    def _new_leaf(self, dist: Any, depth: int) -> CLeaf:
        k = len(self._ls)
        dist = np.zeros(k) if dist is None else np.asarray(dist, dtype=float)
        leaf = CLeaf(dist, depth, len(self._fs), k)
        if self.max_depth is not None and depth >= self.max_depth:
            leaf.active = False
        if self.max_features is not None and len(self._fs) > self.max_features:
            leaf.feats = np.sort(self._rng.choice(len(self._fs), self.max_features, replace=False))
        return leaf

    # -- prediction -----------------------------------------------------------------------------
    def _leaf_proba(self, leaf: Any, M: np.ndarray) -> np.ndarray:
        """Class probabilities (m, k) for rows ``M`` at ``leaf`` (a leaf or a split node)."""
        k = len(self._ls)
        dist = np.zeros(k)
        dist[: len(leaf.dist)] = leaf.dist[:k]
        tot = dist.sum()
        mc = dist / tot if tot > 0 else np.full(k, 1.0 / max(k, 1))
        mc_rows = mc[None, :] if M.shape[0] == 1 else np.tile(mc, (M.shape[0], 1))
        if not isinstance(leaf, CLeaf) or self.leaf_prediction == "mc" or tot <= self.nb_threshold:
            return mc_rows
        if self.leaf_prediction == "nba" and leaf.mc_ok > leaf.nb_ok:
            return mc_rows
        return self._nb_proba(leaf, M, dist)

    def _num_mask(self, d: int) -> np.ndarray:
        m = self._numc
        if m is None or len(m) != d:
            m = self._numc = ~np.asarray(self._nominal[:d], dtype=bool)
        return m

    def _nb_log(self, leaf: CLeaf, M: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """Naive Bayes log scores (m, k): Gaussian per numeric feature, Laplace for nominal."""
        d, k = M.shape[1], len(dist)
        leaf.fit(d, k)
        tot = leaf.total
        prior = np.log(dist, out=np.full(k, -np.inf), where=dist > 0) - math.log(tot)
        n = leaf.n[:d, :k]
        has = (n > 0) & self._num_mask(d)[:, None]
        mean = leaf.mean[:d, :k]
        var = np.divide(leaf.m2[:d, :k], n, out=np.zeros((d, k)), where=has)
        var = np.maximum(var, 1e-9 * (1.0 + mean * mean))
        if M.shape[0] == 1:
            t = (-0.5 * np.log(2 * math.pi * var) - (M[0][:, None] - mean) ** 2 / (2 * var)) * has
            tot_ll = t.sum(axis=0)
            if np.isnan(tot_ll).any():
                tot_ll = np.nansum(t, axis=0)
            logp = (prior + tot_ll)[None, :]
        else:
            t = (-0.5 * np.log(2 * math.pi * var))[None] - (M[:, :, None] - mean[None]) ** 2 / (
                2 * var
            )[None]
            logp = prior + np.nansum(t * has[None], axis=1)
        for f, tab in leaf.nom.items():
            if f >= d:
                continue
            t2 = np.zeros((tab.shape[0], k))
            t2[:, : min(k, tab.shape[1])] = tab[:, :k]
            cond = np.log((t2 + 1.0) / (dist + tab.shape[0]))
            codes = M[:, f]
            ok = ~np.isnan(codes) & (codes >= 0) & (codes < cond.shape[0])
            if ok.any():
                logp[ok] += cond[codes[ok].astype(np.int64)]
        return logp  # type: ignore[no-any-return]

    def _nb_log1(self, leaf: CLeaf, xs: list[float], k: int) -> list[float] | None:
        """:meth:`_nb_log` for one row on Python floats (``None`` with nominal features).

        At a handful of features the array version's ~20 NumPy calls cost more than the
        d x k Gaussian terms in pure Python; the terms and their order are the same (a term is
        left out where the array version's is zeroed or NaN: no records of the class, or a
        missing value).
        """
        d = len(xs)
        if d > _SCALAR_MAX_FEATURES or leaf.nom or True in self._nominal:
            return None
        leaf.fit(d, k)
        tot = leaf.total
        lt = math.log(tot)
        dist = leaf.dist[:k].tolist()
        N = leaf.n[:d, :k].T.tolist()
        MU = leaf.mean[:d, :k].T.tolist()
        M2 = leaf.m2[:d, :k].T.tolist()
        log = math.log
        out: list[float] = []
        for c in range(k):
            dc = dist[c]
            prior = (log(dc) if dc > 0 else -math.inf) - lt
            acc = 0.0
            for n, mu, m2, x in zip(N[c], MU[c], M2[c], xs, strict=True):
                if n > 0 and x == x:
                    var = m2 / n
                    floor = 1e-9 * (1.0 + mu * mu)
                    if var < floor:
                        var = floor
                    dx = x - mu  # (squared by multiplying: ** raises OverflowError)
                    term = -0.5 * log(_TWO_PI * var) - dx * dx / (2 * var)
                    if term == term:  # a NaN term is left out, as nansum does
                        acc += term
            out.append(prior + acc)
        return out

    def _nb_proba(self, leaf: CLeaf, M: np.ndarray, dist: np.ndarray) -> np.ndarray:
        logp = self._nb_log(leaf, M, dist)
        mx = logp.max(axis=1, keepdims=True)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        P = np.exp(logp - mx)
        s = P.sum(axis=1, keepdims=True)
        return np.where(s > 0, P / np.where(s > 0, s, 1.0), 1.0 / len(dist))

    def predict_proba_one(self, x: dict[Hashable, Any]) -> dict[Any, float]:
        """Class probabilities for one record (empty before any learning)."""
        if not self._ls.labels:
            return {}
        P = self._proba_row(self._row(x, grow=False))
        return dict(zip(self._ls.labels, P.tolist(), strict=True))

    def predict_one(self, x: dict[Hashable, Any]) -> Any:
        """The most likely class for one record (``None`` before any learning)."""
        if not self._ls.labels:
            return None
        return self._ls.labels[int(self._proba_row(self._row(x, grow=False)).argmax())]

    def predict_proba_many(self, X: Any) -> np.ndarray:
        """Probabilities, shape ``(n, len(classes_))``, columns in ``classes_`` order."""
        return self._proba_matrix(self._matrix(X, grow=False))

    def predict_many(self, X: Any) -> np.ndarray:
        """The most likely class per row."""
        P = self.predict_proba_many(X)
        if P.shape[1] == 0:
            return np.full(P.shape[0], None, dtype=object)
        return self._ls.decode(P.argmax(axis=1))

    # -- learning -------------------------------------------------------------------------------
    def learn_one(self, x: dict[Hashable, Any], y: Any, w: float = 1.0) -> None:
        """Update the tree with one record (weight ``w``)."""
        c = self._ls.add(plain_label(y))
        self._learn_row(self._row(x, grow=True), c, float(w))

    def _learn_row(self, row: np.ndarray, c: int, w: float) -> None:
        leaf, _ = self._leaf_of(row, grow=True)
        self._learn_leaf_one(leaf, row, c, w)
        if isinstance(leaf, CLeaf) and leaf.active and leaf.weight - leaf.last >= self.grace_period:
            self._attempt_split(leaf)

    def _proba_row(self, row: np.ndarray) -> np.ndarray:
        """Probabilities for one row; remembers the naive Bayes vote for the next learn."""
        leaf, _ = self._leaf_of(row)
        return self._proba_leaf_row(leaf, row)

    def _proba_leaf_row(self, leaf: Any, row: np.ndarray) -> np.ndarray:
        k = len(self._ls)
        if (
            isinstance(leaf, CLeaf)
            and self.leaf_prediction != "mc"
            and leaf.total > self.nb_threshold
            and k > 0
        ):
            leaf.fit(len(row), k)
            xs = row.tolist()
            lp1 = self._nb_log1(leaf, xs, k)
            if lp1 is not None:
                nb = max(range(k), key=lp1.__getitem__)
                self._memo = (leaf, leaf.total, xs, nb)
                if self.leaf_prediction == "nb" or leaf.mc_ok <= leaf.nb_ok:
                    mx1 = lp1[nb]
                    if not math.isfinite(mx1):
                        mx1 = 0.0
                    P1 = [math.exp(v - mx1) for v in lp1]
                    tot1 = sum(P1)
                    return np.asarray(P1) / tot1 if tot1 > 0 else np.full(k, 1.0 / k)
                return self._leaf_proba(leaf, row[None, :])[0]  # type: ignore[no-any-return]
            logp = self._nb_log(leaf, row[None, :], leaf.dist[:k])[0]
            self._memo = (leaf, leaf.total, xs, int(logp.argmax()))
            if self.leaf_prediction == "nb" or leaf.mc_ok <= leaf.nb_ok:
                mx = logp.max()
                P = np.exp(logp - (mx if np.isfinite(mx) else 0.0))
                tot = P.sum()
                return P / tot if tot > 0 else np.full(k, 1.0 / k)
        return self._leaf_proba(leaf, row[None, :])[0]  # type: ignore[no-any-return]

    def _proba_matrix(self, M: np.ndarray) -> np.ndarray:
        out = np.zeros((M.shape[0], len(self._ls)))
        if len(self._ls):
            groups = self._route(M)
            for (_, idx), P in zip(groups, stacked_proba(self, groups, M), strict=True):
                out[idx] = P
        return out

    def learn_many(self, X: Any, y: Any, w: Any = None) -> None:
        """Update the tree with a mini-batch (see the module notes for split timing)."""
        yi = self._ls.encode(as_labels(y))
        M = self._matrix(X, grow=True)
        sw = np.ones(len(yi)) if w is None else np.asarray(w, dtype=float)
        self._learn_matrix(M, yi, sw)

    def _learn_matrix(self, M: np.ndarray, yi: np.ndarray, sw: np.ndarray) -> None:
        self._memo = None
        step = max(int(self._chunk or M.shape[0]), 1)
        if M.shape[0] > step:  # chunks of grace_period rows keep split timing near per-record
            for i in range(0, M.shape[0], step):
                self._learn_chunk(M[i : i + step], yi[i : i + step], sw[i : i + step])
        else:
            self._learn_chunk(M, yi, sw)

    def _learn_chunk(self, M: np.ndarray, yi: np.ndarray, sw: np.ndarray) -> None:
        groups = [
            (leaf, idx, sw[idx])
            for leaf, idx in self._route(M, grow=True)
            if isinstance(leaf, CLeaf)
        ]
        self._learn_leaves(groups, M, yi)

    def _learn_leaves(
        self, groups: list[tuple[CLeaf, np.ndarray, np.ndarray]], M: np.ndarray, yi: np.ndarray
    ) -> None:
        """Merge each group's weighted rows into its leaf, then attempt the due splits."""
        if not stacked_learn(self, groups, M, yi):
            for leaf, idx, w in groups:
                self._learn_leaf(leaf, M[idx], yi[idx], w)
        due = [
            (self, leaf)
            for leaf, _, _ in groups
            if leaf.active and leaf.weight - leaf.last >= self.grace_period
        ]
        stacked_attempt(due)

    def _learn_leaf_one(self, leaf: Any, row: np.ndarray, c: int, w: float) -> None:
        """The one-record case of :meth:`_learn_leaf` (same sums, fewer array operations)."""
        if not isinstance(leaf, CLeaf):  # pragma: no cover
            return
        k = len(self._ls)
        d = len(row)
        leaf.fit(d, k)
        if self.leaf_prediction == "nba" and leaf.total > 0:
            dist = leaf.dist[:k]
            if c == int(dist.argmax()):
                leaf.mc_ok += w
            if leaf.total > self.nb_threshold:
                memo = self._memo
                xs = row.tolist()
                if (
                    memo is not None
                    and memo[0] is leaf
                    and memo[1] == leaf.total
                    and memo[2] == xs  # (NaN != NaN: a row with missing values is recomputed)
                ):
                    nb = memo[3]
                else:
                    lp1 = self._nb_log1(leaf, xs, k)
                    if lp1 is not None:
                        nb = max(range(k), key=lp1.__getitem__)
                    else:
                        nb = int(self._nb_log(leaf, row[None, :], dist)[0].argmax())
                if nb == c:
                    leaf.nb_ok += w
        self._memo = None
        leaf.dist[c] += w
        leaf.total += w
        if not leaf.active:
            return
        if d <= _SCALAR_MAX_FEATURES and w > 0 and True not in self._nominal:
            # The Gaussian estimator update below, element by element on Python floats (same
            # operations in the same order): cheaper than ~20 NumPy calls at a few features.
            na, mua, m2a, loa, hia = leaf.n, leaf.mean, leaf.m2, leaf.lo, leaf.hi
            for f, xv in enumerate(row.tolist()):
                if xv != xv:  # missing
                    continue
                nn = na.item(f, c) + w
                mu = mua.item(f, c)
                delta = xv - mu
                nm = mu + delta * w / nn
                m2a[f, c] = m2a.item(f, c) + w * delta * (xv - nm)
                mua[f, c] = nm
                na[f, c] = nn
                if xv < loa.item(f, c):
                    loa[f, c] = xv
                if xv > hia.item(f, c):
                    hia[f, c] = xv
            return
        ok = ~np.isnan(row)
        allok = bool(ok.all())
        x = row if allok else np.where(ok, row, 0.0)
        wv = w if allok else np.where(ok, w, 0.0)
        n = leaf.n[:d, c] + wv
        mean = leaf.mean[:d, c]
        delta = x - mean
        safe = n if allok else np.where(n > 0, n, 1.0)
        new_mean = mean + delta * wv / safe
        leaf.m2[:d, c] += wv * delta * (x - new_mean)
        leaf.mean[:d, c] = new_mean
        leaf.n[:d, c] = n
        if allok:
            np.minimum(leaf.lo[:d, c], row, out=leaf.lo[:d, c])
            np.maximum(leaf.hi[:d, c], row, out=leaf.hi[:d, c])
        else:
            leaf.lo[:d, c] = np.where(ok, np.minimum(leaf.lo[:d, c], x), leaf.lo[:d, c])
            leaf.hi[:d, c] = np.where(ok, np.maximum(leaf.hi[:d, c], x), leaf.hi[:d, c])
        nominal = self._nominal
        if True in nominal:
            for f in range(d):
                if nominal[f] and ok[f] and row[f] >= 0:
                    code = int(row[f])
                    tab = leaf.nom.get(f)
                    if tab is None or tab.shape[0] <= code or tab.shape[1] < k:
                        new = np.zeros((max(code + 1, 0 if tab is None else tab.shape[0]), k))
                        if tab is not None:
                            new[: tab.shape[0], : tab.shape[1]] = tab
                        tab = leaf.nom[f] = new
                    tab[code, c] += w

    def _learn_leaf(self, leaf: Any, M: np.ndarray, yi: np.ndarray, sw: np.ndarray) -> None:
        if not isinstance(leaf, CLeaf):  # pragma: no cover - unseen nominal values get leaves
            return
        k = len(self._ls)
        d = M.shape[1]
        leaf.fit(d, k)
        if self.leaf_prediction == "nba" and leaf.weight > 0:
            dist = leaf.dist[:k]
            leaf.mc_ok += float(sw[yi == int(dist.argmax())].sum())
            if leaf.weight > self.nb_threshold:
                nb = self._nb_log(leaf, M, dist).argmax(axis=1)
                leaf.nb_ok += float(sw[nb == yi].sum())
        m = M.shape[0]
        Y1 = np.zeros((m, k))
        Y1[np.arange(m), yi] = sw
        leaf.dist[:k] += Y1.sum(axis=0)
        leaf.total = float(leaf.dist.sum())
        if not leaf.active:
            return
        num = self._num_mask(d)
        if num.any():
            _merge_gauss_all(leaf, M, Y1, num)
        if num.all():
            return
        for c in np.unique(yi).tolist():
            sel = yi == c
            Xc, wc = M[sel], sw[sel]
            for f in np.flatnonzero(~num).tolist():
                codes = Xc[:, f]
                ok = ~np.isnan(codes) & (codes >= 0)
                if not ok.any():
                    continue
                cc = codes[ok].astype(np.int64)
                tab = leaf.nom.get(f)
                need = int(cc.max()) + 1
                if tab is None or tab.shape[0] < need or tab.shape[1] < k:
                    new = np.zeros((max(need, 0 if tab is None else tab.shape[0]), k))
                    if tab is not None:
                        new[: tab.shape[0], : tab.shape[1]] = tab
                    tab = leaf.nom[f] = new
                np.add.at(tab[:, c], cc, wc[ok])

    # -- splitting ------------------------------------------------------------------------------
    def _attempt_split(self, leaf: CLeaf) -> None:
        leaf.last = leaf.weight
        k = len(self._ls)
        dist = leaf.dist[:k]
        if (dist > 0).sum() < 2:
            return
        if dist.max() > self.max_share_to_split * dist.sum():
            # One class dominates: no split; the estimators restart so that they describe
            # recent records (River deactivates such a leaf and reactivates it empty).
            _reset_estimators(leaf)
            return
        cands = self._candidates(leaf, dist)
        eps = hoeffding_bound(math.log2(max(int((dist > 0).sum()), 2)), self.delta, leaf.weight)
        cands.sort(key=lambda c: c[0], reverse=True)
        top = cands[0][0] if cands else -math.inf
        if not math.isfinite(top):
            # No usable split (every candidate leaves a branch too small): restart the
            # estimators once the bound says enough was seen.
            if eps < self.tau:
                _reset_estimators(leaf)
            return
        # The best attribute against the second best; "no split" is not a candidate (as in
        # River, whose null split has merit -inf). The gains are measured against the leaf's
        # whole class history while the estimators may hold only recent records, so after a
        # concept change they can all be negative: the difference still ranks the attributes.
        second = cands[1][0] if len(cands) > 1 else -math.inf
        if top - second > eps or eps < self.tau:
            self._split(leaf, cands[0])

    def _candidates(self, leaf: CLeaf, dist: np.ndarray) -> list[tuple[float, Any]]:
        k = len(dist)
        d = len(self._fs)
        leaf.fit(d, k)
        if leaf.feats is None and self.max_features is not None and d > self.max_features:
            leaf.feats = np.sort(self._rng.choice(d, self.max_features, replace=False))
        allowed = np.ones(d, dtype=bool)
        if leaf.feats is not None:
            allowed[:] = False
            allowed[leaf.feats[leaf.feats < d]] = True
        pre = _entropy(dist[None, :])[0]
        out: list[tuple[float, Any]] = []
        num = allowed & ~np.asarray(self._nominal[:d], dtype=bool)
        cols = np.flatnonzero(num & (leaf.n[:d, :k].sum(axis=1) > 0))
        if len(cols):
            merit, T, L, R = numeric_merits(
                np.asarray([pre]),
                leaf.n[cols, :k][None],
                leaf.mean[cols, :k][None],
                leaf.m2[cols, :k][None],
                leaf.lo[cols, :k][None],
                leaf.hi[cols, :k][None],
                self.n_splits,
                self.min_branch_fraction,
            )
            for j, f in enumerate(cols.tolist()):
                s = int(np.argmax(merit[0, j]))
                if np.isfinite(merit[0, j, s]):
                    cand = ("num", f, float(T[0, j, s]), L[0, j, s], R[0, j, s])
                    out.append((float(merit[0, j, s]), cand))
        for f, tab in leaf.nom.items():
            if f >= d or not allowed[f]:
                continue
            t = np.zeros((tab.shape[0], k))
            t[:, : min(k, tab.shape[1])] = tab[:, :k]
            br = t.sum(axis=1)
            tot = br.sum()
            if tot <= 0 or (br / tot >= self.min_branch_fraction).sum() < 2:
                continue
            merit = pre - float((br / tot) @ _entropy(t))
            out.append((merit, ("nom", f, t)))
        return out

    def _split(self, leaf: CLeaf, best: tuple[float, Any]) -> None:
        kind = best[1][0]
        depth = leaf.depth + 1
        if kind == "num":
            _, f, thr, L, R = best[1]
            children: Any = [self._new_leaf(L, depth), self._new_leaf(R, depth)]
            node = Split(
                f,
                thr,
                children,
                False,
                leaf.dist.copy(),
                leaf.depth,
                float(L.sum()),
                float(R.sum()),
            )
        else:
            _, f, t = best[1]
            children = {v: self._new_leaf(t[v], depth) for v in range(t.shape[0]) if t[v].sum() > 0}
            node = Split(f, math.nan, children, True, leaf.dist.copy(), leaf.depth)
        self._replace(leaf, node)
        self._version += 1

    def _replace(self, old: Any, new: Any) -> None:
        if self._root is old:
            self._root = new
            return
        stack = [self._root]
        while stack:
            node = stack.pop()
            if not isinstance(node, Split):
                continue
            if node.nominal:
                for c, ch in node.children.items():
                    if ch is old:
                        node.children[c] = new
                        return
                    stack.append(ch)
            else:
                for i, ch in enumerate(node.children):
                    if ch is old:
                        node.children[i] = new
                        return
                    stack.append(ch)

    # -- state ----------------------------------------------------------------------------------
    def _leaf_state(self, leaf: CLeaf) -> dict[str, Any]:
        return {
            "dist": leaf.dist.copy(),
            "depth": leaf.depth,
            "n": leaf.n.copy(),
            "mean": leaf.mean.copy(),
            "m2": leaf.m2.copy(),
            "lo": leaf.lo.copy(),
            "hi": leaf.hi.copy(),
            "nom": [[f, t.copy()] for f, t in leaf.nom.items()],
            "last": leaf.last,
            "total": leaf.total,
            "mc_ok": leaf.mc_ok,
            "nb_ok": leaf.nb_ok,
            "active": leaf.active,
            "feats": None if leaf.feats is None else leaf.feats.copy(),
        }

    def _leaf_from_state(self, s: dict[str, Any]) -> CLeaf:
        dist = np.asarray(s["dist"], dtype=float)
        leaf = CLeaf(dist, int(s["depth"]), 0, 0)
        leaf.n = np.asarray(s["n"], dtype=float)
        leaf.mean = np.asarray(s["mean"], dtype=float)
        leaf.m2 = np.asarray(s["m2"], dtype=float)
        leaf.lo = np.asarray(s["lo"], dtype=float)
        leaf.hi = np.asarray(s["hi"], dtype=float)
        leaf.nom = {int(f): np.asarray(t, dtype=float) for f, t in s["nom"]}
        leaf.last = float(s["last"])
        # The running total, not dist.sum(): after a split the children's class weights are
        # fractional and the two sums can differ in the last bit, which moves the next split
        # attempt (``weight - last >= grace_period``) by a chunk. Version 1 snapshots lack it.
        leaf.total = float(s["total"]) if "total" in s else float(dist.sum())
        leaf.mc_ok = float(s["mc_ok"])
        leaf.nb_ok = float(s["nb_ok"])
        leaf.active = bool(s["active"])
        leaf.feats = None if s["feats"] is None else np.asarray(s["feats"], dtype=np.int64)
        return leaf

    def _get_state(self) -> dict[str, Any]:
        return {**self._base_state(), "classes": list(self._ls.labels)}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._memo = None
        self._numc = None
        self._ls = LabelSpace(state["classes"])
        self._set_base_state(state)


def _reset_estimators(leaf: CLeaf) -> None:
    """Forget a leaf's split estimators (its class counts stay)."""
    leaf.n[:] = 0.0
    leaf.mean[:] = 0.0
    leaf.m2[:] = 0.0
    leaf.lo[:] = np.inf
    leaf.hi[:] = -np.inf
    leaf.nom = {}


def _merge_gauss_all(leaf: CLeaf, X: np.ndarray, Y1: np.ndarray, num: np.ndarray) -> None:
    """Merge weighted rows into every class's Gaussian estimators at once (Chan et al.).

    ``Y1`` holds each row's weight in its class column. Uses per-class weighted sums
    (three matrix products) instead of a pass per class.
    """
    d, k = X.shape[1], Y1.shape[1]
    ok = ~np.isnan(X)
    ok &= num
    Xz = np.where(ok, X, 0.0)
    S0 = (Y1.T @ ok.astype(np.float64)).T  # (d, k) weights
    S1 = (Y1.T @ Xz).T
    has = S0 > 0
    safe = np.where(has, S0, 1.0)
    mb = S1 / safe
    # second moment about the batch mean, computed directly (no E[x^2] - E[x]^2 cancellation)
    if k <= 8:
        m2b = np.zeros((d, k))
        for c in range(k):
            w = Y1[:, c]
            if has[:, c].any():
                dev = np.where(ok, X - mb[:, c], 0.0)
                m2b[:, c] = w @ (dev * dev)
    else:
        m2b = np.maximum((Y1.T @ (Xz * Xz)).T - S1 * mb, 0.0)
    na, ma, m2a = leaf.n[:d, :k], leaf.mean[:d, :k], leaf.m2[:d, :k]
    tot = na + S0
    safe_tot = np.where(tot > 0, tot, 1.0)
    delta = mb - ma
    leaf.mean[:d, :k] = np.where(has, ma + delta * S0 / safe_tot, ma)
    leaf.m2[:d, :k] = np.where(has, m2a + m2b + delta * delta * na * S0 / safe_tot, m2a)
    leaf.n[:d, :k] = tot
    sel = (Y1 > 0)[:, None, :] & ok[:, :, None]  # (m, d, k)
    X3 = X[:, :, None]
    leaf.lo[:d, :k] = np.minimum(leaf.lo[:d, :k], np.where(sel, X3, np.inf).min(axis=0))
    leaf.hi[:d, :k] = np.maximum(leaf.hi[:d, :k], np.where(sel, X3, -np.inf).max(axis=0))


def _merge_gauss(leaf: CLeaf, X: np.ndarray, w: np.ndarray, c: int, num: np.ndarray) -> None:
    """Merge weighted rows ``X`` of class ``c`` into the leaf's Gaussian estimators (exact)."""
    ok = ~np.isnan(X)
    ok[:, ~num] = False
    W = (w[:, None] * ok).sum(axis=0)
    has = W > 0
    if not has.any():
        return
    Xz = np.where(ok, X, 0.0)
    safeW = np.where(has, W, 1.0)
    mb = (w[:, None] * Xz).sum(axis=0) / safeW
    m2b = (w[:, None] * np.where(ok, (X - mb) ** 2, 0.0)).sum(axis=0)
    na, ma = leaf.n[: len(W), c], leaf.mean[: len(W), c]
    tot = na + W
    safe_tot = np.where(tot > 0, tot, 1.0)
    delta = mb - ma
    leaf.mean[: len(W), c] = np.where(has, ma + delta * W / safe_tot, ma)
    leaf.m2[: len(W), c] = np.where(
        has, leaf.m2[: len(W), c] + m2b + delta * delta * na * W / safe_tot, leaf.m2[: len(W), c]
    )
    leaf.n[: len(W), c] = tot
    big = np.where(ok, X, -np.inf).max(axis=0)
    small = np.where(ok, X, np.inf).min(axis=0)
    leaf.lo[: len(W), c] = np.minimum(leaf.lo[: len(W), c], small)
    leaf.hi[: len(W), c] = np.maximum(leaf.hi[: len(W), c], big)


def _entropy(D: np.ndarray) -> np.ndarray:
    """Entropy (bits) of each distribution along the last axis."""
    tot = D.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tot > 0, D / np.where(tot > 0, tot, 1.0), 0.0)
        h = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)
    return h  # type: ignore[no-any-return]


def _split_merit(
    pre: float | np.ndarray, L: np.ndarray, R: np.ndarray, min_frac: float
) -> np.ndarray:
    wl, wr = L.sum(axis=-1), R.sum(axis=-1)
    tot = wl + wr
    safe = np.where(tot > 0, tot, 1.0)
    merit = pre - (wl / safe) * _entropy(L) - (wr / safe) * _entropy(R)
    ok = (wl / safe >= min_frac) & (wr / safe >= min_frac) & (tot > 0)
    return np.where(ok, merit, -np.inf)


def numeric_merits(
    pre: np.ndarray,
    N: np.ndarray,
    MU: np.ndarray,
    M2: np.ndarray,
    LO: np.ndarray,
    HI: np.ndarray,
    n_splits: int,
    min_frac: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Information gain of the candidate thresholds of numeric features at leaves.

    ``pre``: each leaf's class entropy ``(G,)``; ``N, MU, M2, LO, HI``: the Gaussian estimators
    per leaf, feature and class ``(G, d, k)``. ``n_splits`` thresholds per feature, evenly
    between its observed min and max; the class weights on each side come from the Gaussian
    CDFs (clipped to the observed range). Returns the merits ``(G, d, S)`` (``-inf`` where a
    feature has no range, no records, or a branch below ``min_frac``), the thresholds and the
    left/right class weights ``(G, d, S, k)``.
    """
    lo = LO.min(axis=2)
    hi = HI.max(axis=2)
    frac = np.arange(1, n_splits + 1) / (n_splits + 1)
    # features without records give NaN thresholds: their merits are masked below
    with np.errstate(all="ignore"):
        T = lo[:, :, None] + (hi - lo)[:, :, None] * frac  # (G, d, S)
        var = np.where(N > 0, M2 / np.where(N > 0, N, 1.0), 0.0)
        std = np.sqrt(np.maximum(var, 0.0))
        Tt = T[..., None]
        z = (Tt - MU[:, :, None, :]) / std[:, :, None, :]
        cdf = np.where(
            std[:, :, None, :] > 0,
            0.5 * (1 + _erf(z / math.sqrt(2))),
            (Tt >= MU[:, :, None, :]) * 1.0,
        )
        cdf = np.where(Tt < LO[:, :, None, :], 0.0, np.where(Tt >= HI[:, :, None, :], 1.0, cdf))
        L = N[:, :, None, :] * cdf
        R = N[:, :, None, :] - L
        merit = _split_merit(pre[:, None, None], L, R, min_frac)
        merit = np.where((hi > lo)[:, :, None], merit, -np.inf)
    return merit, T, L, R


def _erf(x: np.ndarray) -> np.ndarray:
    """Vectorized error function (Abramowitz-Stegun 7.1.26, |error| < 1.5e-7)."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (
        ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t * np.exp(-a * a)
    return s * y  # type: ignore[no-any-return]
