"""Leaf work of many Hoeffding tree leaves in one vectorized step.

The mini-batch paths of the classification trees route a chunk of rows and then have, per
reached leaf, a few rows to score or to merge into the leaf's statistics. Done leaf by leaf
that is 20-40 small NumPy calls per leaf, which dominates when leaves get a handful of rows
each (the forest's ten Poisson-weighted trees, or deep adaptive trees). Here the statistics of
all the leaves of a chunk (of one tree or of several trees that share their feature and label
mappings) are stacked into ``(leaves, features, classes)`` arrays, and every (row, leaf) pair
is scored or merged at once: the same naive Bayes scores and the same exact Chan merges of
weighted sums that :class:`~tideflow.ml._tree.HoeffdingTreeClassifier` computes per leaf.

Only numeric features are stacked; with nominal features the callers keep the per-leaf code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tideflow.ml._tree_base import hoeffding_bound

if TYPE_CHECKING:
    from tideflow.ml._tree import CLeaf, HoeffdingTreeClassifier

__all__ = ["stacked_attempt", "stacked_learn", "stacked_proba"]

# Pairs scored per NumPy step: bounds the (pairs, features, classes) temporaries.
_BLOCK_CELLS = 1 << 19


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack`` of equally shaped arrays (a C-level concatenation: faster on many)."""
    return np.concatenate(arrays).reshape(len(arrays), *arrays[0].shape)


def _stack(leaves: Sequence[CLeaf], d: int, k: int) -> tuple[np.ndarray, ...] | None:
    """The leaves' statistics as ``(G, d, k)`` arrays (``None`` if a leaf is shaped otherwise)."""
    for leaf in leaves:
        if leaf.n.shape != (d, k) or len(leaf.dist) != k:
            leaf.fit(d, k)
            if leaf.n.shape != (d, k) or len(leaf.dist) != k:
                return None
    N = _cat([leaf.n for leaf in leaves])
    MU = _cat([leaf.mean for leaf in leaves])
    M2 = _cat([leaf.m2 for leaf in leaves])
    return N, MU, M2


