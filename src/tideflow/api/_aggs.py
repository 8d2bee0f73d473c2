"""Translate Polars aggregation expressions into mergeable accumulators.

A keyed aggregation in a stream cannot re-read its input: every aggregate must be computable
from partial results of micro-batches. This module recognises the Polars aggregations that have
such a decomposition and turns each into an :class:`AggSpec`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import polars as pl

from tideflow._errors import ConfigError

__all__ = ["AggKind", "AggSpec", "parse_aggs"]

AggKind = Literal["count", "count_non_null", "sum", "min", "max", "mean", "n_unique", "top_k"]

SUPPORTED = (
    "pl.len(), pl.col(c).count(), .sum(), .min(), .max(), .mean(), .n_unique(), "
    ".top_k(k) (each optionally with .alias(name))"
)


@dataclasses.dataclass(frozen=True, slots=True)
class AggSpec:
    """One aggregate: its kind, input column, output name and (for top_k) k."""

    kind: AggKind
    column: str | None
    name: str
    k: int = 0


_AGG_NODES: dict[str, AggKind] = {
    "Sum": "sum",
    "Min": "min",
    "Max": "max",
    "Mean": "mean",
    "NUnique": "n_unique",
}


def _column_of(node: Any) -> str | None:
    if isinstance(node, dict) and set(node) == {"Column"}:
        return str(node["Column"])
    return None


def _parse_one(expr: pl.Expr, step_id: str) -> AggSpec:
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except Exception as exc:  # pragma: no cover - polars refuses to serialize
        msg = f"step '{step_id}': cannot inspect aggregation {expr}: {exc}"
        raise ConfigError(msg) from exc
    name: str | None = None
    if isinstance(tree, dict) and "Alias" in tree:
        tree, name = tree["Alias"]
    spec: AggSpec | None = None
    if tree == "Len":
        spec = AggSpec("count", None, name or "len")
    elif isinstance(tree, dict) and "Agg" in tree:
        (kind, body), *_ = tree["Agg"].items()
        if kind == "Count":
            col = _column_of(body.get("input"))
            if col is not None:
                nulls = bool(body.get("include_nulls"))
                spec = AggSpec("count" if nulls else "count_non_null", col, name or col)
        elif kind in _AGG_NODES:
            col = _column_of(body) or _column_of(
                body.get("input") if isinstance(body, dict) else None
            )
            if col is not None:
                spec = AggSpec(_AGG_NODES[kind], col, name or col)
    elif isinstance(tree, dict) and "Function" in tree:
        fn = tree["Function"]
        inputs = fn.get("input", [])
        function = fn.get("function")
        if isinstance(function, dict) and "TopK" in function and len(inputs) == 2:
            col = _column_of(inputs[0])
            lit = inputs[1].get("Literal", {}).get("Dyn", {}).get("Int")
            if col is not None and isinstance(lit, int) and not function["TopK"]["descending"]:
                spec = AggSpec("top_k", col, name or col, k=lit)
    if spec is None:
        msg = (
            f"step '{step_id}': aggregation {expr} cannot be computed incrementally; "
            f"supported: {SUPPORTED}. For anything else use stateful_map or map_batches."
        )
        raise ConfigError(msg)
    return spec


def parse_aggs(exprs: tuple[pl.Expr, ...], step_id: str) -> list[AggSpec]:
    """Parse Polars aggregation expressions, rejecting what cannot be merged.

    Examples
    --------
    >>> [s.kind for s in parse_aggs((pl.len(), pl.col("x").sum().alias("total")), "s")]
    ['count', 'sum']
    """
    if not exprs:
        msg = f"step '{step_id}': agg() needs at least one aggregation, e.g. pl.len()"
        raise ConfigError(msg)
    specs = []
    for e in exprs:
        if not isinstance(e, pl.Expr):
            msg = f"step '{step_id}': agg() takes Polars expressions, got {type(e).__name__}"
            raise ConfigError(msg)
        specs.append(_parse_one(e, step_id))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"step '{step_id}': duplicate output names {dupes}; give each an .alias()"
        raise ConfigError(msg)
    return specs
