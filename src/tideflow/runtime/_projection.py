"""Projection pushdown: sources read only the columns the flow uses.

Walking the graph from the sinks back, each step says which of its input's columns it reads,
given which of its output's columns its consumers read (``FrameOp.needs``; event time, keyed
exchanges and aggregations by their settings). A step that cannot say (a user function, a
sink, a join) reads everything. Each source whose consumers together read a known set of
columns is replaced by ``source.project(columns)`` when the source supports it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from tideflow.api._graph import FrameOp, Node, expr_columns

__all__ = ["project_sources"]

log = logging.getLogger(__name__)

Columns = frozenset[str] | None


def _reads(node: Node, used: Columns) -> Columns:
    """Columns of its input that ``node`` reads when its consumers read ``used``."""
    spec: Any = node.spec
    kind = node.kind
    if kind == "frame":
        op: FrameOp = spec
        return op.needs(used) if op.needs is not None else None
    if kind == "event_time":
        extra = {spec.column} | ({spec.per} if spec.per else set())
        return None if used is None else used | extra
    if kind == "validate":
        rules = expr_columns(*spec.values())
        return None if used is None or rules is None else used | rules
    if kind == "exchange":
        return None if used is None else used | frozenset(spec)
    if kind == "agg":
        return frozenset(spec.keys) | {s.column for s in spec.aggs if s.column is not None}
    return None


def project_sources(nodes: list[Node]) -> dict[int, Any]:
    """Sources (by node index) replaced by their projection onto the columns the flow reads."""
    consumers: dict[int, list[Node]] = defaultdict(list)
    for n in nodes:
        for src, _ in n.inputs:
            consumers[src].append(n)
    used: dict[int, Columns] = {}
    for n in reversed(nodes):  # consumers come after their inputs
        got: set[str] = set()
        known = bool(consumers[n.index])
        for c in consumers[n.index]:
            reads = _reads(c, used.get(c.index))
            if reads is None:
                known = False
                break
            got |= reads
        used[n.index] = frozenset(got) if known else None
    out: dict[int, Any] = {}
    for n in nodes:
        cols = used.get(n.index)
        if n.kind != "source" or cols is None:
            continue
        schema = n.spec.schema()
        if schema is not None and not cols < set(schema):
            continue  # nothing to drop, or a column the source does not know of
        projected = n.spec.project(cols)
        if projected is not None:
            log.debug("step %r reads only the columns %s", n.step_id, sorted(cols))
            out[n.index] = projected
    return out
