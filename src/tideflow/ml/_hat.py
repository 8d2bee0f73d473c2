"""Hoeffding adaptive tree classifier (HAT-ADWIN; Bifet and Gavalda, 2009).

Every node keeps an ADWIN over the 0/1 error of the predictions made for the records that pass
through it. When a split node's error rises significantly, an alternate subtree starts growing
there from the same records; once both have seen ``drift_window_threshold`` records, the
alternate replaces the original branch if its error is lower by more than a bound at
``switch_significance``, or is dropped if it is worse by more than that bound.

``learn_many`` works in chunks of ``grace_period`` rows: each chunk is routed once, its leaves'
predictions (from their statistics at the start of the chunk) give the 0/1 errors, each node's
ADWIN takes its rows' errors in order in one call, and leaves merge their rows vectorized (see
``_hat_chunk``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from tideflow.ml._base import from_snapshot
from tideflow.ml._data import plain_label
from tideflow.ml._drift import ADWIN
from tideflow.ml._tree import CLeaf, HoeffdingTreeClassifier, LeafPrediction
from tideflow.ml._tree_base import Split
from tideflow.ml._tree_stack import stacked_proba

__all__ = ["HoeffdingAdaptiveTreeClassifier"]


class HoeffdingAdaptiveTreeClassifier(HoeffdingTreeClassifier):
    """Hoeffding tree that replaces branches whose error drifts (HAT with ADWIN).

    Parameters are those of :class:`HoeffdingTreeClassifier` plus:

    drift_window_threshold
        Records both the branch and its alternate must have seen before they are compared.
    switch_significance
        Significance of the comparison that swaps in (or drops) an alternate branch.
    adwin_delta
        ``delta`` of each node's ADWIN.
    bootstrap_sampling
        Multiply each record's weight at the leaf by a Poisson(1) draw when it is positive
        (River's default behaviour).
    max_share_to_split
        See :class:`HoeffdingTreeClassifier`.

    Examples
    --------
    >>> from tideflow.ml.datasets import synth
    >>> from tideflow.ml.metrics import Accuracy
    >>> stream = synth.ConceptDriftStream(
    ...     synth.SEA(variant=0, seed=1), synth.SEA(variant=2, seed=2), position=2000, width=50)
    >>> model, acc = HoeffdingAdaptiveTreeClassifier(seed=1), Accuracy()
    >>> for x, y in stream.take(4000):
    ...     acc.update(y, model.predict_one(x))
    ...     model.learn_one(x, y)
    >>> acc.get() > 0.85
    True
    """

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
        drift_window_threshold: int = 300,
        switch_significance: float = 0.05,
        adwin_delta: float = 0.002,
        bootstrap_sampling: bool = True,
        seed: int | None = None,
        max_share_to_split: float = 0.99,
    ) -> None:
        super().__init__(
            grace_period,
            max_depth,
            delta,
            tau,
            leaf_prediction,
            nb_threshold,
            nominal_attributes,
            n_splits,
            min_branch_fraction,
            None,
            seed,
            max_share_to_split=max_share_to_split,
        )
        self.drift_window_threshold = drift_window_threshold
        self.switch_significance = switch_significance
        self.adwin_delta = adwin_delta
        self.bootstrap_sampling = bootstrap_sampling
        self.n_switches = 0

    def _ext(self, node: Any) -> dict[str, Any]:
        if node.ext is None:
            node.ext = {"adwin": ADWIN(delta=self.adwin_delta), "alt": None}
        return node.ext  # type: ignore[no-any-return]

    # -- prediction ---------------------------------------------------------------------------
    # A record reaches one leaf of the main tree and, below every split on its path that grows
    # an alternate branch, a leaf of that branch too. As in the published HAT (and MOA), the
    # prediction is the sum of those leaves' class distributions, each weighted by
    # 1 / error^2 with its node's current error estimate: while an alternate branch learns
    # a new concept, it already votes, with more weight as it becomes more accurate than the
    # branch it may replace.
    def _vote_weight(self, node: Any) -> float:
        ext = node.ext
        if ext is None:
            return 1.0
        e = float(ext["adwin"].estimation)
        return 1.0 / (e * e) if e > 0.0 else 1.0  # no error seen (yet): an unscaled vote

    def _path_with_alternates(self, start: Any, row: np.ndarray, out: list[Any]) -> Any:
        """Append the alternate branches' leaves for ``row`` below ``start``; return the leaf."""
        node = start
        while isinstance(node, Split):
            if node.ext is not None and node.ext["alt"] is not None:
                alt_leaf = self._path_with_alternates(node.ext["alt"], row, out)
                out.append(alt_leaf)
            v = row[node.feature] if node.feature < len(row) else math.nan
            child = node.child_of(v)
            if child is None:
                break
            node = child
        return node

    def _proba_row(self, row: np.ndarray) -> np.ndarray:
        alts: list[Any] = []
        leaf = self._path_with_alternates(self._root, row, alts)
        if not alts:
            return super()._proba_row(row)
        k = len(self._ls)
        total = np.zeros(k)
        for node in [*alts, leaf]:  # the main leaf last: it keeps the naive Bayes memo
            P = self._proba_leaf_row(node, row)
            total[: len(P)] += P * self._vote_weight(node)
        s = total.sum()
        return total / s if s > 0 else np.full(k, 1.0 / max(k, 1))

    def _proba_matrix(self, M: np.ndarray) -> np.ndarray:
        k = len(self._ls)
        out = np.zeros((M.shape[0], k))
        if k:
            groups: list[tuple[Any, np.ndarray]] = []
            self._vote_groups(self._root, M, np.arange(M.shape[0]), groups)
            for (node, idx), P in zip(groups, stacked_proba(self, groups, M), strict=True):
                out[idx] += P * self._vote_weight(node)
            s = out.sum(axis=1, keepdims=True)
            out = np.where(s > 0, out / np.where(s > 0, s, 1.0), 1.0 / k)
        return out

    def _vote_groups(
        self, start: Any, M: np.ndarray, rows: np.ndarray, out: list[tuple[Any, np.ndarray]]
    ) -> None:
        """The voting nodes and their rows: main leaves and alternate branches' leaves."""
        splits, ends = self._route_paths(M, start=start, rows=rows)
        out.extend((node, idx) for node, idx, _, _ in ends)
        for node, idx, _, _ in splits:
            if node.ext is not None and node.ext["alt"] is not None:
                self._vote_groups(node.ext["alt"], M, idx, out)

    # -- learning -----------------------------------------------------------------------------
    def learn_one(self, x: dict[Hashable, Any], y: Any, w: float = 1.0) -> None:
        """Update the tree (and any alternate branches) with one record."""
        c = self._ls.add(plain_label(y))
        self._learn_row(self._row(x, grow=True), c, float(w))

    # The mini-batch path works through the batch in chunks of ``grace_period`` rows (the
    # plain tree's ``_learn_matrix``). A chunk is routed through the tree once; each reached
    # leaf predicts its rows with its statistics from the start of the chunk (the 0/1 errors
    # that drive the ADWINs), every node's ADWIN takes the errors of its rows in row order in
    # one call (the same detections as value by value), a split node whose ADWIN detects a rise
    # starts its alternate there and the alternate learns the node's rows from that position
    # on (recursively, the same chunk step), the switch test runs once per node and chunk, and
    # each leaf merges its rows (bootstrap weights drawn per row) and then attempts a split.
    def _learn_chunk(self, M: np.ndarray, yi: np.ndarray, sw: np.ndarray) -> None:
        self._hat_chunk(self._root, M, np.arange(M.shape[0]), yi, sw, None, None)

    def _hat_chunk(
        self,
        start: Any,
        M: np.ndarray,
        rows: np.ndarray,
        yi: np.ndarray,
        sw: np.ndarray,
        holder: Any,
        key: Any,
    ) -> None:
        splits, ends = self._route_paths(
            M, grow=True, start=start, rows=rows, holder=holder, key=key
        )
        err = np.ones(M.shape[0])
        if len(self._ls):
            groups = [(node, idx) for node, idx, _, _ in ends]
            for (_, idx), P in zip(groups, stacked_proba(self, groups, M), strict=True):
                err[idx] = P.argmax(axis=1) != yi[idx]
        gone: set[int] = set()  # split nodes replaced by their alternate in this chunk
        for node, idx, hold, kk in splits:
            if id(hold) in gone:
                gone.add(id(node))
                continue
            ext = self._ext(node)
            hits, rises = ext["adwin"]._feed(err[idx].tolist())
            at = 0
            if ext["alt"] is None:
                at = next((h for h, r in zip(hits, rises, strict=True) if r), -1)
                if at >= 0:
                    ext["alt"] = self._new_leaf(None, node.depth)
            if ext["alt"] is not None:
                self._hat_chunk(ext["alt"], M, idx[at:], yi, sw, node, "alt")
                if self._maybe_switch(node, hold, kk):
                    gone.add(id(node))
        learn: list[tuple[CLeaf, np.ndarray, np.ndarray]] = []
        for node, idx, hold, _ in ends:
            if id(hold) in gone or (isinstance(node, Split) and id(node) in gone):
                continue
            self._ext(node)["adwin"]._feed(err[idx].tolist())
            if not isinstance(node, CLeaf):
                continue
            w = sw[idx]
            if self.bootstrap_sampling:  # as River: weight times Poisson(1) when that is > 0
                kp = self._rng.poisson(1.0, len(idx))
                w = np.where(kp > 0, w * kp, w)
            learn.append((node, idx, w))
        self._learn_leaves(learn, M, yi)

    def _learn_row(self, row: np.ndarray, c: int, w: float) -> None:
        self._hat_learn(self._root, row, c, w, None, None)

    def _hat_learn(
        self, node: Any, row: np.ndarray, c: int, w: float, holder: Any, key: Any
    ) -> None:
        path: list[tuple[Any, Any, Any]] = []
        cur, hold, k = node, holder, key
        while isinstance(cur, Split):
            path.append((cur, hold, k))
            v = row[cur.feature] if cur.feature < len(row) else math.nan
            child = cur.child_of(v)
            if cur.nominal:
                if child is None:
                    if v != v or v < 0:
                        break
                    child = cur.children[int(v)] = self._new_leaf(None, cur.depth + 1)
                nk = next(code for code, ch in cur.children.items() if ch is child)
            else:
                nk = 0 if child is cur.children[0] else 1
            hold, k, cur = cur, nk, child
        leaf = cur
        P = self._proba_leaf_row(leaf, row)
        err = 0.0 if len(P) and int(P.argmax()) == c else 1.0
        for n, n_hold, n_key in [*path, (leaf, hold, k)]:
            ext = self._ext(n)
            ad: ADWIN = ext["adwin"]
            before = ad.estimation
            ad.update(err)
            if not isinstance(n, Split):
                continue
            if ad.drift_detected and ad.estimation > before and ext["alt"] is None:
                ext["alt"] = self._new_leaf(None, n.depth)
            if ext["alt"] is not None:
                self._hat_learn(ext["alt"], row, c, w, n, "alt")
                if self._maybe_switch(n, n_hold, n_key):
                    return
        if isinstance(leaf, CLeaf):
            if self.bootstrap_sampling:  # as River: weight times Poisson(1) when that is > 0
                k = int(self._rng.poisson(1.0))
                if k > 0:
                    w *= k
            self._learn_leaf_one(leaf, row, c, w)
            if leaf.active and leaf.weight - leaf.last >= self.grace_period:
                self._attempt_split(leaf)

    def _maybe_switch(self, node: Split, holder: Any, key: Any) -> bool:
        ext = node.ext
        alt = ext["alt"]
        ad, alt_ad = ext["adwin"], self._ext(alt)["adwin"]
        thr = self.drift_window_threshold
        if alt_ad.width <= thr or ad.width <= thr:
            return False
        old_err, alt_err = ad.estimation, alt_ad.estimation
        fn = 1.0 / alt_ad.width + 1.0 / ad.width
        bound = math.sqrt(
            2.0 * old_err * (1.0 - old_err) * math.log(2.0 / self.switch_significance) * fn
        )
        if bound < old_err - alt_err:
            self._set_child(holder, key, alt, node)
            self.n_switches += 1
            return True
        if bound < alt_err - old_err:
            ext["alt"] = None
        return False

    def _set_child(self, holder: Any, key: Any, new: Any, old: Any) -> None:
        self._version += 1
        if holder is None:
            if self._root is old:
                self._root = new
        elif key == "alt":
            holder.ext["alt"] = new
        else:
            holder.children[key] = new

    def _replace(self, old: Any, new: Any) -> None:
        stack: list[tuple[Any, Any, Any]] = [(None, None, self._root)]
        while stack:
            holder, key, node = stack.pop()
            if node is old:
                self._set_child(holder, key, new, old)
                if node.ext is not None:
                    new.ext = dict(node.ext)
                return
            if node is None:
                continue
            if node.ext is not None and node.ext["alt"] is not None:
                stack.append((node, "alt", node.ext["alt"]))
            if isinstance(node, Split):
                items = node.children.items() if node.nominal else enumerate(node.children)
                stack.extend((node, kk, ch) for kk, ch in items)

    # -- state ----------------------------------------------------------------------------------
    def _node_state(self, node: Any) -> Any:
        s = super()._node_state(node)
        if node is not None and node.ext is not None:
            s["ext"] = {
                "adwin": node.ext["adwin"].snapshot(),
                "alt": self._node_state(node.ext["alt"]),
            }
        return s

    def _node_from_state(self, s: Any) -> Any:
        node = super()._node_from_state(s)
        if s is not None and s.get("ext") is not None:
            node.ext = {
                "adwin": from_snapshot(s["ext"]["adwin"]),
                "alt": self._node_from_state(s["ext"]["alt"]),
            }
        return node

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "n_switches": self.n_switches}

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self.n_switches = int(state["n_switches"])
