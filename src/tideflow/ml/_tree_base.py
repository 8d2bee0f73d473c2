"""Shared machinery of the Hoeffding trees: feature encoding, routing, node (de)serialisation.

Features are numeric (float, NaN when missing) or nominal (strings, or names listed in
``nominal_attributes``); nominal values are coded as integers per feature so one float matrix
carries both kinds. Numeric splits are binary (``x <= threshold`` goes left); nominal splits are
multiway, one child per value.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NamedTuple

import numpy as np

from tideflow.ml._base import Estimator
from tideflow.ml._data import Cols, FeatureSpace, as_cols

#: A routed group of rows: ``(node, rows, holder, key)``, see ``TreeBase._route_paths``.
Route = tuple[Any, np.ndarray, Any, Any]


class Flat(NamedTuple):
    """A tree as arrays (see ``TreeBase._flat``)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    nan_left: np.ndarray
    nodes: list[Any]


def hoeffding_bound(value_range: float, delta: float, n: float) -> float:
    """Hoeffding bound: with probability ``1 - delta`` the true mean is within this of the
    observed mean of ``n`` samples of a variable with range ``value_range``."""
    return math.sqrt(value_range * value_range * math.log(1.0 / delta) / (2.0 * n))


class Split:
    """An inner node. Numeric: ``children = [left, right]``; nominal: ``children`` a dict."""

    __slots__ = ("children", "depth", "dist", "ext", "feature", "nominal", "threshold", "wl", "wr")

    def __init__(
        self,
        feature: int,
        threshold: float,
        children: Any,
        nominal: bool,
        dist: Any,
        depth: int,
        wl: float = 0.0,
        wr: float = 0.0,
    ) -> None:
        self.feature = feature
        self.threshold = threshold
        self.children = children
        self.nominal = nominal
        self.dist = dist
        self.depth = depth
        self.wl = wl
        self.wr = wr
        self.ext: Any = None

    def child_of(self, v: float) -> Any:
        """The child for value ``v`` (``None`` for an unseen nominal value)."""
        if self.nominal:
            if v != v:
                return max(self.children.values(), key=_weight)
            return self.children.get(int(v))
        if v != v:
            return self.children[0] if self.wl >= self.wr else self.children[1]
        return self.children[0] if v <= self.threshold else self.children[1]

    def iter_children(self) -> Iterator[Any]:
        return iter(self.children.values() if self.nominal else self.children)


def _weight(node: Any) -> float:
    d = getattr(node, "dist", None)
    if d is None:
        return 0.0
    return float(np.sum(d)) if isinstance(d, np.ndarray) else float(d[0]) if d else 0.0


