"""The logical dataflow graph: nodes, their settings and how they connect.

The API builds it; the runtime turns each node into an operator on every worker. Nodes hold only
settings (immutable objects and user functions), never runtime state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import polars as pl

__all__ = ["FrameOp", "Node", "NodeKind", "RecordOp", "fn_location"]

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


@dataclasses.dataclass(frozen=True, slots=True)
class FrameOp:
    """A vectorized DataFrame -> DataFrame step (Polars expressions, or a user batch function)."""

    apply: Callable[[pl.DataFrame], pl.DataFrame]
    description: str
    #: True when the step may change the row count and cannot be checked row by row (user fn).
    user_fn: bool = False


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
