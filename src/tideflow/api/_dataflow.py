"""The dataflow API: :class:`Dataflow`, :class:`Stream`, :class:`KeyedStream`, :class:`Split`.

One API for bounded and unbounded inputs. Records travel as columnar micro-batches
(``polars.DataFrame``); Polars expressions are the vectorized language, and per-record Python
functions remain available everywhere (``map``, ``flat_map``, ``filter`` with a function).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Literal

import polars as pl

from tideflow._errors import ConfigError
from tideflow.api._aggs import AggSpec, parse_aggs
from tideflow.api._graph import (
    FrameOp,
    Node,
    NodeKind,
    OnError,
    RecordOp,
    Schema,
    expr_columns,
    fn_location,
    output_names,
)
from tideflow.api._joins import BestMatch, JoinOut
from tideflow.api._smallbatch import compile_filter, compile_select
from tideflow.api._windows import Clock, WindowedStream, WindowSpec
from tideflow.connectors._base import DEAD_LETTER_SCHEMA, Sink, Source
from tideflow.state._backends import DiskState, StateBackend, StateChoice, state_backend

__all__ = ["AggOp", "Dataflow", "KeyedStream", "Split", "StatefulMapOp", "Stream", "TransformOp"]

Emit = Literal["auto", "updates", "final"]
#: Steps whose output keeps the event-time column of their input (if the column survives).
_KEEPS_TIME = frozenset({"frame", "record", "union", "split", "validate", "exchange"})
TimeUnit = Literal["s", "ms", "us", "ns"]
_EMITS = ("auto", "updates", "final")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        msg = (
            f"{what} {name!r} is not a valid step name: use letters, digits, '_' or '-', "
            "starting with a letter (dots separate scopes and are added by tideflow)"
        )
        raise ConfigError(msg)


def _check_ttl(step_id: str, ttl: timedelta | None) -> None:
    if ttl is not None and (not isinstance(ttl, timedelta) or ttl <= timedelta(0)):
        msg = f"step '{step_id}': ttl must be a positive timedelta (or None), got {ttl!r}"
        raise ConfigError(msg)


def _check_literal(step_id: str, setting: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        msg = f"step '{step_id}': {setting}={value!r} is not one of {list(allowed)}"
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True, slots=True)
class AggOp:
    """Settings of a keyed aggregation."""

    keys: tuple[str, ...]
    aggs: tuple[AggSpec, ...]
    emit: Emit
    #: True when the input rows are partials from a combiner (see ``AggState.partial_exprs``).
    combined: bool = False
    #: Forget a key not seen for this long (processing time); None keeps keys forever.
    ttl: timedelta | None = None
    #: Where the state lives; None: the run's choice (``tf.run(..., state=...)``).
    state: StateBackend | None = None


def check_disk_agg(step_id: str, op: AggOp, schema: Schema | None, where: str) -> None:
    """Raise ConfigError when a keyed aggregation cannot keep its state on disk."""
    bad = [s.name for s in op.aggs if s.kind in ("n_unique", "top_k")]
    if bad:
        msg = (
            f"step '{step_id}': {where} keeps state on disk, which supports count, sum, mean, "
            f"min and max, not n_unique/top_k ({bad}); pass state='memory' to this step"
        )
        raise ConfigError(msg)
    if op.ttl is not None:
        msg = (
            f"step '{step_id}': {where} keeps state on disk, which does not support ttl yet; "
            "pass state='memory' to this step or drop ttl"
        )
        raise ConfigError(msg)
    if schema is not None:
        from tideflow.runtime._diskagg import key_type_ok

        wrong = {k: str(schema[k]) for k in op.keys if k in schema and not key_type_ok(schema[k])}
        if wrong:
            msg = (
                f"step '{step_id}': {where} keeps state on disk, which needs keys of numbers, "
                f"strings, booleans, bytes or times; got {wrong}; pass state='memory'"
            )
            raise ConfigError(msg)


@dataclasses.dataclass(frozen=True, slots=True)
class StatefulMapOp:
    """Settings of a keyed per-record stateful map.

    ``fn(state, record) -> (new_state, output)``; ``state`` starts as ``init()``; an output of
    ``None`` emits nothing, a dict emits one record, a list of dicts several. A new state of
    ``None`` forgets the key.
    """

    keys: tuple[str, ...]
    fn: Callable[[Any, dict[str, Any]], tuple[Any, Any]]
    init: Callable[[], Any]
    schema: Schema | None
    on_error: OnError
    #: "final" keeps outputs per key and emits the last one at the end of a bounded input.
    emit: Literal["updates", "final"]
    #: Forget a key not seen for this long (processing time); None keeps keys forever.
    ttl: timedelta | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EventTimeOp:
    """Settings of an event-time declaration (column, unit, out-of-orderness, idleness)."""

    column: str
    unit: str | None
    delay: timedelta
    idle: timedelta | None
    per: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TransformOp:
    """Settings of a vectorized keyed transform with declared state columns."""

    keys: tuple[str, ...]
    fn: Callable[[pl.DataFrame, pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]
    state: Schema
    #: Forget a key not seen for this long (processing time); None keeps keys forever.
    ttl: timedelta | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TopNOp:
    """Settings of a keyed top-N: the first ``n`` rows per key in the order ``by``."""

    keys: tuple[str, ...]
    n: int
    by: tuple[str, ...]
    descending: tuple[bool, ...]
    #: Name of the 1-based rank column added to the output (None: no rank column).
    rank: str | None
    emit: Emit


class Dataflow:
    """A named dataflow graph: sources, operators and sinks.

    Parameters
    ----------
    name
        Root of every step id (``name.step``); appears in logs, metrics and checkpoints.

    Examples
    --------
    >>> import polars as pl
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> flow = tf.Dataflow("example")
    >>> nums = flow.source(TestingSource([{"x": 1}, {"x": 2}, {"x": 3}]), name="nums")
    >>> out = CollectSink()
    >>> nums.filter(pl.col("x") > 1).with_columns(y=pl.col("x") * 10).sink(out)
    >>> _ = tf.run(flow)
    >>> out.frame().sort("x").rows()
    [(2, 20), (3, 30)]
    """

    def __init__(self, name: str) -> None:
        _check_name(name, "dataflow name")
        self.name = name
        self.nodes: list[Node] = []
        self._scope: list[str] = []
        self._taken: set[str] = set()
        self._dead: Stream | None = None

    def __repr__(self) -> str:
        return f"Dataflow({self.name!r}, steps={len(self.nodes)})"

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the ids of the steps made inside the ``with`` block (``flow.name.step``)."""
        _check_name(name, "scope name")
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _step_id(self, name: str | None, default: str) -> str:
        if name is not None:
            _check_name(name, "step name")
        base = ".".join([self.name, *self._scope, name or default])
        if name is not None and base in self._taken:
            msg = f"step id '{base}' is used twice; give one of the steps another name="
            raise ConfigError(msg)
        step_id, n = base, 1
        while step_id in self._taken:
            n += 1
            step_id = f"{base}_{n}"
        self._taken.add(step_id)
        return step_id

    def _add(
        self,
        kind: NodeKind,
        inputs: list[tuple[int, str]],
        spec: Any,
        step_id: str,
        *,
        schema: Schema | None = None,
        ports: tuple[str, ...] = ("out",),
    ) -> Node:
        node = Node(len(self.nodes), step_id, kind, inputs, spec, ports, schema)
        if kind in _KEEPS_TIME and inputs:
            times = {self.nodes[i].time_column for i, _ in inputs}
            col = times.pop() if len(times) == 1 else None
            if col is not None and (schema is None or col in schema):
                node.time_column = col
        self.nodes.append(node)
        return node

    def source(self, source: Source, *, name: str | None = None) -> Stream:
        """Add a source; returns its stream of records.

        ``name`` defaults to ``source`` (``source_2``, ... for further ones).
        """
        step_id = self._step_id(name, "source")
        if not isinstance(source, Source):
            msg = (
                f"step '{step_id}': source() takes a tideflow Source (for example "
                f"files.scan_csv(...)), got {type(source).__name__}"
            )
            raise ConfigError(msg)
        source.validate(step_id)
        schema = source.schema()
        node = self._add("source", [], source, step_id, schema=dict(schema) if schema else None)
        return Stream(self, node)

    @property
    def dead_letters(self) -> Stream:
        """Every record any step rejected, with step, origin, reason and raw text.

        If a flow never sinks this stream, the runtime writes it to a JSON-lines file and says
        where in the run summary.
        """
        if self._dead is None:
            step_id = self._step_id("dead_letters", "dead_letters")
            node = self._add("dead_union", [], None, step_id, schema=dict(DEAD_LETTER_SCHEMA))
            self._dead = Stream(self, node)
        return self._dead

    @property
    def bounded(self) -> bool:
        """True when every source ends by itself (the job is a batch job)."""
        return all(n.spec.bounded for n in self.nodes if n.kind == "source")

    def validate(self) -> None:
        """Check the whole graph before any data moves; raise :class:`ConfigError`."""
        sources = [n for n in self.nodes if n.kind == "source"]
        if not sources:
            msg = f"dataflow '{self.name}' has no source; add one with flow.source(...)"
            raise ConfigError(msg)
        sinks = [n for n in self.nodes if n.kind == "sink"]
        if not sinks:
            msg = f"dataflow '{self.name}' has no sink; end a stream with .sink(...)"
            raise ConfigError(msg)


