"""Hoeffding tree regressor with numerically guarded linear leaf models.

Each leaf keeps the target's running mean and variance and a bounded reservoir sample of its
records. Every ``grace_period`` weight, candidate splits are scored exactly on the reservoir by
variance reduction (every midpoint between distinct values of each numeric feature, a multiway
split for nominal ones), and the leaf splits when the runner-up's reduction is below
``1 - eps`` times the best's (the ratio test of FIMT-DD, Ikonomovska et al. 2011; ``eps`` the
Hoeffding bound with range 1) or ``eps < tau``.

Leaf models: ``"mean"``, ``"model"`` (a linear model) or ``"adaptive"`` (whichever has the
lower faded absolute error at that leaf, the default as in River). The linear model is guarded
so it cannot diverge: it works on features standardised by tree-wide running statistics and
clipped to +-5 standard deviations, learns the residual from the leaf mean by normalised LMS
(step ``lr * e * z / (1 + |z|^2)``, stable for ``0 < lr < 2``), and its predictions are clipped to
the target range seen at the leaf widened by half that range.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from itertools import repeat
from operator import add, mul
from typing import Any, Literal

import numpy as np

from tideflow._errors import ConfigError
from tideflow.ml._base import Regressor, _check_choice, _check_positive
from tideflow.ml._data import as_labels
from tideflow.ml._tree_base import Split, TreeBase, hoeffding_bound

__all__ = ["HoeffdingTreeRegressor"]

LeafModel = Literal["mean", "model", "adaptive"]
_FADE = 0.99
# Up to this many (all numeric) features, the per-record feature scaler update, standardisation
# and leaf model step run on Python floats (same operations, same order), above it on NumPy.
_SCALAR_MAX_FEATURES = 24


class RLeaf:
    """A regression leaf: target statistics, reservoir sample and a linear model."""

    __slots__ = (
        "active",
        "bw",
        "bx",
        "by",
        "depth",
        "err_mean",
        "err_model",
        "fill",
        "hi",
        "last",
        "lo",
        "m2",
        "mean",
        "n",
        "seen",
        "w",
    )

    def __init__(self, depth: int, d: int) -> None:
        self.depth = depth
        self.n = 0.0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.bx = np.zeros((0, d))
        self.by = np.zeros(0)
        self.bw = np.zeros(0)
        self.fill = 0
        self.seen = 0
        self.w = np.zeros(d)
        self.err_mean = 0.0
        self.err_model = 0.0
        self.last = 0.0
        self.active = True


class HoeffdingTreeRegressor(TreeBase, Regressor):
    """Hoeffding tree regressor (variance reduction, reservoir-based exact split search).

    Parameters
    ----------
    grace_period
        Weight a leaf must see between split attempts.
    max_depth
        Maximum depth (``None``: unbounded).
    delta
        Significance of the Hoeffding bound.
    tau
        Tie threshold.
    leaf_prediction
        ``"mean"``, ``"model"`` or ``"adaptive"``.
    model_lr
        Step size of the normalised LMS leaf model, in (0, 2).
    nominal_attributes
        Feature names to treat as nominal (strings are nominal anyway).
    min_samples_split
        Weight a leaf needs before it may split.
    max_leaf_samples
        Size of each leaf's reservoir sample used to score splits.
    seed
        Seed of the reservoir sampling.

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> from tideflow.ml.metrics import MAE
    >>> model, mae = HoeffdingTreeRegressor(), MAE()
    >>> for x, y in synth.Friedman(seed=1).take(3000):
    ...     mae.update(y, model.predict_one(x))
    ...     model.learn_one(x, y)
    >>> mae.get() < 3.0
    True
    """

    def __init__(
        self,
        grace_period: int = 200,
        max_depth: int | None = None,
        delta: float = 1e-7,
        tau: float = 0.05,
        leaf_prediction: LeafModel = "adaptive",
        model_lr: float = 0.5,
        nominal_attributes: list[Hashable] | None = None,
        min_samples_split: int = 5,
        max_leaf_samples: int = 1000,
        seed: int | None = None,
    ) -> None:
        name = type(self).__name__
        _check_positive(name, "grace_period", grace_period)
        _check_positive(name, "delta", delta)
        _check_choice(name, "leaf_prediction", leaf_prediction, ("mean", "model", "adaptive"))
        if not 0 < model_lr < 2:
            msg = f"{name}: model_lr must be in (0, 2) for a stable leaf model, got {model_lr}"

            raise ConfigError(msg)
        _check_positive(name, "max_leaf_samples", max_leaf_samples)
        self.grace_period = grace_period
        self.max_depth = max_depth
        self.delta = delta
        self.tau = tau
        self.leaf_prediction = leaf_prediction
        self.model_lr = model_lr
        self.nominal_attributes = nominal_attributes
        self.min_samples_split = min_samples_split
        self.max_leaf_samples = max_leaf_samples
        self.seed = seed
        self._init_base()
        self._sn = np.zeros(0)
        self._smean = np.zeros(0)
        self._sm2 = np.zeros(0)
        self._zc: Any = None
        self._root = self._new_leaf(None, 0)

    def _new_leaf(self, dist: Any, depth: int) -> RLeaf:
        leaf = RLeaf(depth, len(self._fs))
        if self.max_depth is not None and depth >= self.max_depth:
            leaf.active = False
        return leaf

    # -- feature scaling for the leaf models ------------------------------------------------------
    def _grow_scaler(self, d: int) -> None:
        if len(self._sn) < d:
            pad = d - len(self._sn)
            self._sn = np.concatenate([self._sn, np.zeros(pad)])
            self._smean = np.concatenate([self._smean, np.zeros(pad)])
            self._sm2 = np.concatenate([self._sm2, np.zeros(pad)])

    def _update_scaler(self, M: np.ndarray, w: np.ndarray) -> None:
        self._zc = None
        d = M.shape[1]
        self._grow_scaler(d)
        num = ~np.asarray(self._nominal[:d], dtype=bool)
        ok = ~np.isnan(M) & num
        W = (w[:, None] * ok).sum(axis=0)
        has = W > 0
        safeW = np.where(has, W, 1.0)
        Xz = np.where(ok, M, 0.0)
        mb = (w[:, None] * Xz).sum(axis=0) / safeW
        m2b = (w[:, None] * np.where(ok, (M - mb) ** 2, 0.0)).sum(axis=0)
        na, ma = self._sn[:d], self._smean[:d]
        tot = na + W
        safe = np.where(tot > 0, tot, 1.0)
        delta = mb - ma
        self._smean[:d] = np.where(has, ma + delta * W / safe, ma)
        self._sm2[:d] = np.where(
            has, self._sm2[:d] + m2b + delta * delta * na * W / safe, self._sm2[:d]
        )
        self._sn[:d] = tot

    def _z(self, M: np.ndarray) -> np.ndarray:
        """Standardised, clipped features for the leaf models (0 for missing/nominal/constant)."""
        d = M.shape[1]
        c = self._zc
        if c is None or c[0] != d:
            self._grow_scaler(d)
            n = self._sn[:d]
            std = np.sqrt(np.where(n > 0, self._sm2[:d] / np.where(n > 0, n, 1.0), 0.0))
            num = ~np.asarray(self._nominal[:d], dtype=bool)
            keep = num & (std > 0)
            inv = np.where(keep, 1.0 / np.where(keep, std, 1.0), 0.0)
            c = self._zc = (d, self._smean[:d].copy(), inv)
        Z = (M - c[1]) * c[2]
        if np.isnan(Z).any():
            Z = np.nan_to_num(Z, nan=0.0)
        return np.clip(Z, -5.0, 5.0, out=Z)  # type: ignore[no-any-return]

    def _z1(self, xs: list[float]) -> list[float] | None:
        """:meth:`_z` for one row on Python floats (``None``: use the arrays)."""
        d = len(xs)
        if d > _SCALAR_MAX_FEATURES or True in self._nominal:
            return None
        self._grow_scaler(d)
        out: list[float] = []
        for x, n, mu, m2 in zip(
            xs,
            self._sn[:d].tolist(),
            self._smean[:d].tolist(),
            self._sm2[:d].tolist(),
            strict=True,
        ):
            var = m2 / n if n > 0 else 0.0
            if var > 0:
                z = (x - mu) * (1.0 / math.sqrt(var))
                if z != z:
                    z = 0.0
                elif z > 5.0:
                    z = 5.0
                elif z < -5.0:
                    z = -5.0
            else:
                z = 0.0
            out.append(z)
        return out

    def _model_predict1(self, leaf: RLeaf, xs: list[float]) -> float | None:
        """:meth:`_model_predict` for one row on Python floats (``None``: use the arrays)."""
        zl = self._z1(xs)
        if zl is None:
            return None
        d = min(len(zl), len(leaf.w))
        p = leaf.mean + sum(map(mul, zl[:d], leaf.w[:d].tolist()))
        if leaf.hi >= leaf.lo:
            span = 0.5 * (leaf.hi - leaf.lo) + 1e-12
            p = min(max(p, leaf.lo - span), leaf.hi + span)
        return float(p) if math.isfinite(p) else float(leaf.mean)

    # -- prediction ---------------------------------------------------------------------------
    def _leaf_predict(self, leaf: Any, M: np.ndarray, Z: np.ndarray | None = None) -> np.ndarray:
        m = M.shape[0]
        if not isinstance(leaf, RLeaf):
            return np.full(m, float(leaf.dist[0]) if len(leaf.dist) else 0.0)
        mean = np.full(m, leaf.mean)
        if self.leaf_prediction == "mean" or leaf.n <= 0:
            return mean
        if self.leaf_prediction == "adaptive" and leaf.err_mean <= leaf.err_model:
            return mean
        return self._model_predict(leaf, M if Z is None else None, Z)

    def _model_predict(self, leaf: RLeaf, M: np.ndarray | None, Z: np.ndarray | None) -> np.ndarray:
        if Z is None:
            assert M is not None
            Z = self._z(M)
        d = min(Z.shape[1], len(leaf.w))
        p = leaf.mean + Z[:, :d] @ leaf.w[:d]
        if leaf.hi >= leaf.lo:
            span = 0.5 * (leaf.hi - leaf.lo) + 1e-12
            p = np.clip(p, leaf.lo - span, leaf.hi + span)
        return np.where(np.isfinite(p), p, leaf.mean)

    def predict_one(self, x: dict[Hashable, Any]) -> float:
        """Prediction for one record (0.0 before any learning)."""
        row = self._row(x, grow=False)
        leaf, _ = self._leaf_of(row)
        if isinstance(leaf, RLeaf) and (
            self.leaf_prediction == "mean"
            or leaf.n <= 0
            or (self.leaf_prediction == "adaptive" and leaf.err_mean <= leaf.err_model)
        ):
            return float(leaf.mean)
        if isinstance(leaf, RLeaf):
            p = self._model_predict1(leaf, row.tolist())
            if p is not None:
                return p
        return float(self._leaf_predict(leaf, row[None, :])[0])

    def predict_many(self, X: Any) -> np.ndarray:
        """Predictions for a mini-batch."""
        M = self._matrix(X, grow=False)
        out = np.zeros(M.shape[0])
        for node, idx in self._route(M):
            out[idx] = self._leaf_predict(node, M[idx])
        return out

    # -- learning -----------------------------------------------------------------------------
    def learn_one(self, x: dict[Hashable, Any], y: float, w: float = 1.0) -> None:
        """Update the tree with one record."""
        row = self._row(x, grow=True)
        yf = float(y)
        if not math.isfinite(yf):
            return
        self._update_scaler_one(row, float(w))
        leaf, _ = self._leaf_of(row, grow=True)
        if not isinstance(leaf, RLeaf):  # pragma: no cover
            return
        self._learn_leaf_one(leaf, row, yf, float(w))
        if leaf.active and leaf.n - leaf.last >= self.grace_period:
            self._attempt_split(leaf)

    def _update_scaler_one(self, row: np.ndarray, w: float) -> None:
        self._zc = None
        d = len(row)
        self._grow_scaler(d)
        if d <= _SCALAR_MAX_FEATURES and True not in self._nominal:
            # The array update below on Python floats (same operations; missing values skipped,
            # where the arrays add zero).
            sn, sm, s2 = self._sn[:d].tolist(), self._smean[:d].tolist(), self._sm2[:d].tolist()
            for f, x in enumerate(row.tolist()):
                if x != x:
                    continue
                n = sn[f] + w
                mu = sm[f]
                delta = x - mu
                nm = mu + (delta * w / n if n > 0 else 0.0)
                s2[f] += w * delta * (x - nm)
                sm[f] = nm
                sn[f] = n
            self._sn[:d], self._smean[:d], self._sm2[:d] = sn, sm, s2
            return
        ok = ~np.isnan(row)
        if True in self._nominal:
            ok &= ~np.asarray(self._nominal[:d], dtype=bool)
        wv = np.where(ok, w, 0.0)
        x = np.where(ok, row, 0.0)
        n = self._sn[:d] + wv
        mean = self._smean[:d]
        delta = x - mean
        new_mean = mean + np.divide(delta * wv, n, out=np.zeros(d), where=n > 0)
        self._sm2[:d] += wv * delta * (x - new_mean)
        self._smean[:d] = new_mean
        self._sn[:d] = n

    def _learn_leaf_one(self, leaf: RLeaf, row: np.ndarray, y: float, w: float) -> None:
        """The one-record case of :meth:`_learn_leaf` (scalar target arithmetic)."""
        d = len(row)
        if len(leaf.w) < d:
            leaf.w = np.concatenate([leaf.w, np.zeros(d - len(leaf.w))])
        zl = self._z1(row.tolist()) if leaf.n > 0 else None
        if zl is not None:  # the step below on Python floats (same operations, same order)
            wl = leaf.w[:d].tolist()
            lin = sum(map(mul, zl, wl))
            p = leaf.mean + lin
            if leaf.hi >= leaf.lo:
                span = 0.5 * (leaf.hi - leaf.lo) + 1e-12
                p = min(max(p, leaf.lo - span), leaf.hi + span)
            if not math.isfinite(p):
                p = leaf.mean
            leaf.err_mean = _FADE * leaf.err_mean + (1 - _FADE) * abs(y - leaf.mean)
            leaf.err_model = _FADE * leaf.err_model + (1 - _FADE) * abs(y - p)
            r = y - (leaf.mean + lin)
            g = self.model_lr * w * r / (1.0 + sum(map(mul, zl, zl)))
            leaf.w[:d] = list(map(add, wl, map(mul, repeat(g), zl)))
        elif leaf.n > 0:
            z = self._z(row[None, :])[0]
            lin = float(z @ leaf.w[:d])
            p = leaf.mean + lin
            if leaf.hi >= leaf.lo:
                span = 0.5 * (leaf.hi - leaf.lo) + 1e-12
                p = min(max(p, leaf.lo - span), leaf.hi + span)
            if not math.isfinite(p):
                p = leaf.mean
            leaf.err_mean = _FADE * leaf.err_mean + (1 - _FADE) * abs(y - leaf.mean)
            leaf.err_model = _FADE * leaf.err_model + (1 - _FADE) * abs(y - p)
            r = y - (leaf.mean + lin)
            leaf.w[:d] += (self.model_lr * w * r / (1.0 + float(z @ z))) * z
        tot = leaf.n + w
        delta = y - leaf.mean
        leaf.m2 += delta * delta * leaf.n * w / tot
        leaf.mean += delta * w / tot
        leaf.n = tot
        leaf.lo = min(leaf.lo, y)
        leaf.hi = max(leaf.hi, y)
        cap = self.max_leaf_samples
        if leaf.fill < cap and leaf.bx.shape[0] > leaf.fill and leaf.bx.shape[1] == d:
            leaf.bx[leaf.fill] = row
            leaf.by[leaf.fill] = y
            leaf.bw[leaf.fill] = w
            leaf.fill += 1
            leaf.seen += 1
        else:
            self._reservoir(leaf, row[None, :], np.asarray([y]), np.asarray([w]))

    def learn_many(self, X: Any, y: Any, w: Any = None) -> None:
        """Update the tree with a mini-batch."""
        M = self._matrix(X, grow=True)
        yy = as_labels(y).astype(np.float64)
        sw = np.ones(len(yy)) if w is None else np.asarray(w, dtype=float)
        self._learn(M, yy, sw)

    def _learn(self, M: np.ndarray, y: np.ndarray, sw: np.ndarray) -> None:
        ok = np.isfinite(y)
        if not ok.all():
            M, y, sw = M[ok], y[ok], sw[ok]
        self._update_scaler(M, sw)
        step = max(int(self.grace_period), 1)
        if len(y) > step:  # chunks of grace_period rows keep split timing near per-record
            for i in range(0, len(y), step):
                self._learn(M[i : i + step], y[i : i + step], sw[i : i + step])
            return
        if len(y) == 1:
            groups = [(self._leaf_of(M[0], grow=True)[0], np.zeros(1, dtype=np.int64))]
        else:
            groups = self._route(M, grow=True)
        for leaf, idx in groups:
            if not isinstance(leaf, RLeaf):  # pragma: no cover
                continue
            self._learn_leaf(leaf, M[idx], y[idx], sw[idx])
            if leaf.active and leaf.n - leaf.last >= self.grace_period:
                self._attempt_split(leaf)

    def _learn_leaf(self, leaf: RLeaf, M: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        d = M.shape[1]
        if len(leaf.w) < d:
            leaf.w = np.concatenate([leaf.w, np.zeros(d - len(leaf.w))])
        Z = self._z(M)
        if leaf.n > 0:  # faded errors of both predictors, before learning (prequential)
            em = float(np.abs(y - leaf.mean).mean())
            eo = float(np.abs(y - self._model_predict(leaf, None, Z)).mean())
            f = _FADE ** len(y)
            leaf.err_mean = f * leaf.err_mean + (1 - f) * em
            leaf.err_model = f * leaf.err_model + (1 - f) * eo
            # normalised LMS on the residual from the leaf mean (mean of per-record steps)
            r = y - (leaf.mean + Z[:, : len(leaf.w)] @ leaf.w[:d])
            step = (w * r / (1.0 + (Z * Z).sum(axis=1)))[:, None] * Z
            leaf.w[:d] += self.model_lr * step.mean(axis=0)
        W = float(w.sum())
        if W > 0:
            mb = float(w @ y) / W
            m2b = float(w @ (y - mb) ** 2)
            tot = leaf.n + W
            delta = mb - leaf.mean
            leaf.m2 += m2b + delta * delta * leaf.n * W / tot
            leaf.mean += delta * W / tot
            leaf.n = tot
        leaf.lo = min(leaf.lo, float(y.min()))
        leaf.hi = max(leaf.hi, float(y.max()))
        self._reservoir(leaf, M, y, w)

    def _reservoir(self, leaf: RLeaf, M: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        cap = self.max_leaf_samples
        d = M.shape[1]
        if leaf.bx.shape[1] < d:
            pad = np.full((leaf.bx.shape[0], d - leaf.bx.shape[1]), math.nan)
            leaf.bx = np.concatenate([leaf.bx, pad], axis=1)
        m = len(y)
        room = min(cap - leaf.fill, m)
        if room > 0:
            need = leaf.fill + room
            if leaf.bx.shape[0] < need:
                size = min(cap, max(need, 2 * leaf.bx.shape[0], 16))
                bx = np.full((size, leaf.bx.shape[1]), math.nan)
                bx[: leaf.fill] = leaf.bx[: leaf.fill]
                by, bw = np.zeros(size), np.zeros(size)
                by[: leaf.fill], bw[: leaf.fill] = leaf.by[: leaf.fill], leaf.bw[: leaf.fill]
                leaf.bx, leaf.by, leaf.bw = bx, by, bw
            leaf.bx[leaf.fill : need, :d] = M[:room]
            leaf.by[leaf.fill : need] = y[:room]
            leaf.bw[leaf.fill : need] = w[:room]
            leaf.fill = need
        rest = m - room
        if rest > 0:
            seen = leaf.seen + room + np.arange(1, rest + 1)
            j = (self._rng.random(rest) * seen).astype(np.int64)
            keep = j < cap
            src = np.arange(room, m)[keep]
            leaf.bx[j[keep], :d] = M[src]
            leaf.by[j[keep]] = y[src]
            leaf.bw[j[keep]] = w[src]
        leaf.seen += m

    # -- splitting ------------------------------------------------------------------------------
    def _attempt_split(self, leaf: RLeaf) -> None:
        leaf.last = leaf.n
        if leaf.n < self.min_samples_split or leaf.fill < 2 or leaf.m2 <= 0:
            return
        cands = self._candidates(leaf)
        if not cands:
            return
        cands.sort(key=lambda c: c[0], reverse=True)
        best = cands[0]
        if best[0] <= 0:
            return
        second = max(cands[1][0], 0.0) if len(cands) > 1 else 0.0
        eps = hoeffding_bound(1.0, self.delta, leaf.n)
        if second / best[0] < 1 - eps or eps < self.tau:
            self._split(leaf, best)

    def _candidates(self, leaf: RLeaf) -> list[tuple[float, Any]]:
        B = leaf.fill
        X, y, w = leaf.bx[:B], leaf.by[:B], leaf.bw[:B]
        d = X.shape[1]
        out: list[tuple[float, Any]] = []
        nominal = np.asarray(self._nominal[:d], dtype=bool)
        num_cols = np.flatnonzero(~nominal)
        if len(num_cols):
            V = X[:, num_cols]
            order = np.argsort(V, axis=0, kind="stable")  # NaN last
            Vs = np.take_along_axis(V, order, axis=0)
            valid = ~np.isnan(Vs)
            ws = np.where(valid, w[order], 0.0)
            ys = y[order]
            cw = np.cumsum(ws, axis=0)
            cy = np.cumsum(ws * ys, axis=0)
            cy2 = np.cumsum(ws * ys * ys, axis=0)
            tw, ty, ty2 = cw[-1], cy[-1], cy2[-1]
            sse_tot = ty2 - ty * ty / np.where(tw > 0, tw, 1.0)
            rw, ry, ry2 = tw - cw, ty - cy, ty2 - cy2
            with np.errstate(divide="ignore", invalid="ignore"):
                sse_l = cy2 - cy * cy / cw
                sse_r = ry2 - ry * ry / rw
                vr = 1.0 - (sse_l + sse_r) / sse_tot
            nxt = np.vstack([Vs[1:], np.full((1, len(num_cols)), np.nan)])
            okp = valid & ~np.isnan(nxt) & (nxt > Vs)
            frac_l = cw / np.where(tw > 0, tw, 1.0)
            okp &= (frac_l >= 0.01) & (frac_l <= 0.99) & (sse_tot > 0)
            vr = np.where(okp, vr, -np.inf)
            for j, f in enumerate(num_cols.tolist()):
                i = int(np.argmax(vr[:, j]))
                if np.isfinite(vr[i, j]):
                    thr = 0.5 * (Vs[i, j] + Vs[i + 1, j])
                    out.append((float(vr[i, j]), ("num", f, thr)))
        for f in np.flatnonzero(nominal).tolist():
            codes = X[:, f]
            ok = ~np.isnan(codes) & (codes >= 0)
            if ok.sum() < 2:
                continue
            cc = codes[ok].astype(np.int64)
            ww, yy = w[ok], y[ok]
            sw = np.bincount(cc, ww)
            sy = np.bincount(cc, ww * yy)
            sy2 = np.bincount(cc, ww * yy * yy)
            if (sw / sw.sum() >= 0.01).sum() < 2:
                continue
            tot = sy2.sum() - sy.sum() ** 2 / sw.sum()
            if tot <= 0:
                continue
            within = (sy2 - np.where(sw > 0, sy * sy / np.where(sw > 0, sw, 1.0), 0.0)).sum()
            out.append((float(1.0 - within / tot), ("nom", f, sorted(set(cc.tolist())))))
        return out

    def _child(self, parent: RLeaf, sel: np.ndarray) -> RLeaf:
        leaf = self._new_leaf(None, parent.depth + 1)
        leaf.w = parent.w.copy()
        leaf.err_mean, leaf.err_model = parent.err_mean, parent.err_model
        B = parent.fill
        y, w = parent.by[:B][sel], parent.bw[:B][sel]
        W = float(w.sum())
        if W > 0:
            # start from the parent's statistics for this branch, scaled to its share
            share = W / max(float(parent.bw[:B].sum()), 1e-300)
            leaf.n = share * parent.n
            leaf.mean = float(w @ y) / W
            leaf.m2 = share * parent.n * float(w @ (y - leaf.mean) ** 2) / W
            leaf.lo, leaf.hi = float(y.min()), float(y.max())
        leaf.last = leaf.n
        return leaf

    def _split(self, leaf: RLeaf, best: tuple[float, Any]) -> None:
        B = leaf.fill
        kind, f = best[1][0], best[1][1]
        col = leaf.bx[:B, f]
        if kind == "num":
            thr = best[1][2]
            left = col <= thr
            miss = np.isnan(col)
            wl = float(leaf.bw[:B][left].sum())
            wr = float(leaf.bw[:B][~left & ~miss].sum())
            children: Any = [self._child(leaf, left), self._child(leaf, ~left & ~miss)]
            node = Split(f, thr, children, False, [leaf.mean], leaf.depth, wl, wr)
        else:
            children = {c: self._child(leaf, col == c) for c in best[1][2]}
            node = Split(f, math.nan, children, True, [leaf.mean], leaf.depth)
        self._replace(leaf, node)

    def _replace(self, old: Any, new: Any) -> None:
        if self._root is old:
            self._root = new
            return
        stack = [self._root]
        while stack:
            node = stack.pop()
            if not isinstance(node, Split):
                continue
            items = node.children.items() if node.nominal else enumerate(node.children)
            for key, ch in list(items):
                if ch is old:
                    node.children[key] = new
                    return
                stack.append(ch)

    # -- state ----------------------------------------------------------------------------------
    def _leaf_state(self, leaf: RLeaf) -> dict[str, Any]:
        return {
            "depth": leaf.depth,
            "n": leaf.n,
            "mean": leaf.mean,
            "m2": leaf.m2,
            "lo": leaf.lo,
            "hi": leaf.hi,
            "bx": leaf.bx[: leaf.fill].copy(),
            "by": leaf.by[: leaf.fill].copy(),
            "bw": leaf.bw[: leaf.fill].copy(),
            "fill": leaf.fill,
            "seen": leaf.seen,
            "w": leaf.w.copy(),
            "err_mean": leaf.err_mean,
            "err_model": leaf.err_model,
            "last": leaf.last,
            "active": leaf.active,
        }

    def _leaf_from_state(self, s: dict[str, Any]) -> RLeaf:
        leaf = RLeaf(int(s["depth"]), 0)
        for k in ("n", "mean", "m2", "lo", "hi", "err_mean", "err_model", "last"):
            setattr(leaf, k, float(s[k]))
        fill = int(s["fill"])
        bx = np.asarray(s["bx"], dtype=float)
        leaf.bx = bx.reshape(fill, -1) if fill else np.zeros((0, 0))
        leaf.by = np.asarray(s["by"], dtype=float)
        leaf.bw = np.asarray(s["bw"], dtype=float)
        leaf.fill, leaf.seen = int(s["fill"]), int(s["seen"])
        leaf.w = np.asarray(s["w"], dtype=float)
        leaf.active = bool(s["active"])
        return leaf

    def _get_state(self) -> dict[str, Any]:
        return {**self._base_state(), "sn": self._sn, "smean": self._smean, "sm2": self._sm2}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._zc = None
        self._set_base_state(state)
        self._sn = np.asarray(state["sn"], dtype=float)
        self._smean = np.asarray(state["smean"], dtype=float)
        self._sm2 = np.asarray(state["sm2"], dtype=float)
