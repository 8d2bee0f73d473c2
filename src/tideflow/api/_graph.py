"""The logical dataflow graph: nodes, their settings and how they connect.

The API builds it; the runtime turns each node into an operator on every worker. Nodes hold only
settings (immutable objects and user functions), never runtime state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import polars as pl

__all__ = ["FrameOp", "Node", "NodeKind", "RecordOp", "expr_columns", "fn_location"]

NodeKind = Literal[
    "source",
    "frame",
    "record",
    "union",
    "split",
    "validate",
    "event_time",
    "window",
    "join_window",
    "join_interval",
    "join_table",
    "lookup",
    "exchange",
    "agg",
    "stateful_map",
    "keyed_transform",
    "top_n",
    "custom",
    "sink",
    "dead_union",
]

Schema = dict[str, pl.DataType]


def fn_location(fn: Callable[..., Any]) -> str:
    """Return ``name (file:line)`` of a user function, for error messages."""
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    if code is None:
        return str(name)
    return f"{name} ({code.co_filename}:{code.co_firstlineno})"


def expr_columns(*exprs: Any, **named: Any) -> frozenset[str] | None:
    """The columns Polars expressions (or column names) read; None when not known statically.

    Selectors, wildcards and positional columns (``pl.all()``, ``pl.first()``) give None.

    Examples
    --------
    >>> import polars as pl
    >>> sorted(expr_columns("a", (pl.col("b") * 2).alias("c"), d=pl.col("e").max()))
    ['a', 'b', 'e']
    >>> expr_columns(pl.all()) is None
    True
    """
    out: set[str] = set()
    for e in (*exprs, *named.values()):
        if isinstance(e, str):
            out.add(e)
        elif isinstance(e, pl.Expr):
            if e.meta.has_multiple_outputs():
                return None
            out.update(e.meta.root_names())
        elif isinstance(e, (list, tuple)):
            got = expr_columns(*e)
            if got is None:
                return None
            out |= got
        else:  # a literal Series or value: reads no column
            if not isinstance(e, (int, float, bool, pl.Series)) and e is not None:
                return None
    return frozenset(out)


def output_names(*exprs: Any, **named: Any) -> frozenset[str] | None:
    """Names of the columns that expressions make; None when not known statically."""
    out: set[str] = set(named)
    for e in exprs:
        if isinstance(e, str):
            out.add(e)
        elif isinstance(e, pl.Expr) and not e.meta.has_multiple_outputs():
            try:
                out.add(e.meta.output_name())
            except pl.exceptions.ComputeError:
                return None
        else:
            return None
    return frozenset(out)


@dataclasses.dataclass(frozen=True, slots=True)
class FrameOp:
    """A vectorized DataFrame -> DataFrame step (Polars expressions, or a user batch function)."""

    apply: Callable[[pl.DataFrame], pl.DataFrame]
    description: str
    #: True when the step may change the row count and cannot be checked row by row (user fn).
    user_fn: bool = False
    #: The input columns the step reads, given the columns its consumers read (None: all);
    #: None when unknown. Lets sources read only the columns a flow uses.
    needs: Callable[[frozenset[str] | None], frozenset[str] | None] | None = None
    #: The same step for small batches without Polars' planner; it returns None for a batch it
    #: leaves to ``apply`` (see ``tideflow.api._smallbatch``). None: always ``apply``.
    small: Callable[[pl.DataFrame], pl.DataFrame | None] | None = None


RecordMode = Literal["map", "flat_map", "filter"]
OnError = Literal["dead_letter", "raise"]


@dataclasses.dataclass(frozen=True, slots=True)
class RecordOp:
    """A per-record Python step: ``fn(dict) -> dict | Iterable[dict] | bool``."""

    fn: Callable[[dict[str, Any]], Any]
    mode: RecordMode
    schema: Schema | None
    on_error: OnError


@dataclasses.dataclass(slots=True)
class Node:
    """One step of the dataflow."""

    index: int
    step_id: str
    kind: NodeKind
    inputs: list[tuple[int, str]]
    spec: Any
    ports: tuple[str, ...] = ("out",)
    #: Output schema of port "out" when known before data moves.
    schema: Schema | None = None
    #: The event-time column of the output (set by ``event_time``, kept by stateless steps).
    time_column: str | None = None
