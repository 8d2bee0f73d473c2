"""Time-to-live for keyed state: keys not seen for ``ttl`` (processing time) are forgotten.

The keyed operators with a ``ttl`` keep, per key, when it was last touched (a NumPy array by
key id for the columnar states, a dict for ``stateful_map``). A sweep drops every expired key at
once (a vectorized mask and a compaction of the ids), so unbounded key spaces stay bounded in
memory. It runs from ``on_tick`` and before a batch whenever a key may have expired, so a key
that comes back after its TTL always starts fresh. The run clock (``ctx.now()``) is the time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from tideflow.api._graph import Node
from tideflow.runtime._operators import (
    AggOperator,
    OpContext,
    Operator,
    StatefulMapOperator,
    TransformOperator,
)

__all__ = ["build_ttl_operator"]


class _Expiry:
    """Last-touch times by key id, and the test for a sweep."""

    def __init__(self, ttl_s: float, now: float) -> None:
        self.ttl = ttl_s
        self.seen = np.zeros(0, dtype=np.float64)
        #: A lower bound of the oldest touch time: no key can be expired before oldest + ttl.
        self.oldest = now
        self.expired_total = 0

    def touch(self, ids: np.ndarray, n: int, now: float) -> None:
        if n > len(self.seen):
            grown = np.full(max(n, 2 * len(self.seen), 64), now, dtype=np.float64)
            grown[: len(self.seen)] = self.seen
            self.seen = grown
        self.seen[ids] = now

    def due(self, now: float) -> bool:
        return now - self.oldest >= self.ttl

    def keep(self, n: int, now: float) -> np.ndarray:
        if n > len(self.seen):
            self.touch(np.zeros(0, dtype=np.int64), n, now)
        return self.seen[:n] > now - self.ttl

    def compacted(self, kept: np.ndarray, n: int, now: float) -> None:
        self.expired_total += n - len(kept)
        self.seen = self.seen[kept].copy()
        self.oldest = float(self.seen.min()) if len(self.seen) else now


class TTLAggOperator(AggOperator):
    """``key_by(...).agg(...)`` whose keys expire after ``ttl`` without records."""

    def __init__(self, node: Node, ctx: OpContext, emit: str) -> None:
        super().__init__(node, ctx, emit)
        self.expiry = _Expiry(node.spec.ttl.total_seconds(), ctx.now())

    def _sweep(self, now: float) -> None:
        n = len(self.state.index)
        kept = self.state.compact(self.expiry.keep(n, now))
        self.expiry.compacted(kept, n, now)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        now = self.ctx.now()
        if self.expiry.due(now):
            self._sweep(now)
        keys, ids = self.state.merge(batch) if self.combined else self.state.update(batch)
        self.expiry.touch(ids, len(self.state.index), now)
        if self.updates:
            self.ctx.emit(self.state.values(keys, ids))

    def on_tick(self) -> None:
        now = self.ctx.now()
        if self.expiry.due(now):
            self._sweep(now)

    def restore(self, snap: dict[str, Any]) -> None:
        super().restore(snap)
        now = self.ctx.now()
        self.expiry = _Expiry(self.expiry.ttl, now)
        self.expiry.touch(np.arange(len(self.state.index)), len(self.state.index), now)


class TTLTransformOperator(TransformOperator):
    """``key_by(...).transform(...)`` whose state rows expire after ``ttl`` without records."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.expiry = _Expiry(node.spec.ttl.total_seconds(), ctx.now())

    def _sweep(self, now: float) -> None:
        n = len(self.table.index)
        kept = self.table.compact(self.expiry.keep(n, now))
        self.expiry.compacted(kept, n, now)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        now = self.ctx.now()
        if self.expiry.due(now):
            self._sweep(now)
        super().on_batch(index, batch)
        ids, _ = self.table.index.lookup(batch.select(list(self.op.keys)).unique())
        self.expiry.touch(ids, len(self.table.index), now)

    def on_tick(self) -> None:
        now = self.ctx.now()
        if self.expiry.due(now):
            self._sweep(now)

    def restore(self, snap: dict[str, Any]) -> None:
        super().restore(snap)
        now = self.ctx.now()
        self.expiry = _Expiry(self.expiry.ttl, now)
        self.expiry.touch(np.arange(len(self.table.index)), len(self.table.index), now)


class TTLStatefulMapOperator(StatefulMapOperator):
    """``key_by(...).stateful_map(...)`` whose per-key states expire after ``ttl``."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.ttl = node.spec.ttl.total_seconds()
        self.seen: dict[Any, float] = {}
        self.oldest = ctx.now()
        self.expired_total = 0

    def _sweep(self, now: float) -> None:
        limit = now - self.ttl
        gone = [k for k, t in self.seen.items() if t <= limit]
        for k in gone:
            del self.seen[k]
            self.states.pop(k, None)
            self.last.pop(k, None)
        self.expired_total += len(gone)
        self.oldest = min(self.seen.values(), default=now)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        now = self.ctx.now()
        if now - self.oldest >= self.ttl:
            self._sweep(now)
        super().on_batch(index, batch)
        keys = list(self.op.keys)
        distinct = batch.select(keys).unique()
        if len(keys) == 1:
            values: list[Any] = distinct.get_column(keys[0]).to_list()
        else:
            values = list(distinct.iter_rows())
        self.seen.update(dict.fromkeys(values, now))
        for k in values:  # keys whose function returned None as the state are gone already
            if k not in self.states and k not in self.last:
                self.seen.pop(k, None)

    def on_tick(self) -> None:
        now = self.ctx.now()
        if now - self.oldest >= self.ttl:
            self._sweep(now)

    def restore(self, snap: dict[str, Any]) -> None:
        super().restore(snap)
        now = self.ctx.now()
        self.seen = dict.fromkeys(self.states, now)
        self.oldest = now


def build_ttl_operator(
    node: Node, ctx: OpContext, *, emit_mode: Callable[[str], str], resume: dict[str, Any]
) -> Operator:
    """Make the operator of a keyed step that has a ``ttl``."""
    op: Operator
    if node.kind == "agg":
        op = TTLAggOperator(node, ctx, emit_mode(node.spec.emit))
    elif node.kind == "keyed_transform":
        op = TTLTransformOperator(node, ctx)
    elif node.kind == "stateful_map":
        op = TTLStatefulMapOperator(node, ctx)
    else:  # pragma: no cover - the API only sets ttl on these
        msg = f"step '{node.step_id}' ({node.kind}) has no time-to-live"
        raise AssertionError(msg)
    if resume:
        op.restore(resume)
    return op