class TreeBase(Estimator):
    """Feature encoding, routing and serialisation shared by the Hoeffding trees."""

    nominal_attributes: list[Hashable] | None

    def _init_base(self) -> None:
        self._fs = FeatureSpace()
        self._nominal: list[bool] = []
        self._vocab: list[dict[Any, int]] = []
        self._root: Any = None
        self._rng = np.random.default_rng(getattr(self, "seed", None))
        self._version = 0  # bumped by every change of the tree's shape (see _flat)
        self._flat_cache: Any = None

    # -- features -----------------------------------------------------------------------------
    def _add_feature(self, name: Hashable, nominal: bool) -> int:
        i = self._fs.add(name)
        while len(self._nominal) < len(self._fs):
            self._nominal.append(False)
            self._vocab.append({})
        if nominal or (self.nominal_attributes is not None and name in self.nominal_attributes):
            self._nominal[i] = True
        return i

    def _code(self, i: int, v: Any, grow: bool) -> float:
        voc = self._vocab[i]
        c = voc.get(v)
        if c is None:
            if not grow:
                return math.nan if v is None else -1.0
            c = voc[v] = len(voc)
        return float(c)

    def _row(self, x: dict[Hashable, Any], grow: bool) -> np.ndarray:
        """One record as a float vector (NaN for missing, codes for nominal values)."""
        if tuple(x) == self._fs._order and True not in self._nominal:
            # the tree's features in its order, all numeric: one C-level conversion (None
            # becomes NaN, as below; a value that is not a number takes the loop below)
            try:
                return np.fromiter(x.values(), np.float64, len(x))
            except (TypeError, ValueError):
                pass
        index = self._fs.index
        if grow:
            for k, v in x.items():
                if k not in index:
                    self._add_feature(k, isinstance(v, (str, bool)) and not isinstance(v, float))
        row = np.full(len(self._fs), math.nan)
        nominal = self._nominal
        for k, v in x.items():
            i = index.get(k)
            if i is None or v is None:
                continue
            if nominal[i]:
                row[i] = self._code(i, v, grow)
            else:
                try:
                    row[i] = v
                except (TypeError, ValueError):
                    row[i] = math.nan
        return row

    def _matrix(self, X: Any, grow: bool) -> np.ndarray:
        Xc: Cols = as_cols(X)
        if grow:
            for k, c in zip(Xc.names, Xc.cols, strict=True):
                if Xc.positional:
                    break
                if k not in self._fs.index:
                    self._add_feature(k, c.dtype.kind == "O")
        idx = self._fs.columns(Xc, grow=grow)
        if grow:
            while len(self._nominal) < len(self._fs):
                self._nominal.append(False)
                self._vocab.append({})
        d = len(self._fs)
        if all(c.dtype.kind != "O" for c in Xc.cols) and not any(
            self._nominal[i] for i in idx if i >= 0
        ):
            if len(idx) == d and idx == list(range(d)):
                return Xc.matrix("tree")
            out = np.full((Xc.n, d), math.nan)
            keep = [j for j, i in enumerate(idx) if i >= 0]
            if keep:
                out[:, [idx[j] for j in keep]] = Xc.matrix("tree")[:, keep]
            return out
        out = np.full((Xc.n, d), math.nan)
        for j, i in enumerate(idx):
            if i < 0:
                continue
            c = Xc.cols[j]
            if self._nominal[i]:
                vals = c.tolist()
                uniq = {v: self._code(i, v, grow) for v in dict.fromkeys(vals) if v is not None}
                out[:, i] = [uniq.get(v, math.nan) if v is not None else math.nan for v in vals]
            else:
                out[:, i] = c.astype(np.float64) if c.dtype.kind != "O" else _to_float(c)
        return out

    # -- routing ------------------------------------------------------------------------------
    def _leaf_of(self, row: np.ndarray, grow: bool = False) -> tuple[Any, Any]:
        """The leaf for ``row`` and its parent; an unseen nominal value stops at the split."""
        node, parent = self._root, None
        while isinstance(node, Split):
            v = row[node.feature] if node.feature < len(row) else math.nan
            child = node.child_of(v)
            if child is None:
                if not grow or v < 0:
                    return node, parent
                child = node.children[int(v)] = self._new_leaf(None, node.depth + 1)
            parent, node = node, child
        return node, parent

    def _route(
        self,
        M: np.ndarray,
        grow: bool = False,
        *,
        start: Any = None,
        rows: np.ndarray | None = None,
        visit: Callable[[Any, np.ndarray], None] | None = None,
    ) -> list[tuple[Any, np.ndarray]]:
        """Rows of ``M`` grouped by the node they end in (a leaf, or a split for unseen values).

        ``start`` and ``rows``: route only those rows from that node (default: all, from the
        root); ``visit(node, rows)`` is called for every split node passed.
        """
        splits, ends = self._route_paths(M, grow, start=start, rows=rows)
        if visit is not None:
            for node, idx, _, _ in splits:
                visit(node, idx)
        return [(node, idx) for node, idx, _, _ in ends]

    def _route_paths(
        self,
        M: np.ndarray,
        grow: bool = False,
        *,
        start: Any = None,
        rows: np.ndarray | None = None,
        holder: Any = None,
        key: Any = None,
    ) -> tuple[list[Route], list[Route]]:
        """:meth:`_route` with the split nodes passed: ``(splits, ends)``, each a list of
        ``(node, rows, holder, key)`` (``holder.children[key]`` is the node; ``holder`` and
        ``key`` for ``start`` as given). A split comes before the nodes below it."""
        splits: list[Route] = []
        ends: list[Route] = []
        first = self._root if start is None else start
        stack = [(first, np.arange(M.shape[0]) if rows is None else rows, holder, key)]
        while stack:
            node, idx, hold, kk = stack.pop()
            if not len(idx):
                continue
            if not isinstance(node, Split):
                ends.append((node, idx, hold, kk))
                continue
            splits.append((node, idx, hold, kk))
            v = M[idx, node.feature] if node.feature < M.shape[1] else np.full(len(idx), math.nan)
            miss = np.isnan(v)
            if node.nominal:
                codes = np.where(miss, -2, v).astype(np.int64)
                if miss.any():
                    best = max(node.children, key=lambda c: _weight(node.children[c]))
                    codes[miss] = best
                for c in np.unique(codes).tolist():
                    sel = idx[codes == c]
                    child = node.children.get(c)
                    if child is None and grow and c >= 0:
                        child = node.children[c] = self._new_leaf(None, node.depth + 1)
                    if child is None:
                        ends.append((node, sel, hold, kk))
                    else:
                        stack.append((child, sel, node, c))
            else:
                left = v <= node.threshold
                if miss.any():
                    left = np.where(miss, node.wl >= node.wr, left)
                stack.append((node.children[0], idx[left], node, 0))
                stack.append((node.children[1], idx[~left], node, 1))
        return splits, ends

    def _flat(self) -> Flat | None:
        """The tree as arrays for vectorized routing (``None`` with nominal splits).

        Node ``i`` tests ``feature[i]`` (``-1``: a leaf) against ``threshold[i]`` and goes to
        ``left[i]`` or ``right[i]`` (a missing value to ``left`` where ``nan_left[i]``);
        ``nodes[i]`` is the node object. Rebuilt when the tree's shape changed.
        """
        key = (self._version, id(self._root))
        cached = self._flat_cache
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        nodes: list[Any] = [self._root]
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        nan_left: list[bool] = []
        flat: Flat | None = None
        i = 0
        while i < len(nodes):
            node = nodes[i]
            if isinstance(node, Split):
                if node.nominal:
                    break
                feature.append(node.feature)
                threshold.append(node.threshold)
                nan_left.append(node.wl >= node.wr)
                left.append(len(nodes))
                right.append(len(nodes) + 1)
                nodes.extend(node.children)
            else:
                feature.append(-1)
                threshold.append(0.0)
                nan_left.append(True)
                left.append(i)
                right.append(i)
            i += 1
        else:
            flat = Flat(
                np.asarray(feature, dtype=np.int64),
                np.asarray(threshold, dtype=float),
                np.asarray(left, dtype=np.int64),
                np.asarray(right, dtype=np.int64),
                np.asarray(nan_left, dtype=bool),
                nodes,
            )
        self._flat_cache = (key, flat)
        return flat

    def _new_leaf(self, dist: Any, depth: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _leaves(self) -> Iterator[Any]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            if isinstance(node, Split):
                stack.extend(node.iter_children())
            elif node is not None:
                yield node

    @property
    def n_nodes(self) -> int:
        n, stack = 0, [self._root]
        while stack:
            node = stack.pop()
            if node is None:
                continue
            n += 1
            if isinstance(node, Split):
                stack.extend(node.iter_children())
        return n

    @property
    def n_leaves(self) -> int:
        return sum(1 for _ in self._leaves())

    @property
    def height(self) -> int:
        return max((leaf.depth for leaf in self._leaves()), default=0)

    # -- state --------------------------------------------------------------------------------
    def _leaf_state(self, leaf: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _leaf_from_state(self, s: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _node_state(self, node: Any) -> Any:
        if node is None:
            return None
        if isinstance(node, Split):
            ch = (
                {
                    "codes": list(node.children),
                    "nodes": [self._node_state(c) for c in node.children.values()],
                }
                if node.nominal
                else [self._node_state(c) for c in node.children]
            )
            return {
                "split": True,
                "feature": node.feature,
                "threshold": node.threshold,
                "nominal": node.nominal,
                "dist": _plain(node.dist),
                "depth": node.depth,
                "wl": node.wl,
                "wr": node.wr,
                "children": ch,
            }
        return {"split": False, **self._leaf_state(node)}

    def _node_from_state(self, s: Any) -> Any:
        if s is None:
            return None
        if not s["split"]:
            return self._leaf_from_state(s)
        if s["nominal"]:
            ch: Any = {
                int(c): self._node_from_state(n)
                for c, n in zip(s["children"]["codes"], s["children"]["nodes"], strict=True)
            }
        else:
            ch = [self._node_from_state(n) for n in s["children"]]
        dist = s["dist"]
        return Split(
            int(s["feature"]),
            float(s["threshold"]),
            ch,
            bool(s["nominal"]),
            np.asarray(dist, dtype=float) if isinstance(dist, (list, np.ndarray)) else dist,
            int(s["depth"]),
            float(s["wl"]),
            float(s["wr"]),
        )

    def _base_state(self) -> dict[str, Any]:
        return {
            "features": self._fs.to_state(),
            "nominal": list(self._nominal),
            "vocab": [[[v, c] for v, c in voc.items()] for voc in self._vocab],
            "rng": _rng_state(self._rng),
            "root": self._node_state(self._root),
        }

    def _set_base_state(self, state: dict[str, Any]) -> None:
        self._fs = FeatureSpace(state["features"])
        self._nominal = [bool(b) for b in state["nominal"]]
        self._vocab = [{v: int(c) for v, c in voc} for voc in state["vocab"]]
        self._rng = _rng_from_state(state["rng"])
        self._root = self._node_from_state(state["root"])
        self._version += 1


def _plain(v: Any) -> Any:
    return v.copy() if isinstance(v, np.ndarray) else v


def _to_float(c: np.ndarray) -> np.ndarray:
    out = np.full(len(c), math.nan)
    for i, v in enumerate(c.tolist()):
        with contextlib.suppress(TypeError, ValueError):
            out[i] = float(v)
    return out


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": str(st["state"]["state"]),
        "inc": str(st["state"]["inc"]),
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def _rng_from_state(s: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = {
        "bit_generator": s["bit_generator"],
        "state": {"state": int(s["state"]), "inc": int(s["inc"])},
        "has_uint32": int(s["has_uint32"]),
        "uinteger": int(s["uinteger"]),
    }
    return rng


rng_state = _rng_state
rng_from_state = _rng_from_state