def _adds(
    reads: frozenset[str] | None,
) -> Callable[[frozenset[str] | None], frozenset[str] | None]:
    """``needs`` of a step that passes its input's columns on and also reads ``reads``."""

    def needs(used: frozenset[str] | None) -> frozenset[str] | None:
        return None if used is None or reads is None else used | reads

    return needs


def _empty(schema: Schema) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


#: How Polars names a subexpression it computes once for a whole ``select``/``with_columns``.
_CSE_MARK = "__POLARS_CSE"
#: Batches of at least this many rows on which a step with a shared subexpression times
#: Polars' lazy and eager paths against each other before keeping the cheaper one.
_TRIAL_ROWS = 4_096
#: How a Polars plan shows a Python function (``map_elements``, ``map_batches``).
_PYTHON_UDF = "python_udf"
_TRIALS = 2


def _planned(
    method: Literal["select", "with_columns"], exprs: tuple[Any, ...], named: dict[str, Any]
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """The frame function of a ``select``/``with_columns`` step.

    Polars' eager ``DataFrame.select`` evaluates every expression on its own: a subexpression
    that several output columns share (``pl.col("url").str.split("/")`` for three path parts)
    is computed once per use. Its lazy engine computes it once (common subexpression
    elimination), but plans the query and materializes the shared result, which costs more
    than it saves when the shared part is cheap (a comparison behind several flags). So a step
    whose plan has a shared subexpression runs its first two batches of at least 4,096 rows
    both ways, timing the CPU of each (``time.process_time``, all threads), and keeps the lazy
    path if it took at most 80 % of the eager one. Other steps, steps calling Python
    functions (``map_elements``, ``map_batches``: a trial would call them twice), and smaller
    batches until then, run eagerly.
    """
    shared: list[bool] = []  # the plan has a shared subexpression (decided on the first frame)
    lazy_s: list[float] = []
    eager_s: list[float] = []
    use_lazy: list[bool] = []

    def lazy(df: pl.DataFrame) -> pl.DataFrame:
        out: pl.DataFrame = getattr(df.lazy(), method)(*exprs, **named).collect()
        return out

    def eager(df: pl.DataFrame) -> pl.DataFrame:
        out: pl.DataFrame = getattr(df, method)(*exprs, **named)
        return out

    def apply(df: pl.DataFrame) -> pl.DataFrame:
        if not shared:
            plan = getattr(df.lazy(), method)(*exprs, **named).explain()
            shared.append(_CSE_MARK in plan and _PYTHON_UDF not in plan)
        if use_lazy:
            return lazy(df) if use_lazy[0] else eager(df)
        if not shared[0] or df.height < _TRIAL_ROWS:
            return eager(df)
        began = time.process_time()
        out = lazy(df)
        middle = time.process_time()
        eager(df)
        lazy_s.append(middle - began)
        eager_s.append(time.process_time() - middle)
        if len(lazy_s) >= _TRIALS:
            use_lazy.append(sum(lazy_s) <= 0.8 * sum(eager_s))
        return out

    return apply


class Stream:
    """A stream of records (columnar micro-batches) produced by one step.

    Every operator returns a new :class:`Stream` and takes an optional ``name`` for its step id.
    """

    def __init__(self, flow: Dataflow, node: Node, port: str = "out") -> None:
        self.flow = flow
        self.node = node
        self.port = port

    def __repr__(self) -> str:
        return f"Stream({self.node.step_id!r}, port={self.port!r})"

    @property
    def schema(self) -> Schema | None:
        """Columns and types of this stream, when known before data moves."""
        return self.node.schema if self.port == "out" else _port_schema(self.node, self.port)

    @property
    def step_id(self) -> str:
        """Id of the step that produces this stream."""
        return self.node.step_id

    @property
    def time_column(self) -> str | None:
        """The event-time column (declared with :meth:`event_time`), if any.

        Results of event-time windows have ``window_end`` as their time; a window's ``late``
        output has none.
        """
        if self.node.kind == "window" and self.port != "out":
            return None
        return self.node.time_column

    def event_time(
        self,
        column: str,
        *,
        unit: TimeUnit | None = None,
        delay: timedelta = timedelta(0),
        idle: timedelta | None = timedelta(seconds=10),
        per: str | None = None,
        name: str | None = None,
    ) -> Stream:
        """Declare the event-time column and start watermarks here.

        ``column`` becomes a UTC timestamp column (``Datetime("us", "UTC")``): timezone-aware
        timestamps are converted, integers need ``unit`` (epoch seconds, ms, us or ns), strings
        are parsed as ISO-8601 (a string without an offset is taken as UTC). Records whose time
        is missing or unparsable go to the dead letters.

        The watermark is the largest event time seen minus ``delay`` (the bounded
        out-of-orderness). When no record arrives for ``idle`` (processing time), this input
        stops holding the watermark back until data comes again (``None``: never).

        ``per`` names a column that splits the input into ordered parts, such as the
        ``partition`` of a Kafka source: the largest time is then tracked per value and the
        watermark is the smallest of them minus ``delay``, so a part that is read ahead of the
        others does not make their records late. A value that sends nothing for ``idle`` stops
        holding the watermark back; a value not seen yet does not hold it back either.

        Examples
        --------
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource
        >>> flow = tf.Dataflow("t")
        >>> s = flow.source(TestingSource([], schema={"ts": pl.Int64()})).event_time("ts", unit="ms")
        >>> s.time_column, s.schema
        ('ts', {'ts': Datetime(time_unit='us', time_zone='UTC')})
        """
        step_id = self.flow._step_id(name, "event_time")
        if unit is not None:
            _check_literal(step_id, "unit", unit, ("s", "ms", "us", "ns"))
        if delay < timedelta(0) or (idle is not None and idle <= timedelta(0)):
            msg = f"step '{step_id}': delay must be >= 0 and idle > 0 (or None)"
            raise ConfigError(msg)
        schema = self.schema
        out_schema = None
        if schema is not None:
            if column not in schema:
                msg = f"step '{step_id}': no column {column!r} for event time; columns are {list(schema)}"
                raise ConfigError(msg)
            dtype = schema[column]
            if dtype.is_integer() and unit is None:
                msg = (
                    f"step '{step_id}': column {column!r} holds integers; say what they count "
                    "with unit='s', 'ms', 'us' or 'ns'"
                )
                raise ConfigError(msg)
            if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
                msg = (
                    f"step '{step_id}': column {column!r} is a timestamp without a time zone; "
                    "event times must be UTC instants: convert it with "
                    f"pl.col({column!r}).dt.replace_time_zone('UTC') first"
                )
                raise ConfigError(msg)
            if not (dtype.is_integer() or isinstance(dtype, pl.Datetime) or dtype == pl.String):
                msg = f"step '{step_id}': column {column!r} of type {dtype} cannot be an event time"
                raise ConfigError(msg)
            out_schema = {**schema, column: pl.Datetime("us", "UTC")}
            if per is not None and per not in schema:
                msg = (
                    f"step '{step_id}': no column {per!r} to track watermarks per; "
                    f"columns are {list(schema)}"
                )
                raise ConfigError(msg)
        spec = EventTimeOp(column, unit, delay, idle, per)
        node = self.flow._add(
            "event_time", [(self.node.index, self.port)], spec, step_id, schema=out_schema
        )
        node.time_column = column
        return Stream(self.flow, node)

    # -- vectorized operators ---------------------------------------------------------------
    def _frame(
        self,
        kind: str,
        name: str | None,
        apply: Callable[[pl.DataFrame], pl.DataFrame],
        description: str,
        *,
        user_fn: bool = False,
        needs: Callable[[frozenset[str] | None], frozenset[str] | None] | None = None,
        small: Callable[[pl.DataFrame], pl.DataFrame | None] | None = None,
    ) -> Stream:
        step_id = self.flow._step_id(name, kind)
        schema = self.schema
        out_schema: Schema | None = None
        if schema is not None and not user_fn:
            try:
                out_schema = dict(apply(_empty(schema)).schema)
            except pl.exceptions.PolarsError as exc:
                first = str(exc).strip().splitlines()[0]
                msg = (
                    f"step '{step_id}' ({description}) does not fit its input: {first}; "
                    f"input columns: {list(schema)}"
                )
                raise ConfigError(msg) from None
        op = FrameOp(apply, description, user_fn, needs, small)
        node = self.flow._add(
            "frame", [(self.node.index, self.port)], op, step_id, schema=out_schema
        )
        return Stream(self.flow, node)

    def filter(
        self,
        predicate: pl.Expr | Callable[[dict[str, Any]], bool],
        *,
        name: str | None = None,
    ) -> Stream:
        """Keep the records for which ``predicate`` holds.

        A Polars expression runs vectorized; a Python function runs per record.
        """
        if isinstance(predicate, pl.Expr):
            return self._frame(
                "filter",
                name,
                lambda df: df.filter(predicate),
                f"filter {predicate}",
                needs=_adds(expr_columns(predicate)),
                small=compile_filter(predicate, self.schema),
            )
        return self._record(
            "filter", predicate, name=name, schema=self.schema, on_error="dead_letter"
        )

    def select(self, *exprs: Any, name: str | None = None, **named: Any) -> Stream:
        """Keep and derive columns, like :meth:`polars.DataFrame.select`."""
        reads = expr_columns(*exprs, **named)
        return self._frame(
            "select",
            name,
            _planned("select", exprs, named),
            "select",
            needs=lambda _: reads,
            small=compile_select(exprs, named, replace=False, schema=self.schema),
        )

    def with_columns(self, *exprs: Any, name: str | None = None, **named: Any) -> Stream:
        """Add or replace columns, like :meth:`polars.DataFrame.with_columns`."""
        reads, made = expr_columns(*exprs, **named), output_names(*exprs, **named)

        def needs(used: frozenset[str] | None) -> frozenset[str] | None:
            if used is None or reads is None or made is None:
                return None
            return (used - made) | reads

        return self._frame(
            "with_columns",
            name,
            _planned("with_columns", exprs, named),
            "with_columns",
            needs=needs,
            small=compile_select(exprs, named, replace=True, schema=self.schema),
        )

    def drop(self, *columns: str, name: str | None = None) -> Stream:
        """Remove columns."""
        return self._frame(
            "drop",
            name,
            lambda df: df.drop(*columns),
            f"drop {list(columns)}",
            needs=_adds(expr_columns(*columns)),
        )

    def rename(self, mapping: Mapping[str, str], *, name: str | None = None) -> Stream:
        """Rename columns."""
        m = dict(mapping)
        return self._frame("rename", name, lambda df: df.rename(m), f"rename {m}")

    def explode(self, *columns: str, name: str | None = None) -> Stream:
        """One record per element of list columns."""
        return self._frame(
            "explode",
            name,
            lambda df: df.explode(*columns),
            "explode",
            needs=_adds(expr_columns(*columns)),
        )

    def map_batches(
        self,
        fn: Callable[[pl.DataFrame], pl.DataFrame],
        *,
        reads: Iterable[str] | None = None,
        name: str | None = None,
    ) -> Stream:
        """Apply ``fn`` to each micro-batch (a ``polars.DataFrame``); it returns a DataFrame.

        ``reads`` names every column ``fn`` reads from its input (None: any column): then the
        sources read only what the flow uses, and ``fn`` may get only those columns.

        Examples
        --------
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> flow = tf.Dataflow("mb")
        >>> out = CollectSink()
        >>> rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
        >>> flow.source(TestingSource(rows)).map_batches(
        ...     lambda df: df.select(twice=pl.col("a") * 2), reads=["a"]
        ... ).sink(out)
        >>> _ = tf.run(flow)
        >>> out.frame()["twice"].to_list()
        [2, 4]
        """
        cols = None if reads is None else frozenset(reads)
        return self._frame(
            "map_batches", name, fn, fn_location(fn), user_fn=True, needs=lambda _: cols
        )

    def validate(self, rules: Mapping[str, pl.Expr], *, name: str | None = None) -> Stream:
        """Keep rows that satisfy every rule; send the others to the dead letters.

        ``rules`` maps a reason (shown in the dead letter) to a Polars predicate. A row whose
        predicate is false or null breaks the rule. Vectorized.

        Examples
        --------
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> flow = tf.Dataflow("v")
        >>> out, dead = CollectSink(), CollectSink()
        >>> flow.source(TestingSource([{"a": 1}, {"a": -2}])).validate(
        ...     {"a must be positive": pl.col("a") > 0}).sink(out)
        >>> flow.dead_letters.sink(dead)
        >>> _ = tf.run(flow)
        >>> out.frame()["a"].to_list(), dead.frame()["reason"].to_list()
        ([1], ['a must be positive'])
        """
        step_id = self.flow._step_id(name, "validate")
        if not rules:
            msg = f"step '{step_id}': validate() needs at least one rule"
            raise ConfigError(msg)
        for reason, pred in rules.items():
            if not isinstance(pred, pl.Expr):
                msg = f"step '{step_id}': rule {reason!r} needs a Polars predicate expression"
                raise ConfigError(msg)
            if self.schema is not None:
                try:
                    _empty(self.schema).filter(pred)
                except pl.exceptions.PolarsError as exc:
                    first = str(exc).strip().splitlines()[0]
                    msg = f"step '{step_id}': rule {reason!r}: {first}; columns {list(self.schema)}"
                    raise ConfigError(msg) from None
        node = self.flow._add(
            "validate", [(self.node.index, self.port)], dict(rules), step_id, schema=self.schema
        )
        return Stream(self.flow, node)

    # -- per-record Python --------------------------------------------------------------------
    def _record(
        self,
        kind: Literal["map", "flat_map", "filter"],
        fn: Callable[[dict[str, Any]], Any],
        *,
        name: str | None,
        schema: Schema | None,
        on_error: OnError,
    ) -> Stream:
        step_id = self.flow._step_id(name, kind)
        if not callable(fn):
            msg = f"step '{step_id}': {kind}() takes a function, got {type(fn).__name__}"
            raise ConfigError(msg)
        _check_literal(step_id, "on_error", on_error, ("dead_letter", "raise"))
        op = RecordOp(fn, kind, dict(schema) if schema else None, on_error)
        node = self.flow._add(
            "record", [(self.node.index, self.port)], op, step_id, schema=op.schema
        )
        return Stream(self.flow, node)

    def map(
        self,
        fn: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        schema: Mapping[str, pl.DataType] | None = None,
        on_error: OnError = "dead_letter",
        name: str | None = None,
    ) -> Stream:
        """Apply a Python function to each record (a dict); ``None`` drops the record.

        This is the per-record path: flexible, but each record costs a Python call. Give
        ``schema`` to fix the output types (otherwise they are inferred per batch). A function
        that raises sends the record to the dead letters (``on_error="raise"`` stops the job).
        """
        return self._record(
            "map", fn, name=name, schema=dict(schema) if schema else None, on_error=on_error
        )

    def flat_map(
        self,
        fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]],
        *,
        schema: Mapping[str, pl.DataType] | None = None,
        on_error: OnError = "dead_letter",
        name: str | None = None,
    ) -> Stream:
        """Apply a Python function returning zero or more records to each record."""
        return self._record(
            "flat_map", fn, name=name, schema=dict(schema) if schema else None, on_error=on_error
        )

    # -- shape of the graph -------------------------------------------------------------------
    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """Merge this stream with others (same columns) into one stream."""
        step_id = self.flow._step_id(name, "union")
        streams = [self, *others]
        for s in others:
            if s.flow is not self.flow:
                msg = f"step '{step_id}': cannot union streams of different dataflows"
                raise ConfigError(msg)
        known = [s.schema for s in streams if s.schema is not None]
        if len(known) == len(streams) and any(k != known[0] for k in known[1:]):
            detail = "; ".join(f"{s.step_id}: {list(s.schema or {})}" for s in streams)
            msg = (
                f"step '{step_id}': union needs the same columns and types on all inputs; {detail}"
            )
            raise ConfigError(msg)
        node = self.flow._add(
            "union",
            [(s.node.index, s.port) for s in streams],
            None,
            step_id,
            schema=known[0] if len(known) == len(streams) else None,
        )
        return Stream(self.flow, node)

    def split(self, *, name: str | None = None, **branches: pl.Expr) -> Split:
        """Route records into named branches by predicate; records matching none go to ``rest``.

        A record goes to every branch whose predicate holds.

        Examples
        --------
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource
        >>> flow = tf.Dataflow("s")
        >>> parts = flow.source(TestingSource([{"x": 1}])).split(
        ...     small=pl.col("x") < 10, big=pl.col("x") >= 10)
        >>> sorted(parts.names)
        ['big', 'rest', 'small']
        """
        step_id = self.flow._step_id(name, "split")
        if not branches:
            msg = f"step '{step_id}': split() needs at least one branch, e.g. big=pl.col('x') > 9"
            raise ConfigError(msg)
        if "rest" in branches:
            msg = f"step '{step_id}': 'rest' is reserved for records that match no branch"
            raise ConfigError(msg)
        for b, pred in branches.items():
            _check_name(b, "branch name")
            if not isinstance(pred, pl.Expr):
                msg = f"step '{step_id}': branch {b!r} needs a Polars expression"
                raise ConfigError(msg)
            if self.schema is not None:
                try:
                    _empty(self.schema).filter(pred)
                except pl.exceptions.PolarsError as exc:
                    first = str(exc).strip().splitlines()[0]
                    msg = f"step '{step_id}': branch {b!r}: {first}; input columns {list(self.schema)}"
                    raise ConfigError(msg) from None
        ports = (*branches, "rest")
        node = self.flow._add(
            "split",
            [(self.node.index, self.port)],
            dict(branches),
            step_id,
            schema=self.schema,
            ports=ports,
        )
        return Split(self.flow, node)

    def join_table(
        self,
        table: Stream | KeyedStream,
        *,
        on: str | list[str] | tuple[str, ...],
        how: Literal["left", "inner"] = "left",
        mode: Literal["auto", "bounded", "changelog"] = "auto",
        name: str | None = None,
    ) -> Stream:
        """Enrich records with the latest row per key of ``table`` (see ``docs/joins.md``).

        A bounded table (``mode="auto"`` when all its sources end) is loaded fully before
        stream records are joined; an unbounded one is a changelog: each row upserts its key
        and records join with the row current when they arrive. ``table`` may be keyed by
        other column names (``table.key_by("id")``); table columns that clash get ``_right``.

        Examples
        --------
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> flow = tf.Dataflow("t")
        >>> users = flow.source(TestingSource([{"user": 1, "tier": "gold"}]), name="users")
        >>> clicks = flow.source(TestingSource([{"user": 1, "n": 3}, {"user": 2, "n": 1}]))
        >>> out = CollectSink()
        >>> clicks.join_table(users, on="user").sink(out)
        >>> _ = tf.run(flow)
        >>> out.frame().sort("user").rows()
        [(1, 3, 'gold'), (2, 1, None)]
        """
        from tideflow.api._joins import join_table

        return join_table(self, table, on=on, how=how, mode=mode, name=name)

    def lookup(
        self,
        fn: Callable[[pl.DataFrame], pl.DataFrame],
        *,
        on: str | list[str] | tuple[str, ...],
        ttl: timedelta | None = None,
        max_size: int | None = None,
        how: Literal["left", "inner"] = "left",
        name: str | None = None,
    ) -> Stream:
        """Enrich records with ``fn(keys) -> rows``, called once per batch for uncached keys.

        ``fn`` gets a frame of the distinct keys missing from the cache and returns rows with
        the key columns plus the looked-up columns (keys it does not return stay null, and
        that answer is cached too). Entries expire ``ttl`` after they were fetched
        (processing time, the run clock); at most ``max_size`` keys stay cached (least
        recently used go first).

        Examples
        --------
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> def rates(keys):
        ...     return keys.with_columns(rate=pl.col("cur").replace_strict({"EUR": 1.1}, default=None))
        >>> flow = tf.Dataflow("l")
        >>> out = CollectSink()
        >>> flow.source(TestingSource([{"cur": "EUR", "x": 2}])).lookup(rates, on="cur").sink(out)
        >>> _ = tf.run(flow)
        >>> out.frame().rows()
        [('EUR', 2, 1.1)]
        """
        from tideflow.api._joins import lookup

        return lookup(self, fn, on=on, ttl=ttl, max_size=max_size, how=how, name=name)

    def key_by(self, *keys: str | pl.Expr) -> KeyedStream:
        """Key the stream by columns (or expressions, which become columns) for keyed operators.

        Records with equal keys meet on the same worker.
        """
        if not keys:
            msg = f"key_by() after step '{self.step_id}' needs at least one key column"
            raise ConfigError(msg)
        stream = self
        exprs = [k for k in keys if isinstance(k, pl.Expr)]
        names: list[str] = []
        for k in keys:
            if isinstance(k, str):
                names.append(k)
            elif isinstance(k, pl.Expr):
                names.append(k.meta.output_name())
            else:
                msg = f"key_by() after step '{self.step_id}' takes column names or expressions"
                raise ConfigError(msg)
        if exprs:
            stream = stream.with_columns(*exprs, name="key")
        if stream.schema is not None:
            missing = [k for k in names if k not in stream.schema]
            if missing:
                msg = (
                    f"key_by() after step '{stream.step_id}': no column {missing}; "
                    f"columns are {list(stream.schema)}"
                )
                raise ConfigError(msg)
        return KeyedStream(stream, tuple(names))

    def sink(self, sink: Sink, *, name: str | None = None) -> None:
        """Write this stream to a sink; ``name`` defaults to ``sink``."""
        step_id = self.flow._step_id(name, "sink")
        if not isinstance(sink, Sink):
            msg = (
                f"step '{step_id}': sink() takes a tideflow Sink (for example "
                f"files.sink_csv(...)), got {type(sink).__name__}"
            )
            raise ConfigError(msg)
        sink.validate(step_id)
        up: tuple[int, str] = (self.node.index, self.port)
        if sink.single_writer:
            gather = self.flow._add("exchange", [up], None, step_id + ".gather", schema=self.schema)
            up = (gather.index, "out")
        self.flow._add("sink", [up], sink, step_id)


