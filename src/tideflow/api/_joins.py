"""Join settings and the join API: windowed, interval, table and lookup joins.

* :func:`join_window`: records of two keyed streams that share key and window are joined when
  the watermark (the minimum of both inputs) passes the window's end; outer joins keep the
  unmatched rows with nulls.
* :func:`join_interval`: a left record at time t meets the right records of its key with a time
  in ``[t + lower, t + upper]`` (or up to the left record's own end time, ``upper="column"``),
  as soon as both have arrived or, with ``emit="close"``, once the left record's interval has
  closed; the watermark prunes the buffers.
* :func:`join_table`: enrich a stream with the latest row per key of a table stream (a bounded
  input loaded before the stream side runs, or an unbounded changelog kept as state).
* :func:`lookup`: enrich a stream by calling a function for the keys missing from a cache with
  a time-to-live (processing time) and a size bound.

The ``Stream``/``KeyedStream`` methods of the same names call these functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import polars as pl

from tideflow._errors import ConfigError
from tideflow.api._graph import Schema
from tideflow.api._windows import Sliding, Tumbling, WindowSpec, _us

if TYPE_CHECKING:
    from tideflow.api._dataflow import KeyedStream, Stream

__all__ = [
    "BestMatch",
    "IntervalJoinOp",
    "JoinHow",
    "JoinOut",
    "LookupOp",
    "TableJoinOp",
    "WindowJoinOp",
    "join_interval",
    "join_table",
    "join_window",
    "lookup",
]

JoinHow = Literal["inner", "left", "right", "full"]
IntervalEmit = Literal["arrival", "close"]
WindowJoinHow = Literal["inner", "left", "right", "full", "semi", "anti"]
TableMode = Literal["auto", "bounded", "changelog"]
SUFFIX = "_right"


@dataclasses.dataclass(frozen=True, slots=True)
class JoinOut:
    """Outputs of a time-based join: ``results`` and the ``late`` records of both sides.

    ``late`` rows carry ``late_side`` (``"left"`` or ``"right"``) and ``late_reason``; their
    other columns follow the result layout (the other side's columns are null).
    """

    results: Stream
    late: Stream


@dataclasses.dataclass(frozen=True, slots=True)
class WindowJoinOp:
    """Settings of a windowed stream-stream join."""

    keys: tuple[str, ...]
    right_keys: tuple[str, ...]
    size_us: int
    hop_us: int
    offset_us: int
    how: WindowJoinHow
    left_time: str
    right_time: str
    left_schema: Schema | None
    right_schema: Schema | None


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class BestMatch:
    """Keep only the best right record of each left record in an interval join.

    The matches of one left record are ordered by the right side's columns ``by`` (each
    ascending, or descending as ``descending`` says; nulls last) and only the first is kept:
    the join's state is then one row per open left record, not every pair, and it emits one
    row per left record that has a match when its interval closes (``emit="close"``). Matches
    that compare equal keep the earlier arrival at the join; with several workers arrival order
    depends on scheduling, so end ``by`` with a column that makes the order total (an arrival
    sequence number) for reproducible results. Columns are named as on the right side (its key
    columns are equal within a left record's matches and do not order them).

    Examples
    --------
    >>> BestMatch(["price", "seq"], descending=[True, False])
    BestMatch(by=('price', 'seq'), descending=(True, False))
    >>> BestMatch("price", descending=True).descending
    (True,)
    """

    by: tuple[str, ...]
    descending: tuple[bool, ...]

    def __init__(self, by: str | Sequence[str], *, descending: bool | Sequence[bool] = False):
        cols = (by,) if isinstance(by, str) else tuple(by)
        desc = (descending,) * len(cols) if isinstance(descending, bool) else tuple(descending)
        object.__setattr__(self, "by", cols)
        object.__setattr__(self, "descending", desc)


@dataclasses.dataclass(frozen=True, slots=True)
class IntervalJoinOp:
    """Settings of an interval join (inner).

    ``lower_us``/``upper_us`` of None mean no bound on that side; ``upper_column`` names the
    left column holding each left record's own end instant (then ``upper_us`` is None).
    """

    keys: tuple[str, ...]
    right_keys: tuple[str, ...]
    lower_us: int | None
    upper_us: int | None
    left_time: str
    right_time: str
    left_schema: Schema | None
    right_schema: Schema | None
    upper_column: str | None = None
    #: "arrival": a pair is emitted when its second record arrives; "close": pairs are held
    #: until the watermark passes the left record's end, then all of them go out together.
    emit: IntervalEmit = "arrival"
    #: Each key comes at most once on the left (a primary key): right records whose left
    #: record is there are not buffered, and a left record's arrival releases its right ones.
    left_unique: bool = False
    #: Keep only the best right record per left record (emitted at close), or every pair.
    best: BestMatch | None = None
    #: A condition on left columns: only left records meeting it emit pairs (all are kept, so
    #: their right records still meet them and are not buffered for them).
    left_where: pl.Expr | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TableJoinOp:
    """Settings of a stream-table join."""

    on: tuple[str, ...]
    table_on: tuple[str, ...]
    how: Literal["left", "inner"]
    #: True: the table input is bounded and loaded fully before stream records are joined.
    bounded: bool
    #: Columns of the table (keys named as in ``on``), when known before data moves.
    table_schema: Schema | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LookupOp:
    """Settings of a cached lookup enrichment."""

    on: tuple[str, ...]
    fn: Callable[[pl.DataFrame], pl.DataFrame]
    how: Literal["left", "inner"]
    ttl_s: float | None
    max_size: int | None


# -- helpers -----------------------------------------------------------------------------------
def _check_pair(step_id: str, left: KeyedStream, right: KeyedStream) -> None:
    if left.stream.flow is not right.stream.flow:
        msg = f"step '{step_id}': both sides of a join must belong to the same dataflow"
        raise ConfigError(msg)
    if len(left.keys) != len(right.keys):
        msg = (
            f"step '{step_id}': the left side is keyed by {list(left.keys)} and the right by "
            f"{list(right.keys)}; key both sides by the same number of columns"
        )
        raise ConfigError(msg)
    for side, ks in (("left", left), ("right", right)):
        if ks.stream.time_column is None:
            msg = (
                f"step '{step_id}': the {side} side has no event time; declare it upstream "
                "with .event_time('column', ...)"
            )
            raise ConfigError(msg)


def _result_schema(
    keys: tuple[str, ...],
    right_keys: tuple[str, ...],
    left: Schema | None,
    right: Schema | None,
    window: bool,
) -> Schema | None:
    if left is None or right is None:
        return None
    out: Schema = {k: left[k] for k in keys if k in left}
    if window:
        out["window_start"] = pl.Datetime("us", "UTC")
        out["window_end"] = pl.Datetime("us", "UTC")
    for c, t in left.items():
        if c not in keys:
            out[c] = t
    for c, t in right.items():
        if c in right_keys:
            continue
        out[c + SUFFIX if c in out or c in keys else c] = t
    return out


def _two_inputs(step_id: str, left: KeyedStream, right: KeyedStream) -> list[tuple[int, str]]:
    return [left._exchange(step_id + ".left"), right._exchange(step_id + ".right")]


# -- API functions -----------------------------------------------------------------------------
def join_window(
    left: KeyedStream,
    right: KeyedStream,
    window: WindowSpec,
    *,
    how: WindowJoinHow = "inner",
    name: str | None = None,
) -> JoinOut:
    """Join records of two keyed streams that share key and (tumbling or sliding) window.

    See :meth:`tideflow.api.KeyedStream.join_window`.
    """
    from tideflow.api._dataflow import Stream, _check_literal

    flow = left.stream.flow
    step_id = flow._step_id(name, "join_window")
    _check_literal(step_id, "how", how, ("inner", "left", "right", "full", "semi", "anti"))
    _check_pair(step_id, left, right)
    if not isinstance(window, Tumbling | Sliding):
        msg = (
            f"step '{step_id}': join_window() takes windows.tumbling(...) or "
            f"windows.sliding(...), got {window!r}"
        )
        raise ConfigError(msg)
    if window.size <= timedelta(0):
        msg = f"step '{step_id}': window size must be > 0, got {window.size}"
        raise ConfigError(msg)
    hop = window.hop if isinstance(window, Sliding) else window.size
    if hop <= timedelta(0) or hop > window.size:
        msg = f"step '{step_id}': sliding hop must be > 0 and <= size, got {hop}"
        raise ConfigError(msg)
    lt, rt = left.stream.time_column, right.stream.time_column
    assert lt is not None and rt is not None
    ls, rs = left.stream.schema, right.stream.schema
    op = WindowJoinOp(
        left.keys,
        right.keys,
        _us(window.size),
        _us(hop),
        _us(window.offset),
        how,
        lt,
        rt,
        ls,
        rs,
    )
    inputs = _two_inputs(step_id, left, right)
    if how in ("semi", "anti"):  # the left rows only
        schema = _result_schema(left.keys, right.keys, ls, {}, True)
    else:
        schema = _result_schema(left.keys, right.keys, ls, rs, True)
    node = flow._add("join_window", inputs, op, step_id, schema=schema, ports=("out", "late"))
    return JoinOut(Stream(flow, node, "out"), Stream(flow, node, "late"))


def join_interval(
    left: KeyedStream,
    right: KeyedStream,
    *,
    lower: timedelta | None,
    upper: timedelta | str | None,
    emit: IntervalEmit = "arrival",
    left_unique: bool = False,
    best: BestMatch | None = None,
    left_where: pl.Expr | None = None,
    name: str | None = None,
) -> JoinOut:
    """Join each left record at t with the right records of its key in ``[t+lower, t+upper]``.

    ``upper`` may name a timestamp column of the left side holding each record's own end
    (inclusive); ``None`` leaves a side unbounded; ``left_unique`` promises at most one left
    record per key; ``best`` keeps only the best match of each left record. See
    :meth:`tideflow.api.KeyedStream.join_interval`.
    """
    from tideflow.api._dataflow import Stream, _check_literal

    flow = left.stream.flow
    step_id = flow._step_id(name, "join_interval")
    _check_pair(step_id, left, right)
    _check_literal(step_id, "emit", emit, ("arrival", "close"))
    ls, rs = left.stream.schema, right.stream.schema
    upper_column = upper if isinstance(upper, str) else None
    bad = (lower is not None and not isinstance(lower, timedelta)) or not (
        upper is None or isinstance(upper, timedelta | str)
    )
    if bad or (isinstance(lower, timedelta) and isinstance(upper, timedelta) and lower > upper):
        msg = (
            f"step '{step_id}': lower must be a timedelta (or None: unbounded) and upper a "
            f"timedelta, a left timestamp column or None, with lower <= upper; got "
            f"lower={lower!r}, upper={upper!r}"
        )
        raise ConfigError(msg)
    if upper_column is not None and ls is not None:
        dtype = ls.get(upper_column)
        if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
            msg = (
                f"step '{step_id}': upper={upper_column!r} must name a UTC timestamp column of "
                f"the left side; got {dtype if dtype is not None else 'no such column'} "
                f"(columns are {list(ls)})"
            )
            raise ConfigError(msg)
    _check_best(step_id, best, emit, rs)
    _check_left_where(step_id, left_where, best, ls)
    lt, rt = left.stream.time_column, right.stream.time_column
    assert lt is not None and rt is not None
    op = IntervalJoinOp(
        left.keys,
        right.keys,
        None if lower is None else _us(lower),
        _us(upper) if isinstance(upper, timedelta) else None,
        lt,
        rt,
        ls,
        rs,
        upper_column,
        emit,
        bool(left_unique),
        best,
        left_where,
    )
    inputs = _two_inputs(step_id, left, right)
    schema = _result_schema(left.keys, right.keys, ls, rs, False)
    node = flow._add("join_interval", inputs, op, step_id, schema=schema, ports=("out", "late"))
    node.time_column = lt  # results keep the left time; the step holds its watermark back
    return JoinOut(Stream(flow, node, "out"), Stream(flow, node, "late"))


def _check_left_where(
    step_id: str, where: pl.Expr | None, best: BestMatch | None, left: Schema | None
) -> None:
    """``left_where`` is a Polars expression over left columns only (and not with ``best``)."""
    if where is None:
        return
    if not isinstance(where, pl.Expr):
        msg = (
            f"step '{step_id}': left_where must be a Polars expression over the left side's "
            f"columns (e.g. pl.col('category') == 10), got {type(where).__name__}"
        )
        raise ConfigError(msg)
    if best is not None:
        msg = (
            f"step '{step_id}': left_where and best cannot be combined; filter the left side "
            "before the join, or the results after it"
        )
        raise ConfigError(msg)
    if left is not None:
        missing = sorted(set(where.meta.root_names()) - set(left))
        if missing:
            msg = (
                f"step '{step_id}': left_where reads {missing}, which are not columns of the "
                f"left side (columns are {list(left)}); a condition on right columns belongs "
                "in a filter after the join"
            )
            raise ConfigError(msg)


def _check_best(
    step_id: str, best: BestMatch | None, emit: IntervalEmit, right: Schema | None
) -> None:
    """Check a :class:`BestMatch` against the join's settings and the right side's columns."""
    if best is None:
        return
    if not isinstance(best, BestMatch):
        msg = f"step '{step_id}': best= takes BestMatch(by=..., descending=...), got {best!r}"
        raise ConfigError(msg)
    if emit != "close":
        msg = (
            f"step '{step_id}': best=BestMatch(...) keeps a left record's best match until its "
            f"interval closes; pass emit='close' (got emit={emit!r})"
        )
        raise ConfigError(msg)
    if not best.by or len(best.descending) != len(best.by):
        msg = (
            f"step '{step_id}': BestMatch needs by=<right column(s)> and one descending flag per "
            f"column; got by={list(best.by)}, descending={list(best.descending)}"
        )
        raise ConfigError(msg)
    bad: list[object] = [c for c in best.by if not isinstance(c, str)]
    bad += [d for d in best.descending if not isinstance(d, bool)]
    if bad:
        msg = f"step '{step_id}': BestMatch takes column names and bool flags, got {bad!r}"
        raise ConfigError(msg)
    if right is not None:
        missing = [c for c in best.by if c not in right]
        if missing:
            msg = (
                f"step '{step_id}': BestMatch(by={list(best.by)}) names no column {missing} of "
                f"the right side; its columns are {list(right)}"
            )
            raise ConfigError(msg)


def _upstream_bounded(stream: Stream) -> bool:
    nodes = stream.flow.nodes
    todo, seen, bounded = [stream.node.index], set(), True
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        n = nodes[i]
        if n.kind == "source":
            bounded = bounded and bool(n.spec.bounded)
        todo.extend(src for src, _ in n.inputs)
    return bounded


def _on(on: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return (on,) if isinstance(on, str) else tuple(on)


def join_table(
    stream: Stream,
    table: Stream | KeyedStream,
    *,
    on: str | list[str] | tuple[str, ...],
    how: Literal["left", "inner"] = "left",
    mode: TableMode = "auto",
    name: str | None = None,
) -> Stream:
    """Enrich ``stream`` with the latest row per key of ``table``.

    See :meth:`tideflow.api.Stream.join_table`.
    """
    from tideflow.api._dataflow import KeyedStream, Stream, _check_literal

    flow = stream.flow
    step_id = flow._step_id(name, "join_table")
    _check_literal(step_id, "how", how, ("left", "inner"))
    _check_literal(step_id, "mode", mode, ("auto", "bounded", "changelog"))
    keys = _on(on)
    if not keys:
        msg = f"step '{step_id}': join_table() needs on=<key column(s)>"
        raise ConfigError(msg)
    if isinstance(table, KeyedStream):
        table_keys, table_stream = table.keys, table.stream
        if len(table_keys) != len(keys):
            msg = f"step '{step_id}': on={list(keys)} does not match the table keys {list(table_keys)}"
            raise ConfigError(msg)
    else:
        table_keys, table_stream = keys, table
    if table_stream.flow is not flow:
        msg = f"step '{step_id}': the table must belong to the same dataflow"
        raise ConfigError(msg)
    for side, s, ks in (("stream", stream, keys), ("table", table_stream, table_keys)):
        if s.schema is not None:
            missing = [k for k in ks if k not in s.schema]
            if missing:
                msg = f"step '{step_id}': the {side} has no column {missing}; columns are {list(s.schema)}"
                raise ConfigError(msg)
    bounded = _upstream_bounded(table_stream) if mode == "auto" else mode == "bounded"
    if bounded and not _upstream_bounded(table_stream):
        msg = (
            f"step '{step_id}': mode='bounded' needs a table input that ends; this one is "
            "unbounded: use mode='changelog'"
        )
        raise ConfigError(msg)
    ts = table_stream.schema
    rename = dict(zip(table_keys, keys, strict=True))
    table_schema = {rename.get(c, c): t for c, t in ts.items()} if ts is not None else None
    op = TableJoinOp(keys, table_keys, how, bounded, table_schema)
    inputs = [
        KeyedStream(stream, keys)._exchange(step_id + ".stream"),
        KeyedStream(table_stream, table_keys)._exchange(step_id + ".table"),
    ]
    ss = stream.schema
    schema: Schema | None = None
    if ss is not None and ts is not None:
        schema = dict(ss)
        for c, t in ts.items():
            if c not in table_keys:
                schema[c + SUFFIX if c in schema else c] = t
    node = flow._add("join_table", inputs, op, step_id, schema=schema)
    node.time_column = stream.time_column
    return Stream(flow, node)


def lookup(
    stream: Stream,
    fn: Callable[[pl.DataFrame], pl.DataFrame],
    *,
    on: str | list[str] | tuple[str, ...],
    ttl: timedelta | None = None,
    max_size: int | None = None,
    how: Literal["left", "inner"] = "left",
    name: str | None = None,
) -> Stream:
    """Enrich ``stream`` by calling ``fn`` for keys missing from a cache.

    See :meth:`tideflow.api.Stream.lookup`.
    """
    from tideflow.api._dataflow import _check_literal

    flow = stream.flow
    step_id = flow._step_id(name, "lookup")
    _check_literal(step_id, "how", how, ("left", "inner"))
    keys = _on(on)
    if not callable(fn) or not keys:
        msg = f"step '{step_id}': lookup() needs a function fn(keys) -> DataFrame and on=<keys>"
        raise ConfigError(msg)
    if ttl is not None and ttl <= timedelta(0):
        msg = f"step '{step_id}': ttl must be > 0 (or None to keep entries forever)"
        raise ConfigError(msg)
    if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
        msg = f"step '{step_id}': max_size must be a positive int, got {max_size!r}"
        raise ConfigError(msg)
    if stream.schema is not None:
        missing = [k for k in keys if k not in stream.schema]
        if missing:
            msg = f"step '{step_id}': no column {missing} to look up; columns are {list(stream.schema)}"
            raise ConfigError(msg)
    op = LookupOp(keys, fn, how, ttl.total_seconds() if ttl is not None else None, max_size)
    node = flow._add("lookup", [(stream.node.index, stream.port)], op, step_id)
    node.time_column = stream.time_column
    return type(stream)(flow, node)