def _nb_terms(
    N: np.ndarray, MU: np.ndarray, M2: np.ndarray, num: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (leaf, feature, class): whether the Gaussian counts, its log-normaliser, 2 var."""
    has = (N > 0) & num[None, :, None]
    var = np.divide(M2, N, out=np.zeros(N.shape), where=has)
    var = np.maximum(var, 1e-9 * (1.0 + MU * MU))
    return has, -0.5 * np.log(2 * math.pi * var), 2 * var


def _nb_log_pairs(
    X: np.ndarray,
    gid: np.ndarray,
    prior: np.ndarray,
    MU: np.ndarray,
    terms: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """Naive Bayes log scores ``(P, k)`` of rows ``X`` at leaves ``gid`` (as ``_nb_log``)."""
    has, lnorm, var2 = terms
    P = len(gid)
    d, k = MU.shape[1], MU.shape[2]
    out = np.empty((P, k))
    step = max(1, _BLOCK_CELLS // max(d * k, 1))
    for a in range(0, P, step):
        g = gid[a : a + step]
        diff = X[a : a + step, :, None] - MU[g]
        t = lnorm[g] - diff * diff / var2[g]
        t = np.where(has[g], t, 0.0)
        out[a : a + step] = prior[g] + np.nansum(t, axis=1)
    return out


def stacked_proba(
    tree: HoeffdingTreeClassifier, groups: Sequence[tuple[Any, np.ndarray]], M: np.ndarray
) -> list[np.ndarray]:
    """Class probabilities at each group's node for its rows, as ``tree._leaf_proba``.

    ``groups`` are ``(node, rows)`` of trees sharing ``tree``'s settings and label mapping;
    returns one ``(len(rows), k)`` array per group.
    """
    from tideflow.ml._tree import CLeaf

    k = len(tree._ls)
    d = M.shape[1]
    out: list[np.ndarray] = [np.empty((0, k))] * len(groups)
    nb: list[int] = []
    for i, (node, idx) in enumerate(groups):
        if (
            isinstance(node, CLeaf)
            and tree.leaf_prediction != "mc"
            and not node.nom
            and node.total > tree.nb_threshold
            and (tree.leaf_prediction == "nb" or node.mc_ok <= node.nb_ok)
            and k > 0
        ):
            nb.append(i)
        else:
            out[i] = tree._leaf_proba(node, M[idx])
    if not nb:
        return out
    if len(nb) == 1 or True in tree._nominal[:d]:  # (one leaf: the per-leaf code is cheaper)
        for i in nb:
            out[i] = tree._leaf_proba(groups[i][0], M[groups[i][1]])
        return out
    leaves = [groups[i][0] for i in nb]
    st = _stack(leaves, d, k)
    if st is None:  # pragma: no cover - leaves are always fitted to the tree's shape
        for i in nb:
            out[i] = tree._leaf_proba(groups[i][0], M[groups[i][1]])
        return out
    N, MU, M2 = st
    D = _cat([leaf.dist for leaf in leaves])
    tot = np.array([leaf.total for leaf in leaves])
    with np.errstate(divide="ignore"):
        prior = np.log(D) - np.log(tot)[:, None]
    sizes = [len(groups[i][1]) for i in nb]
    rows = np.concatenate([groups[i][1] for i in nb])
    gid = np.repeat(np.arange(len(nb)), sizes)
    logp = _nb_log_pairs(M[rows], gid, prior, MU, _nb_terms(N, MU, M2, tree._num_mask(d)))
    mx = logp.max(axis=1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    E = np.exp(logp - mx)
    s = E.sum(axis=1, keepdims=True)
    Pr = np.where(s > 0, E / np.where(s > 0, s, 1.0), 1.0 / k)
    bounds = np.cumsum([0, *sizes]).tolist()
    for j, i in enumerate(nb):
        out[i] = Pr[bounds[j] : bounds[j + 1]]
    return out


def stacked_learn(
    tree: HoeffdingTreeClassifier,
    groups: Sequence[tuple[CLeaf, np.ndarray, np.ndarray]],
    M: np.ndarray,
    yi: np.ndarray,
) -> bool:
    """Merge each group's weighted rows into its leaf, as ``tree._learn_leaf`` per group.

    ``groups`` are ``(leaf, rows, weights)`` with distinct leaves of trees sharing ``tree``'s
    settings and mappings. Returns ``False`` (and does nothing) where the stacked step does not
    apply (nominal features) or does not pay (one leaf): the caller then learns leaf by leaf.
    """
    if not groups:
        return True
    k = len(tree._ls)
    d = M.shape[1]
    num = tree._num_mask(d)
    if len(groups) == 1 or not num.all():  # (one leaf: the per-leaf code is cheaper)
        return False
    leaves = [g[0] for g in groups]
    st = _stack(leaves, d, k)
    if st is None:  # pragma: no cover - leaves are always fitted to the tree's shape
        return False
    N, MU, M2 = st
    D = _cat([leaf.dist for leaf in leaves])
    G = len(leaves)
    sizes = [len(g[1]) for g in groups]
    rows = np.concatenate([g[1] for g in groups])
    w = np.concatenate([g[2] for g in groups]).astype(float, copy=False)
    gid = np.repeat(np.arange(G), sizes)
    c = yi[rows]
    X = M[rows]
    tot = np.array([leaf.total for leaf in leaves])
    mc_add = nb_add = None
    if tree.leaf_prediction == "nba":
        seen = tot > 0
        hit = seen[gid] & (c == D.argmax(axis=1)[gid])
        mc_add = np.bincount(gid, np.where(hit, w, 0.0), minlength=G)
        ask = seen & (tot > tree.nb_threshold)
        if ask.any():
            with np.errstate(divide="ignore"):
                prior = np.log(D) - np.log(np.where(seen, tot, 1.0))[:, None]
            sel = ask[gid]
            lp = _nb_log_pairs(X[sel], gid[sel], prior, MU, _nb_terms(N, MU, M2, num))
            good = lp.argmax(axis=1) == c[sel]
            nb_add = np.bincount(gid[sel], np.where(good, w[sel], 0.0), minlength=G)
    np.add.at(D, (gid, c), w)
    active = np.array([leaf.active for leaf in leaves])
    LO = HI = None
    sel = active[gid] & (w > 0)
    if sel.any():
        LO = _cat([leaf.lo for leaf in leaves])
        HI = _cat([leaf.hi for leaf in leaves])
        key = gid[sel] * k + c[sel]
        order = np.argsort(key, kind="stable")
        ks = key[order]
        Xs = X[sel][order]
        ws = w[sel][order]
        starts = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))
        gs, cs = ks[starts] // k, ks[starts] % k
        ok = ~np.isnan(Xs)
        wok = ws[:, None] * ok
        Xz = np.where(ok, Xs, 0.0)
        S0 = np.add.reduceat(wok, starts, axis=0)
        S1 = np.add.reduceat(wok * Xz, starts, axis=0)
        has = S0 > 0
        mb = S1 / np.where(has, S0, 1.0)
        seg = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(ks))))
        dev = np.where(ok, Xs - mb[seg], 0.0)
        M2b = np.add.reduceat(wok * dev * dev, starts, axis=0)
        na, ma, m2a = N[gs, :, cs], MU[gs, :, cs], M2[gs, :, cs]
        tn = na + S0
        safe = np.where(tn > 0, tn, 1.0)
        delta = mb - ma
        MU[gs, :, cs] = np.where(has, ma + delta * S0 / safe, ma)
        M2[gs, :, cs] = np.where(has, m2a + M2b + delta * delta * na * S0 / safe, m2a)
        N[gs, :, cs] = tn
        lo = np.minimum.reduceat(np.where(ok, Xs, np.inf), starts, axis=0)
        hi = np.maximum.reduceat(np.where(ok, Xs, -np.inf), starts, axis=0)
        LO[gs, :, cs] = np.minimum(LO[gs, :, cs], lo)
        HI[gs, :, cs] = np.maximum(HI[gs, :, cs], hi)
    totals = D.sum(axis=1).tolist()
    mc = mc_add.tolist() if mc_add is not None else None
    nbl = nb_add.tolist() if nb_add is not None else None
    for g, leaf in enumerate(leaves):
        leaf.dist = D[g]
        leaf.total = totals[g]
        if mc is not None:
            leaf.mc_ok += mc[g]
        if nbl is not None:
            leaf.nb_ok += nbl[g]
        if LO is not None and HI is not None and leaf.active:
            leaf.n, leaf.mean, leaf.m2 = N[g], MU[g], M2[g]
            leaf.lo, leaf.hi = LO[g], HI[g]
    return True


def stacked_attempt(pairs: Sequence[tuple[HoeffdingTreeClassifier, CLeaf]]) -> None:
    """Split attempts at many leaves at once, as ``tree._attempt_split(leaf)`` for each pair.

    The candidate thresholds and information gains of every leaf's numeric features are one
    ``(leaves, features, thresholds, classes)`` computation (the same operations as
    ``_candidates``, so the same decisions); leaves with nominal statistics, and trees with
    nominal features, take the per-leaf path.
    """
    from tideflow.ml._tree import _entropy, _reset_estimators, numeric_merits

    if len(pairs) <= 1:  # (one leaf: the per-leaf code is cheaper)
        for tr, leaf in pairs:
            tr._attempt_split(leaf)
        return
    tr0 = pairs[0][0]
    k, d = len(tr0._ls), len(tr0._fs)
    simple = [
        (tr, leaf)
        for tr, leaf in pairs
        if not leaf.nom and True not in tr._nominal and len(tr._ls) == k and len(tr._fs) == d
    ]
    if len(simple) < len(pairs):
        for tr, leaf in pairs:
            if leaf.nom or True in tr._nominal or len(tr._ls) != k or len(tr._fs) != d:
                tr._attempt_split(leaf)
    if not simple:
        return
    for _, leaf in simple:
        leaf.fit(d, k)
    if any(leaf.n.shape != (d, k) for _, leaf in simple):  # pragma: no cover - fitted above
        for tr, leaf in simple:
            tr._attempt_split(leaf)
        return
    D = _cat([leaf.dist[:k] for _, leaf in simple])
    n_cls = (D > 0).sum(axis=1)
    tot = D.sum(axis=1)
    share = np.array([tr.max_share_to_split for tr, _ in simple])
    plain = (n_cls >= 2) & ~(D.max(axis=1) > share * tot)
    todo: list[tuple[HoeffdingTreeClassifier, CLeaf]] = []
    for (tr, leaf), go in zip(simple, plain.tolist(), strict=True):
        if not go:  # one class, or one dominates: no split (the estimators may restart)
            tr._attempt_split(leaf)
            continue
        if leaf.feats is None and tr.max_features is not None and d > tr.max_features:
            leaf.feats = np.sort(tr._rng.choice(d, tr.max_features, replace=False))
        todo.append((tr, leaf))
    if not todo:
        return
    leaves = [leaf for _, leaf in todo]
    G = len(leaves)
    D = D[plain]
    N = _cat([leaf.n for leaf in leaves])
    MU = _cat([leaf.mean for leaf in leaves])
    M2 = _cat([leaf.m2 for leaf in leaves])
    LO = _cat([leaf.lo for leaf in leaves])
    HI = _cat([leaf.hi for leaf in leaves])
    allowed = np.ones((G, d), dtype=bool)
    for g, leaf in enumerate(leaves):
        if leaf.feats is not None:
            allowed[g] = False
            allowed[g, leaf.feats[leaf.feats < d]] = True
    cols = allowed & (N.sum(axis=2) > 0)
    merit, T, L, R = numeric_merits(
        _entropy(D), N, MU, M2, LO, HI, tr0.n_splits, tr0.min_branch_fraction
    )
    merit = np.where(cols[:, :, None], merit, -np.inf)
    best_s = merit.argmax(axis=2)  # (G, d)
    best = np.take_along_axis(merit, best_s[:, :, None], axis=2)[:, :, 0]  # (G, d)
    order = np.argsort(-best, axis=1, kind="stable")
    top_f = order[:, 0]
    top = best[np.arange(G), top_f]
    second = best[np.arange(G), order[:, 1]] if d > 1 else np.full(G, -np.inf)
    eps = np.array(
        [
            hoeffding_bound(math.log2(max(c, 2)), tr.delta, leaf.weight)
            for c, (tr, leaf) in zip(n_cls[plain].tolist(), todo, strict=True)
        ]
    )
    tau = np.array([tr.tau for tr, _ in todo])
    finite = np.isfinite(top)
    with np.errstate(invalid="ignore"):  # (-inf) - (-inf) where no candidate: not finite
        split = finite & ((top - second > eps) | (eps < tau))
    reset = ~finite & (eps < tau)
    for g, (tr, leaf) in enumerate(todo):
        leaf.last = leaf.weight
        if reset[g]:  # no usable split: restart the estimators once the bound says so
            _reset_estimators(leaf)
        elif split[g]:
            f = int(top_f[g])
            s = int(best_s[g, f])
            tr._split(leaf, (float(top[g]), ("num", f, float(T[g, f, s]), L[g, f, s], R[g, f, s])))


def route_trees(
    trees: Sequence[HoeffdingTreeClassifier], M: np.ndarray, K: np.ndarray | None = None
) -> list[tuple[Any, np.ndarray, int]] | None:
    """Rows of ``M`` grouped by the leaf they reach in each tree, all trees routed at once.

    Returns ``(leaf, rows, tree index)`` groups (rows ascending), with only the rows where
    ``K[tree] > 0`` if ``K`` is given; ``None`` when a tree has nominal splits (route those
    with ``_route``). Each step moves every (tree, row) pair that is still at a split one level
    down, so the cost grows with the trees' depth, not with their number of nodes.
    """
    flats = [t._flat() for t in trees]
    if not trees or any(f is None for f in flats):
        return None
    fl = [f for f in flats if f is not None]
    sizes = [len(f.nodes) for f in fl]
    off = np.cumsum([0, *sizes[:-1]])
    F = np.concatenate([f.feature for f in fl])
    if F.max() >= M.shape[1]:
        return None
    TH = np.concatenate([f.threshold for f in fl])
    LT = np.concatenate([f.left + o for f, o in zip(fl, off.tolist(), strict=True)])
    RT = np.concatenate([f.right + o for f, o in zip(fl, off.tolist(), strict=True)])
    NL = np.concatenate([f.nan_left for f in fl])
    if K is None:
        t_of = np.repeat(np.arange(len(fl)), M.shape[0])
        r_of = np.tile(np.arange(M.shape[0]), len(fl))
    else:
        t_of, r_of = np.nonzero(K > 0)
    if not len(t_of):
        return []
    node = off[t_of]
    live = np.flatnonzero(F[node] >= 0)
    while len(live):
        nd = node[live]
        v = M[r_of[live], F[nd]]
        go = v <= TH[nd]
        miss = np.isnan(v)
        if miss.any():
            go = np.where(miss, NL[nd], go)
        nd = np.where(go, LT[nd], RT[nd])
        node[live] = nd
        live = live[F[nd] >= 0]
    order = np.argsort(node, kind="stable")
    ns = node[order]
    starts = np.flatnonzero(np.concatenate([[True], ns[1:] != ns[:-1]]))
    bounds = [*starts.tolist(), len(ns)]
    rows = r_of[order]
    objs = [n for f in fl for n in f.nodes]
    ids = ns[starts].tolist()
    tid = t_of[order][starts].tolist()
    return [
        (objs[i], rows[a:b], t)
        for i, t, a, b in zip(ids, tid, bounds[:-1], bounds[1:], strict=True)
    ]
