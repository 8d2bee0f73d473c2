"""Window settings and the windowed-stream API.

Windows are half-open ``[start, end)``. Tumbling windows of size S are aligned to the epoch
(plus an optional offset). Sliding windows of size S and hop H: a record belongs to every window
whose range contains it. Session windows with gap G: records of a key closer than G share a
session, which ends G after its last record. Count windows: every N records of a key.

A window's result is emitted once the watermark reaches its end (``final``). Within
``allowed_lateness`` after that, a late record updates the window and the new result is emitted
again (``update``); later records go to the ``late`` stream with the reason. ``early`` asks for
results before the end (``early``): every so often (a ``timedelta``, processing time) or every
N records (an ``int``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from tideflow._errors import ConfigError
from tideflow.api._aggs import AggSpec, parse_aggs
from tideflow.state._backends import DiskState, StateBackend, StateChoice, state_backend

if TYPE_CHECKING:
    from tideflow.api._dataflow import KeyedStream, Stream

__all__ = [
    "Clock",
    "Count",
    "Session",
    "Sliding",
    "Tumbling",
    "WindowCombineOp",
    "WindowOp",
    "WindowOut",
    "WindowSelectOp",
    "WindowSpec",
    "WindowedStream",
    "count",
    "session",
    "sliding",
    "tumbling",
]

Clock = Literal["event", "processing"]


@dataclasses.dataclass(frozen=True, slots=True)
class Tumbling:
    """Fixed, non-overlapping windows of ``size``, aligned to the epoch plus ``offset``."""

    size: timedelta
    offset: timedelta = timedelta(0)


@dataclasses.dataclass(frozen=True, slots=True)
class Sliding:
    """Windows of ``size`` starting every ``hop`` (aligned to the epoch plus ``offset``)."""

    size: timedelta
    hop: timedelta
    offset: timedelta = timedelta(0)


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """Per-key sessions: records closer than ``gap`` belong together."""

    gap: timedelta


@dataclasses.dataclass(frozen=True, slots=True)
class Count:
    """Every ``n`` records of a key form a window."""

    n: int


WindowSpec = Tumbling | Sliding | Session | Count


def tumbling(size: timedelta, *, offset: timedelta = timedelta(0)) -> Tumbling:
    """Tumbling windows of ``size``.

    Examples
    --------
    >>> tumbling(timedelta(seconds=10))
    Tumbling(size=datetime.timedelta(seconds=10), offset=datetime.timedelta(0))
    """
    return Tumbling(size, offset)


def sliding(size: timedelta, hop: timedelta, *, offset: timedelta = timedelta(0)) -> Sliding:
    """Sliding (hopping) windows of ``size`` every ``hop``."""
    return Sliding(size, hop, offset)


def session(gap: timedelta) -> Session:
    """Session windows closing after ``gap`` without records of the key."""
    return Session(gap)


def count(n: int) -> Count:
    """Count windows of ``n`` records per key."""
    return Count(n)


def _us(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


@dataclasses.dataclass(frozen=True, slots=True)
class WindowOp:
    """Settings of a window step (what runs is built from this on each worker)."""

    keys: tuple[str, ...]
    spec: WindowSpec
    clock: Clock
    time_column: str | None
    lateness_us: int
    early: timedelta | int | None
    #: Incremental aggregations, or None when ``fn`` is used.
    aggs: tuple[AggSpec, ...] | None
    #: ``("reduce", fn)``, ``("fold", (init, fn))`` or ``("apply", fn)`` over a window's records,
    #: or ``("max_by", column)``: the records carrying the largest value (vectorized, mergeable).
    fn: tuple[str, Any] | None
    #: Emit the ``result`` column (early/final/update); on when lateness or early is set.
    mark: bool
    #: Where open windows live (None: memory); DiskState spills them to files.
    state: StateBackend | None = None
    #: ``agg(..., max_per_window=name)``: a firing keeps only the results carrying the largest
    #: value of this aggregate over the window's keys (a :class:`WindowSelectOp` step then
    #: merges the workers' selections).
    select: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WindowCombineOp:
    """Settings of the combiner a tumbling/sliding window runs before its exchange.

    It pre-aggregates the records whose windows are all still open, per key and *pane* (the
    gcd of size and hop: every record of a pane belongs to the same windows), into the
    mergeable partials of ``window`` (or, for ``max_by``, the pane's leading records); those
    travel on port ``partial``. Other records pass unchanged on ``out``: the window decides
    whether they are late, as without a combiner. Results are exactly those without one.
    """

    window: WindowOp


@dataclasses.dataclass(frozen=True, slots=True)
class WindowSelectOp:
    """Settings of the step after a window with ``max_per_window``: it merges each window's
    selected results from all workers and keeps the rows carrying the largest ``column``.

    Its input is exchanged by ``keys`` (``window_start``), so one worker sees all candidates
    of a window; a window's candidates are complete once the watermark reaches its end (every
    worker emits them before its watermark passes that end). With one worker the window's own
    selection is final and rows pass through.
    """

    column: str
    keys: tuple[str, ...] = ("window_start",)


@dataclasses.dataclass(frozen=True, slots=True)
class WindowOut:
    """Outputs of a window step: ``results`` and the ``late`` records (with ``late_reason``)."""

    results: Stream
    late: Stream


class WindowedStream:
    """A keyed stream cut into windows; finish it with :meth:`agg`, :meth:`reduce`,
    :meth:`fold` or :meth:`apply`."""

    def __init__(
        self,
        keyed: KeyedStream,
        spec: WindowSpec,
        *,
        clock: Clock,
        allowed_lateness: timedelta,
        early: timedelta | int | None,
    ) -> None:
        self.keyed = keyed
        self.spec = spec
        self.clock = clock
        self.allowed_lateness = allowed_lateness
        self.early = early

    def _check(self, step_id: str) -> str | None:
        spec, stream = self.spec, self.keyed.stream
        if self.clock not in ("event", "processing"):
            msg = f"step '{step_id}': clock={self.clock!r} is not one of ['event', 'processing']"
            raise ConfigError(msg)
        if isinstance(spec, Tumbling | Sliding) and spec.size <= timedelta(0):
            msg = f"step '{step_id}': window size must be > 0, got {spec.size}"
            raise ConfigError(msg)
        if isinstance(spec, Sliding) and (spec.hop <= timedelta(0) or spec.hop > spec.size):
            msg = f"step '{step_id}': sliding hop must be > 0 and <= size, got {spec.hop}"
            raise ConfigError(msg)
        if isinstance(spec, Session) and spec.gap <= timedelta(0):
            msg = f"step '{step_id}': session gap must be > 0, got {spec.gap}"
            raise ConfigError(msg)
        if isinstance(spec, Count) and (not isinstance(spec.n, int) or spec.n < 1):
            msg = f"step '{step_id}': count windows need n >= 1, got {spec.n!r}"
            raise ConfigError(msg)
        if not isinstance(spec, Tumbling | Sliding | Session | Count):
            msg = f"step '{step_id}': unknown window {spec!r}; use windows.tumbling/sliding/session/count"
            raise ConfigError(msg)
        if self.allowed_lateness < timedelta(0):
            msg = f"step '{step_id}': allowed_lateness must be >= 0"
            raise ConfigError(msg)
        early = self.early
        if early is not None and not (
            (isinstance(early, timedelta) and early > timedelta(0))
            or (isinstance(early, int) and early > 0)
        ):
            msg = f"step '{step_id}': early must be a positive timedelta or record count"
            raise ConfigError(msg)
        time_col = stream.time_column
        if self.clock == "event" and time_col is None and not isinstance(spec, Count):
            msg = (
                f"step '{step_id}': event-time windows need an event-time column; declare it "
                "upstream with .event_time('column', ...) or use clock='processing'"
            )
            raise ConfigError(msg)
        return time_col

    def _build(
        self,
        kind: str,
        name: str | None,
        aggs: tuple[pl.Expr, ...] | None,
        fn: tuple[str, Any] | None,
        state: StateChoice | None = None,
        select: str | None = None,
    ) -> WindowOut:
        from tideflow.api._dataflow import Stream

        stream = self.keyed.stream
        flow = stream.flow
        step_id = flow._step_id(name, kind)
        time_col = self._check(step_id)
        backend = state_backend(state, f"step '{step_id}'")
        if isinstance(backend, DiskState) and (
            not isinstance(self.spec, Tumbling | Sliding) or self.early is not None
        ):
            msg = (
                f"step '{step_id}': state=DiskState spills tumbling and sliding windows without "
                "early results; use state='memory' for session/count windows or early="
            )
            raise ConfigError(msg)
        specs = tuple(parse_aggs(aggs, step_id)) if aggs is not None else None
        schema = stream.schema
        if specs is not None and schema is not None:
            missing = sorted({s.column for s in specs if s.column and s.column not in schema})
            if missing:
                msg = f"step '{step_id}': no column {missing} to aggregate; columns are {list(schema)}"
                raise ConfigError(msg)
        if fn is not None and fn[0] == "max_by":
            if not isinstance(self.spec, Tumbling | Sliding):
                msg = (
                    f"step '{step_id}': max_by() takes tumbling or sliding windows, got "
                    f"{self.spec!r}; use .apply(...) for session and count windows"
                )
                raise ConfigError(msg)
            if schema is not None and fn[1] not in schema:
                msg = (
                    f"step '{step_id}': no column {fn[1]!r} for max_by; columns are {list(schema)}"
                )
                raise ConfigError(msg)
        mark = self.allowed_lateness > timedelta(0) or self.early is not None
        if select is not None:
            self._check_select(step_id, select, specs, backend)
        op = WindowOp(
            self.keyed.keys,
            self.spec,
            self.clock,
            time_col,
            _us(self.allowed_lateness),
            self.early,
            specs,
            fn,
            mark,
            backend,
            select,
        )
        inputs = self._inputs(step_id, op)
        node = flow._add("window", inputs, op, step_id, ports=("out", "late"))
        if self.clock == "event" and not isinstance(self.spec, Count):
            # A result happens at its window's end: it is emitted just before the watermark
            # passes that end, so windows and joins downstream can use it as event time.
            node.time_column = "window_end"
        late = Stream(flow, node, "late")
        if select is None:
            return WindowOut(Stream(flow, node, "out"), late)
        # Each worker's firing selected among its own keys; one worker per window (by its
        # start) merges those selections once the watermark reaches the window's end.
        sel = WindowSelectOp(select)
        part = flow._add("exchange", [(node.index, "out")], sel.keys, step_id + ".exchange_select")
        merge = flow._add("window", [(part.index, "out")], sel, step_id + ".select")
        merge.time_column = "window_end"
        return WindowOut(Stream(flow, merge, "out"), late)

    def _check_select(
        self,
        step_id: str,
        select: str,
        specs: tuple[AggSpec, ...] | None,
        backend: StateBackend | None,
    ) -> None:
        """``max_per_window``: an aggregate's name, on event-time tumbling/sliding windows
        whose results are final (no allowed lateness, no early results) and kept in memory."""
        names = [s.name for s in specs or ()]
        if select not in names:
            msg = (
                f"step '{step_id}': max_per_window={select!r} names no aggregate of this "
                f"window; aggregates are {names}"
            )
            raise ConfigError(msg)
        if not isinstance(self.spec, Tumbling | Sliding) or self.clock != "event":
            msg = (
                f"step '{step_id}': max_per_window takes event-time tumbling or sliding "
                f"windows, got {self.spec!r} with clock={self.clock!r}; select afterwards "
                "with a keyed step instead"
            )
            raise ConfigError(msg)
        if (
            self.allowed_lateness > timedelta(0)
            or self.early is not None
            or isinstance(backend, DiskState)
        ):
            msg = (
                f"step '{step_id}': max_per_window needs final results kept in memory; drop "
                "allowed_lateness=, early= and state='disk' (a late update could change "
                "another key's selection)"
            )
            raise ConfigError(msg)

    def _inputs(self, step_id: str, op: WindowOp) -> list[tuple[int, str]]:
        """The window's inputs: the keyed exchange, and the combiner's when one fits."""
        from tideflow.api._dataflow import KeyedStream, Stream

        stream = self.keyed.stream
        if not _combinable(op):
            return [self.keyed._exchange(step_id)]
        flow = stream.flow
        comb = flow._add(
            "window",
            [(stream.node.index, stream.port)],
            WindowCombineOp(op),
            step_id + ".combine",
            schema=stream.schema,
            ports=("out", "partial"),
        )
        comb.time_column = stream.time_column
        raw = KeyedStream(Stream(flow, comb, "out"), op.keys)._exchange(step_id)
        part = flow._add(
            "exchange", [(comb.index, "partial")], op.keys, step_id + ".exchange_partial"
        )
        return [raw, (part.index, "out")]

    def agg(
        self,
        *aggs: pl.Expr,
        max_per_window: str | None = None,
        state: StateChoice | None = None,
        name: str | None = None,
    ) -> WindowOut:
        """Aggregate each key's window with Polars aggregations (vectorized, incremental).

        Results carry the key columns, ``window_start``, ``window_end`` (count windows:
        ``window``, the window's number per key) and the aggregates. ``state="disk"`` or a
        :class:`~tideflow.state.DiskState` spills open tumbling/sliding windows to files once
        they hold more than ``cache_keys`` partial rows (many keys per window).

        ``max_per_window`` names an aggregate: of each window, only the results carrying its
        largest value over all keys are emitted (every tied key; a null value never wins),
        a top-per-window selection done in the window's firing (one merge and one selection
        per window). Event-time tumbling and sliding windows without ``allowed_lateness``,
        ``early`` or on-disk ``state``. With several workers, each selects among its keys and one
        worker per window merges the selections when the watermark reaches the window's end.

        Examples
        --------
        >>> from datetime import timedelta
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow import windows
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> bids = [{"item": i, "t": t} for i, t in [("a", 1), ("b", 2), ("b", 3), ("c", 4),
        ...                                          ("c", 5), ("a", 12), ("b", 13)]]
        >>> flow = tf.Dataflow("hottest")
        >>> out = CollectSink()
        >>> (flow.source(TestingSource(bids)).event_time("t", unit="s").key_by("item")
        ...  .window(windows.tumbling(timedelta(seconds=10)))
        ...  .agg(pl.len().alias("bids"), max_per_window="bids").results.sink(out))
        >>> _ = tf.run(flow)
        >>> out.frame().sort("window_start", "item").select("item", "bids").rows()
        [('b', 2), ('c', 2), ('a', 1), ('b', 1)]
        """
        return self._build("window", name, aggs, None, state, max_per_window)

    def reduce(
        self,
        fn: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
        *,
        name: str | None = None,
    ) -> WindowOut:
        """Combine a window's records pairwise, ``fn(acc, record) -> acc`` (per record)."""
        return self._build("window", name, None, ("reduce", fn))

    def fold(
        self,
        init: Callable[[], Any],
        fn: Callable[[Any, dict[str, Any]], Any],
        *,
        name: str | None = None,
    ) -> WindowOut:
        """Fold a window's records into ``fn(acc, record) -> acc`` from ``init()``.

        A dict accumulator becomes columns of the result; anything else a ``value`` column.
        """
        return self._build("window", name, None, ("fold", (init, fn)))

    def apply(
        self, fn: Callable[[pl.DataFrame], pl.DataFrame], *, name: str | None = None
    ) -> WindowOut:
        """Call ``fn`` with all records of a key's window (a DataFrame); it returns rows."""
        return self._build("window", name, None, ("apply", fn))

    def max_by(self, column: str, *, name: str | None = None) -> WindowOut:
        """The records carrying the largest ``column`` of each key's window (all of them on ties).

        Tumbling and sliding windows. Vectorized and mergeable: each micro-batch keeps only its
        candidates (the records tied for its largest value per key and window) and a window
        holds only its current leaders, never all its records. Records whose value is null
        never win. Results carry the key columns, ``window_start``, ``window_end`` and the
        records' columns.

        Examples
        --------
        >>> from datetime import timedelta
        >>> import polars as pl
        >>> import tideflow as tf
        >>> from tideflow import windows
        >>> from tideflow.testing import TestingSource, CollectSink
        >>> bids = [{"item": "a", "t": 1, "price": 5, "who": "x"},
        ...         {"item": "a", "t": 4, "price": 9, "who": "y"},
        ...         {"item": "a", "t": 7, "price": 9, "who": "z"},
        ...         {"item": "a", "t": 12, "price": 3, "who": "x"}]
        >>> flow = tf.Dataflow("top_bids")
        >>> out = CollectSink()
        >>> (flow.source(TestingSource(bids)).event_time("t", unit="s").key_by("item")
        ...  .window(windows.tumbling(timedelta(seconds=10))).max_by("price").results.sink(out))
        >>> _ = tf.run(flow)
        >>> out.frame().sort("window_start", "who").select("price", "who").rows()
        [(9, 'y'), (9, 'z'), (3, 'x')]
        """
        return self._build("window", name, None, ("max_by", column))


def _combinable(op: WindowOp) -> bool:
    """True for the windows a combiner before the exchange can serve: mergeable finishers
    (``agg``, ``max_by``) of event-time tumbling/sliding windows in memory, without early
    results."""
    if op.clock != "event" or not isinstance(op.spec, Tumbling | Sliding):
        return False
    if op.state is not None or op.early is not None:
        return False
    return op.aggs is not None or (op.fn is not None and op.fn[0] == "max_by")