def _port_schema(node: Node, port: str) -> Schema | None:
    if node.kind == "split" or port == "out":
        return node.schema
    if port == "dead":
        return dict(DEAD_LETTER_SCHEMA)
    return None


class Split:
    """Named branches of a :meth:`Stream.split`; each is a :class:`Stream` (``parts.big``)."""

    def __init__(self, flow: Dataflow, node: Node) -> None:
        self._streams = {p: Stream(flow, node, p) for p in node.ports}

    @property
    def names(self) -> tuple[str, ...]:
        """Branch names, ``rest`` last."""
        return tuple(self._streams)

    def __getattr__(self, item: str) -> Stream:
        try:
            return self._streams[item]
        except KeyError:
            msg = f"split has no branch {item!r}; branches are {list(self._streams)}"
            raise AttributeError(msg) from None

    def __getitem__(self, item: str) -> Stream:
        return self.__getattr__(item)


class KeyedStream:
    """A stream keyed by columns; keyed operators keep explicit per-key state."""

    def __init__(self, stream: Stream, keys: tuple[str, ...]) -> None:
        self.stream = stream
        self.keys = keys

    def __repr__(self) -> str:
        return f"KeyedStream({self.stream.step_id!r}, keys={list(self.keys)})"

    def _exchange(self, step_id: str) -> tuple[int, str]:
        s = self.stream
        node = s.flow._add(
            "exchange", [(s.node.index, s.port)], self.keys, step_id + ".exchange", schema=s.schema
        )
        return (node.index, "out")

    def agg(
        self,
        *aggs: pl.Expr,
        emit: Emit = "auto",
        ttl: timedelta | None = None,
        state: StateChoice | None = None,
        name: str | None = None,
    ) -> Stream:
        """Aggregate per key over the whole stream.

        ``aggs`` are Polars aggregations (``pl.len()``, ``pl.col("x").sum()``, ``.mean()``,
        ``.min()``, ``.max()``, ``.count()``, ``.n_unique()``, ``.top_k(k)``), computed
        incrementally per micro-batch. ``emit="updates"`` emits the new values of the keys each
        batch touched; ``emit="final"`` emits every key once when the input ends; ``"auto"`` is
        final for bounded inputs and updates otherwise. With ``ttl``, a key that gets no
        record for that long (processing time) is forgotten and starts fresh when it returns.
        ``state`` chooses where the per-key state lives: ``"memory"``, ``"disk"`` or a
        :class:`~tideflow.state.DiskState` (more keys than fit in memory); by default the
        run's choice (``tf.run(flow, state=...)``, memory unless told otherwise).

        Examples
        --------
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> flow = tf.Dataflow("doc_agg")
        >>> out = CollectSink()
        >>> rows = [{"card": "a", "amount": 5}, {"card": "b", "amount": 1}, {"card": "a", "amount": 2}]
        >>> flow.source(TestingSource(rows)).key_by("card").agg(
        ...     pl.col("amount").sum().alias("total"), state=tf.DiskState(cache_keys=1000)
        ... ).sink(out)
        >>> _ = tf.run(flow)
        >>> sorted(out.frame().rows())
        [('a', 7), ('b', 1)]
        """
        flow = self.stream.flow
        step_id = flow._step_id(name, "agg")
        _check_literal(step_id, "emit", emit, _EMITS)
        _check_ttl(step_id, ttl)
        backend = state_backend(state, f"step '{step_id}'")
        specs = parse_aggs(aggs, step_id)
        schema = self.stream.schema
        out_schema: Schema | None = None
        if schema is not None:
            needed = [s.column for s in specs if s.column is not None]
            missing = sorted({c for c in needed if c not in schema})
            if missing:
                msg = f"step '{step_id}': no column {missing} to aggregate; columns are {list(schema)}"
                raise ConfigError(msg)
            clash = [s.name for s in specs if s.name in self.keys]
            if clash:
                msg = f"step '{step_id}': aggregate names {clash} clash with the key; use .alias()"
                raise ConfigError(msg)
            out_schema = {k: schema[k] for k in self.keys}
            for s in specs:
                out_schema[s.name] = _agg_dtype(s, schema)
        combine = all(s.kind != "top_k" for s in specs)
        # n_unique: the rows themselves cross the shuffle (the columns read, nothing else); the
        # aggregation deduplicates their (key, value) pairs as integer codes, cheaper than a
        # combiner's per-key lists of distinct values.
        rows = any(s.kind == "n_unique" for s in specs)
        if combine:
            # Combiner: reduce each batch to one partial row per key before the shuffle.
            from tideflow.runtime._keyed import AggState

            exprs = AggState(self.keys, tuple(specs)).partial_exprs()
            keys = list(self.keys)
            cols = list(dict.fromkeys([*keys, *(s.column for s in specs if s.column)]))
            reads = frozenset(cols)

            def partial(df: pl.DataFrame) -> pl.DataFrame:
                return df.select(cols) if rows else df.group_by(keys).agg(exprs)

            pre = KeyedStream(
                self.stream._frame(
                    "combine", None, partial, "combine", user_fn=True, needs=lambda _: reads
                ),
                self.keys,
            )
            up = pre._exchange(step_id)
        else:
            up = self._exchange(step_id)
        op = AggOp(self.keys, tuple(specs), emit, combine and not rows, ttl, backend)
        if isinstance(backend, DiskState):
            check_disk_agg(step_id, op, schema, "state=DiskState")
        node = flow._add("agg", [up], op, step_id, schema=out_schema)
        return Stream(flow, node)

    def stateful_map(
        self,
        fn: Callable[[Any, dict[str, Any]], tuple[Any, Any]],
        *,
        init: Callable[[], Any],
        schema: Mapping[str, pl.DataType] | None = None,
        emit: Literal["updates", "final"] = "updates",
        on_error: OnError = "dead_letter",
        ttl: timedelta | None = None,
        name: str | None = None,
    ) -> Stream:
        """Run ``fn(state, record) -> (state, output)`` per record with per-key state.

        The state is explicit: it starts as ``init()`` for each new key, is kept by the runtime
        (and snapshotted with checkpoints; keep it to plain data: numbers, strings, lists,
        dicts), and is passed back on the key's next record. Returning ``None`` as the state
        forgets the key. ``output`` is ``None`` (nothing), a dict, or a list of dicts. With
        ``ttl``, a key that gets no record for that long (processing time) is forgotten.
        """
        flow = self.stream.flow
        step_id = flow._step_id(name, "stateful_map")
        if not callable(fn) or not callable(init):
            msg = f"step '{step_id}': stateful_map() needs a function fn and a callable init"
            raise ConfigError(msg)
        _check_literal(step_id, "emit", emit, ("updates", "final"))
        _check_literal(step_id, "on_error", on_error, ("dead_letter", "raise"))
        _check_ttl(step_id, ttl)
        up = self._exchange(step_id)
        sch = dict(schema) if schema else None
        op = StatefulMapOp(self.keys, fn, init, sch, on_error, emit, ttl)
        node = flow._add("stateful_map", [up], op, step_id, schema=sch)
        return Stream(flow, node)

    def window(
        self,
        spec: WindowSpec,
        *,
        clock: Clock = "event",
        allowed_lateness: timedelta = timedelta(0),
        early: timedelta | int | None = None,
    ) -> WindowedStream:
        """Cut each key's records into windows (see :mod:`tideflow.windows`).

        Finish with ``.agg(...)``, ``.reduce(fn)``, ``.fold(init, fn)`` or ``.apply(fn)``, which
        return a :class:`~tideflow.api.WindowOut` (``results`` and ``late``).

        Examples
        --------
        >>> from datetime import timedelta
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow import windows
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> rows = [{"k": "a", "t": 1_000, "v": 1}, {"k": "a", "t": 9_000, "v": 2},
        ...         {"k": "a", "t": 12_000, "v": 5}]
        >>> flow = tf.Dataflow("w")
        >>> out = CollectSink()
        >>> win = (flow.source(TestingSource(rows)).event_time("t", unit="ms").key_by("k")
        ...        .window(windows.tumbling(timedelta(seconds=10))).agg(pl.col("v").sum()))
        >>> win.results.sink(out)
        >>> _ = tf.run(flow)
        >>> out.frame().sort("window_start").select("k", "v").rows()
        [('a', 3), ('a', 5)]
        """
        return WindowedStream(
            self, spec, clock=clock, allowed_lateness=allowed_lateness, early=early
        )

    def join_window(
        self,
        other: KeyedStream,
        window: WindowSpec,
        *,
        how: Literal["inner", "left", "right", "full", "semi", "anti"] = "inner",
        name: str | None = None,
    ) -> JoinOut:
        """Join records of both streams that share key and window (tumbling or sliding).

        A window's pairs are emitted once the watermark (the minimum of both inputs) passes
        its end; outer joins add unmatched rows with nulls. Results carry the keys,
        ``window_start``, ``window_end`` and both sides' columns (``_right`` on clashes).
        ``how="semi"`` emits each left record that has at least one right record of its key
        in the window, once per window, with the left columns only (``"anti"``: those that
        have none); the right side then keeps only its keys per window.
        Records whose windows already fired go to ``late``.

        Examples
        --------
        >>> from datetime import timedelta
        >>> import tideflow as tf
        >>> from tideflow import windows
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> flow = tf.Dataflow("j")
        >>> a = flow.source(TestingSource([{"k": 1, "t": 1, "x": "a"}]), name="a")
        >>> b = flow.source(TestingSource([{"k": 1, "t": 4, "y": "b"}]), name="b")
        >>> a, b = a.event_time("t", unit="s").key_by("k"), b.event_time("t", unit="s").key_by("k")
        >>> out = CollectSink()
        >>> a.join_window(b, windows.tumbling(timedelta(seconds=10))).results.sink(out)
        >>> _ = tf.run(flow)
        >>> out.frame().select("k", "x", "y").rows()
        [(1, 'a', 'b')]
        """
        from tideflow.api._joins import join_window

        return join_window(self, other, window, how=how, name=name)

    def join_interval(
        self,
        other: KeyedStream,
        *,
        lower: timedelta | None,
        upper: timedelta | str | None,
        emit: Literal["arrival", "close"] = "arrival",
        left_unique: bool = False,
        best: BestMatch | None = None,
        left_where: pl.Expr | None = None,
        name: str | None = None,
    ) -> JoinOut:
        """Join each record at t with ``other``'s records of its key in ``[t+lower, t+upper]``.

        ``upper`` may also name a UTC timestamp column of this (left) side holding each
        record's own end, inclusive (an auction and its ``expires``: its bids are those with
        a time in ``[t + lower, expires]``); ``None`` leaves a side unbounded (a regular join
        on the key: buffers on that side are never pruned).

        With ``emit="arrival"`` a pair is emitted as soon as both records are there. With
        ``emit="close"`` the pairs of a left record are held until the watermark passes its
        end (no partner can come any more), then all of them are emitted together in one
        batch, so a per-record step after the join sees each left record's complete matches
        (a winning bid per auction). Buffered records are dropped once the watermark shows no
        partner can come. Records below the watermark go to ``late``.

        ``left_unique=True`` promises that each key comes at most once on this side (a
        primary key, such as an auction id): a right record whose left record has arrived is
        then never buffered, which keeps a regular join's state to the left records and the
        right records still waiting for theirs. Results are wrong if the promise is broken.

        ``best=BestMatch(by=[...], descending=[...])`` (with ``emit="close"``) keeps, per left
        record, only its best match so far in the order of those right-side columns, and emits
        that one pair when the interval closes (left records without a match emit nothing): the
        state is one row per open left record instead of every pair (an auction's winning
        bid). Ties keep the earlier arrival; see :class:`tideflow.BestMatch`.

        ``left_where`` (an expression over this side's columns) emits only the pairs of left
        records that meet it: the same results as ``.results.filter(left_where)``, without
        building the pairs it would drop. Every left record is still kept, so its right records
        meet it (and, with ``left_unique``, are not buffered). Not with ``best``.

        Examples
        --------
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> flow = tf.Dataflow("auctions")
        >>> auctions = flow.source(TestingSource(
        ...     [{"id": 1, "t": 0, "end": 10}, {"id": 2, "t": 5, "end": 6}],
        ...     schema={"id": pl.Int64(), "t": pl.Int64(), "end": pl.Int64()}), name="a"
        ... ).with_columns(end=pl.from_epoch("end", "s").dt.replace_time_zone("UTC"))
        >>> bids = flow.source(TestingSource(
        ...     [{"auction": 1, "t": 3, "price": 7}, {"auction": 2, "t": 8, "price": 9},
        ...      {"auction": 1, "t": 10, "price": 4}]), name="b")
        >>> auctions = auctions.event_time("t", unit="s").key_by("id")
        >>> bids = bids.event_time("t", unit="s").key_by("auction")
        >>> joined = auctions.join_interval(bids, lower=timedelta(0), upper="end", emit="close")
        >>> winners = auctions.join_interval(  # only the highest bid of each auction
        ...     bids, lower=timedelta(0), upper="end", emit="close",
        ...     best=tf.BestMatch("price", descending=True))
        >>> out, best = CollectSink(), CollectSink()
        >>> joined.results.sink(out)
        >>> winners.results.sink(best)
        >>> _ = tf.run(flow)
        >>> out.frame().select("id", "price").sort("price").rows()
        [(1, 4), (1, 7)]
        >>> best.frame().select("id", "price").rows()
        [(1, 7)]
        >>> flow = tf.Dataflow("early_bids")  # only the pairs of auction 1
        >>> a = flow.source(TestingSource([{"id": 1, "t": 0}, {"id": 2, "t": 5}]), name="a")
        >>> b = flow.source(TestingSource([{"auction": 1, "t": 3}, {"auction": 2, "t": 8}]),
        ...                 name="b")
        >>> ones = a.event_time("t", unit="s").key_by("id").join_interval(
        ...     b.event_time("t", unit="s").key_by("auction"), lower=None, upper=None,
        ...     left_unique=True, left_where=pl.col("id") == 1)
        >>> got = CollectSink()
        >>> ones.results.sink(got)
        >>> _ = tf.run(flow)
        >>> got.frame().select("id", "t_right").rows()
        [(1, datetime.datetime(1970, 1, 1, 0, 0, 3, tzinfo=zoneinfo.ZoneInfo(key='UTC')))]
        """
        from tideflow.api._joins import join_interval

        return join_interval(
            self,
            other,
            lower=lower,
            upper=upper,
            emit=emit,
            left_unique=left_unique,
            best=best,
            left_where=left_where,
            name=name,
        )

    def transform(
        self,
        fn: Callable[[pl.DataFrame, pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]],
        *,
        state: Mapping[str, pl.DataType],
        ttl: timedelta | None = None,
        name: str | None = None,
    ) -> Stream:
        """Vectorized keyed state: ``fn(batch, state) -> (output, new_state)`` per micro-batch.

        ``state`` declares the state columns (scalar types). ``fn`` receives the batch (rows
        of many keys, in arrival order) and the current state rows of the batch's keys that
        have state (key columns + state columns; keys without state are absent, so join with
        ``how="left"``). It returns its output rows and the new state rows (key columns +
        state columns, one row per key) that replace the old ones. The runtime keeps the state,
        snapshots it with checkpoints and restores it. With ``ttl``, the state row of a key
        that gets no record for that long (processing time) is dropped.

        Examples
        --------
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> def running_total(batch, state):
        ...     df = batch.join(state, on="k", how="left").with_columns(
        ...         total=pl.col("v").cum_sum().over("k") + pl.col("total").fill_null(0))
        ...     return df.select("k", "v", "total"), df.group_by("k").agg(pl.col("total").last())
        >>> flow = tf.Dataflow("t")
        >>> out = CollectSink()
        >>> rows = [{"k": "a", "v": 1}, {"k": "a", "v": 2}, {"k": "b", "v": 5}, {"k": "a", "v": 3}]
        >>> flow.source(TestingSource(rows, batch_size=2)).key_by("k").transform(
        ...     running_total, state={"total": pl.Int64()}).sink(out)
        >>> _ = tf.run(flow)
        >>> out.frame().filter(pl.col("k") == "a")["total"].to_list()
        [1, 3, 6]
        """
        flow = self.stream.flow
        step_id = flow._step_id(name, "transform")
        if not callable(fn):
            msg = f"step '{step_id}': transform() needs a function fn(batch, state)"
            raise ConfigError(msg)
        if not state:
            msg = (
                f"step '{step_id}': transform() needs state columns, e.g. state={{'n': pl.Int64()}}"
            )
            raise ConfigError(msg)
        bad = [c for c, t in state.items() if isinstance(t, (pl.List, pl.Array, pl.Struct))]
        if bad or any(c in self.keys for c in state):
            msg = (
                f"step '{step_id}': state columns must be scalar types and not key columns; "
                f"check {bad or [c for c in state if c in self.keys]}"
            )
            raise ConfigError(msg)
        _check_ttl(step_id, ttl)
        up = self._exchange(step_id)
        op = TransformOp(self.keys, fn, dict(state), ttl)
        node = flow._add("keyed_transform", [up], op, step_id)
        return Stream(flow, node)

    def top_n(
        self,
        n: int,
        *,
        by: str | list[str] | tuple[str, ...],
        descending: bool | list[bool] | tuple[bool, ...] = False,
        rank: str | None = None,
        emit: Emit = "auto",
        name: str | None = None,
    ) -> Stream:
        """Keep the first ``n`` rows of each key in the order ``by``, vectorized.

        Rows are ordered by the ``by`` columns (each ascending, or descending as
        ``descending`` says; nulls last); rows that compare equal keep their arrival order,
        so the earlier arrival ranks first. ``rank`` adds a 1-based rank column. The state
        is at most ``n`` rows per key in a key-indexed row store (no Python object per key or
        record); a batch is merged with the kept rows of its own keys only.
        ``emit="updates"`` emits, after each batch, the current top rows of the keys the
        batch touched (all of them, ranked); ``emit="final"`` emits every key's top rows once
        when the input ends; ``"auto"`` is final for bounded inputs and updates otherwise.
        The latest record per key is ``top_n(1, by=[time, ...], descending=True)``.

        Examples
        --------
        >>> import tideflow as tf
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> rows = [{"auction": 1, "bidder": "a", "price": 5},
        ...         {"auction": 1, "bidder": "b", "price": 9},
        ...         {"auction": 2, "bidder": "c", "price": 3},
        ...         {"auction": 1, "bidder": "d", "price": 9}]
        >>> flow = tf.Dataflow("top")
        >>> out = CollectSink()
        >>> flow.source(TestingSource(rows)).key_by("auction").top_n(
        ...     2, by="price", descending=True, rank="rank").sink(out)
        >>> _ = tf.run(flow)
        >>> out.frame().sort("auction", "rank").rows()
        [(1, 'b', 9, 1), (1, 'd', 9, 2), (2, 'c', 3, 1)]
        """
        flow = self.stream.flow
        step_id = flow._step_id(name, "top_n")
        _check_literal(step_id, "emit", emit, _EMITS)
        cols = (by,) if isinstance(by, str) else tuple(by)
        desc = (descending,) * len(cols) if isinstance(descending, bool) else tuple(descending)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            msg = f"step '{step_id}': top_n() needs n >= 1, got {n!r}"
            raise ConfigError(msg)
        if not cols or len(desc) != len(cols):
            msg = (
                f"step '{step_id}': top_n() needs by=<column(s)> and one descending flag per "
                f"column; got by={list(cols)}, descending={list(desc)}"
            )
            raise ConfigError(msg)
        schema = self.stream.schema
        out_schema: Schema | None = None
        if schema is not None:
            missing = [c for c in cols if c not in schema]
            if missing:
                msg = (
                    f"step '{step_id}': no column {missing} to order by; columns are {list(schema)}"
                )
                raise ConfigError(msg)
            if rank is not None and rank in schema:
                msg = f"step '{step_id}': rank={rank!r} is already a column; choose another name"
                raise ConfigError(msg)
            out_schema = dict(schema)
            if rank is not None:
                out_schema[rank] = pl.Int64()
        up = self._exchange(step_id)
        op = TopNOp(self.keys, n, cols, desc, rank, emit)
        node = flow._add("top_n", [up], op, step_id, schema=out_schema)
        return Stream(flow, node)

    def reduce(
        self,
        fn: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
        *,
        emit: Literal["updates", "final"] = "updates",
        name: str | None = None,
    ) -> Stream:
        """Combine each key's records pairwise with ``fn(acc, record) -> acc`` (per record)."""

        def step(acc: Any, rec: dict[str, Any]) -> tuple[Any, Any]:
            new = rec if acc is None else fn(acc, rec)
            return new, new

        return self.stateful_map(step, init=_none, emit=emit, name=name or "reduce")


def _none() -> None:
    return None


def _agg_dtype(spec: AggSpec, schema: Schema) -> pl.DataType:
    if spec.kind in ("count", "count_non_null", "n_unique"):
        return pl.Int64()
    assert spec.column is not None
    src = schema[spec.column]
    if spec.kind == "mean":
        return pl.Float64()
    if spec.kind == "sum":
        return pl.Int64() if src.is_integer() else pl.Float64()
    if spec.kind == "top_k":
        return pl.List(src)
    return src
