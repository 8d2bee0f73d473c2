"""One worker: runs every step of the dataflow for its share of the data.

Every worker runs the whole graph (as in timely/Bytewax). Sources are split between workers;
at a key boundary an *exchange* hash-partitions each batch by key and sends the other workers'
shares to them, so equal keys meet on one worker. Batches move by push: a source batch runs
through all following steps before the next is read. Messages between workers carry Arrow IPC
bytes. Sends never block; instead a worker stops reading its sources while too many of its
batches wait unread at a peer (backpressure without deadlock).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import gc
import io
import logging
import queue
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from tideflow._errors import JobError, TideflowError
from tideflow.api._graph import Node
from tideflow.connectors._base import SinkWriter, SourceContext, SourceReader
from tideflow.runtime._frames import concat
from tideflow.runtime._operators import FinishedOperator, Operator, SinkOperator, build_operator
from tideflow.runtime._projection import project_sources
from tideflow.state._backends import DiskState, StateBackend
from tideflow.state._resume import FINISHED, JOB, finished
from tideflow.state._savepoint import fulfil_requests
from tideflow.state._store import CheckpointStore

__all__ = [
    "LATENCY_BUCKETS",
    "WM_MAX",
    "WM_MIN",
    "LocalTransport",
    "QueueTransport",
    "RunConfig",
    "StepStats",
    "Worker",
]

#: Watermarks are int64 microseconds since the epoch (UTC); these are -inf and +inf.
WM_MIN = -(2**63)
WM_MAX = 2**63 - 1

log = logging.getLogger("tideflow.runtime")

#: Upper bounds (seconds) of the batch latency histogram buckets; a last bucket takes the rest.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _no_latency() -> list[int]:
    return [0] * (len(LATENCY_BUCKETS) + 1)


@dataclasses.dataclass(frozen=True, slots=True)
class RunConfig:
    """How a job runs. One knob for throughput vs latency: ``batch_size`` and ``max_delay``."""

    workers: int = 1
    #: Rows per micro-batch read from a source (large: throughput; small: latency).
    batch_size: int = 65_536
    #: Longest time a source holds rows back to fill a batch.
    max_delay: timedelta = timedelta(milliseconds=100)
    #: How often sinks are asked to make what they got visible.
    flush_interval: timedelta = timedelta(seconds=1)
    #: Batches a worker may have waiting unread at one peer before it pauses its sources.
    max_inflight: int = 16
    #: Where dead letters go when the flow does not sink ``flow.dead_letters`` itself.
    dead_letter_path: Path | None = None
    resume: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: With several workers: what each resumes from (``resume`` is worker 0's).
    resume_parts: list[dict[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    #: Processing-time clock (seconds since the epoch); tests pass a fake one.
    clock: Callable[[], float] = time.time
    #: Checkpoint directory (None: no checkpoints; exactly-once sinks commit at the end).
    checkpoint_dir: Path | None = None
    #: How often a checkpoint is taken.
    checkpoint_interval: timedelta = timedelta(seconds=10)
    #: Complete checkpoints retained.
    checkpoint_keep: int = 3
    #: Id of the next checkpoint (one more than the newest in the directory).
    checkpoint_next: int = 1
    #: Process id of the driver that owns the checkpoints being written.
    checkpoint_owner: int = 0
    #: Written into every manifest (flow name, worker count).
    checkpoint_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Where keyed state lives for steps that do not choose (None: memory).
    state: StateBackend | None = None
    #: How far (event time) a source's watermark may run ahead of the slowest source still
    #: reading before it is paused (None: sources are never paced).
    source_drift: timedelta | None = timedelta(0)


@dataclasses.dataclass(slots=True)
class StepStats:
    """Counters of one step on one worker (summed over workers in a run result)."""

    rows_in: int = 0
    rows_out: int = 0
    dead: int = 0
    batches: int = 0
    #: Records a window step sent to its late output.
    late: int = 0
    #: The step's output watermark in epoch milliseconds (the minimum over workers; None
    #: before the first watermark or after the input ended).
    watermark: int | None = None
    #: Batch latency histogram: how many output batches fell in each bucket of
    #: :data:`LATENCY_BUCKETS` (not cumulative; the last count is above the largest bound). A
    #: batch's latency at a step is the time from its source batch entering the graph to the
    #: step emitting its result (a sink: to the sink's write returning).
    latency: list[int] = dataclasses.field(default_factory=_no_latency)
    #: Sum of the latencies counted in ``latency``, in seconds.
    latency_sum: float = 0.0
    #: Seconds this step's operator spent on its input batches (downstream steps excluded).
    busy_s: float = 0.0
    #: Seconds a source was paused because a peer had too many of this worker's batches
    #: waiting unread (backpressure); 0 for other steps and with one worker.
    blocked_s: float = 0.0
    #: Online-model evaluation steps (``tideflow.ml.evaluate``): the metric's name, its latest
    #: value (with per-key models: the mean over the keys of the latest batch) and the records
    #: evaluated when it was taken.
    metric: str | None = None
    metric_value: float | None = None
    metric_n: int = 0

    def add(self, other: StepStats) -> None:
        """Add another worker's counters."""
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.dead += other.dead
        self.batches += other.batches
        self.late += other.late
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.latency_sum += other.latency_sum
        self.busy_s += other.busy_s
        self.blocked_s += other.blocked_s
        if other.metric_value is not None:
            if self.metric_value is None or self.metric_n + other.metric_n == 0:
                self.metric_value = other.metric_value
            else:
                total = self.metric_n + other.metric_n
                self.metric_value = (
                    self.metric_value * self.metric_n + other.metric_value * other.metric_n
                ) / total
            self.metric = other.metric
            self.metric_n += other.metric_n
        if other.watermark is not None:
            self.watermark = (
                other.watermark if self.watermark is None else min(self.watermark, other.watermark)
            )


# -- transports -------------------------------------------------------------------------------
class LocalTransport:
    """One worker: nothing to exchange."""

    worker_index = 0
    worker_count = 1

    def send(self, dest: int, msg: tuple[Any, ...]) -> None:  # pragma: no cover - never called
        raise AssertionError("a single worker has no peers")

    def recv(self, timeout: float) -> tuple[Any, ...] | None:
        if timeout > 0:
            time.sleep(timeout)
        return None

    def backlogged(self) -> bool:
        return False


class QueueTransport:
    """Worker-to-worker messages over multiprocessing queues, with credit counters."""

    def __init__(
        self, index: int, count: int, inboxes: list[Any], sent: Any, received: Any, limit: int
    ) -> None:
        self.worker_index = index
        self.worker_count = count
        self.inboxes = inboxes
        self.sent = sent  # sent[s * count + d], written by sender s only
        self.received = received  # received[s * count + d], written by receiver d only
        self.limit = limit

    def send(self, dest: int, msg: tuple[Any, ...]) -> None:
        self.inboxes[dest].put(msg)
        self.sent[self.worker_index * self.worker_count + dest] += 1

    def recv(self, timeout: float) -> tuple[Any, ...] | None:
        try:
            msg = (
                self.inboxes[self.worker_index].get(timeout=timeout)
                if timeout > 0
                else (self.inboxes[self.worker_index].get_nowait())
            )
        except queue.Empty:
            return None
        assert isinstance(msg, tuple)
        sender = msg[2]
        if sender >= 0:  # -1: a control message of the driver (checkpoint, commit, exit)
            self.received[sender * self.worker_count + self.worker_index] += 1
        return msg

    def backlogged(self) -> bool:
        me, n = self.worker_index, self.worker_count
        return any(
            self.sent[me * n + d] - self.received[me * n + d] > self.limit
            for d in range(n)
            if d != me
        )


def _to_ipc(batch: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    batch.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def _from_ipc(data: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(data))


# -- exchange ----------------------------------------------------------------------------------
class ExchangeOperator(Operator):
    """Hash-partitions batches by key between workers (or gathers them on worker 0)."""

    defers_end = True

    def __init__(self, node: Node, ctx: _NodeContext, worker: Worker) -> None:
        super().__init__(node, ctx)
        self.keys: tuple[str, ...] | None = node.spec
        self.worker = worker
        self.local_ended = False
        self.peer_ends = 0
        #: Peers whose end of input arrived here (nothing more comes from them).
        self.ended_senders: set[int] = set()
        self._init_wm()

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        w = self.worker
        n, me = w.transport.worker_count, w.transport.worker_index
        if n == 1 or batch.height == 0:
            self.ctx.emit(batch)
            return
        if self.keys is None:
            if me == 0:
                self.ctx.emit(batch)
            else:
                w.transport.send(0, ("D", self.node.index, me, (_to_ipc(batch), w.origin)))
            return
        keys = list(self.keys)
        h = pl.col(keys[0]).hash(seed=7) if len(keys) == 1 else pl.struct(keys).hash(seed=7)
        parts = batch.with_columns((h % n).alias("__dest")).partition_by(
            "__dest", as_dict=True, include_key=False
        )
        for (dest,), part in parts.items():
            if dest == me:
                self.ctx.emit(part)
            else:
                w.transport.send(int(dest), ("D", self.node.index, me, (_to_ipc(part), w.origin)))

    def _init_wm(self) -> None:
        n = self.worker.transport.worker_count
        self.sender_wm = [WM_MIN] * n
        self.sender_idle = [False] * n

    def _senders(self) -> list[int]:
        n, me = self.worker.transport.worker_count, self.worker.transport.worker_index
        if self.keys is None and me != 0:
            return [me]  # gathered data only reaches worker 0; this copy sees local input only
        return list(range(n))

    def _combine_wm(self) -> None:
        senders = self._senders()
        active = [self.sender_wm[s] for s in senders if not self.sender_idle[s]]
        if active:
            self.ctx.watermark(min(active))
        else:
            # Every sender is idle: release what they promised (the largest watermark).
            self.ctx.watermark(max(self.sender_wm[s] for s in senders), idle=True)

    def on_watermark(self, wm: int, idle: bool = False) -> None:
        w = self.worker
        n, me = w.transport.worker_count, w.transport.worker_index
        self.sender_wm[me], self.sender_idle[me] = wm, idle
        if n > 1:
            dests = [0] if self.keys is None else range(n)
            for d in dests:
                if d != me:
                    w.transport.send(d, ("W", self.node.index, me, (wm, idle)))
        self._combine_wm()

    def peer_watermark(self, sender: int, wm: int, idle: bool) -> None:
        self.sender_wm[sender] = max(self.sender_wm[sender], wm)
        self.sender_idle[sender] = idle
        self._combine_wm()

    def on_end(self) -> None:
        w = self.worker
        n, me = w.transport.worker_count, w.transport.worker_index
        self.local_ended = True
        if self.keys is None:
            if me != 0:
                w.transport.send(0, ("E", self.node.index, me, None))
        else:
            for d in range(n):
                if d != me:
                    w.transport.send(d, ("E", self.node.index, me, None))
        self._maybe_end()

    def peer_ended(self, sender: int) -> None:
        self.peer_ends += 1
        self.ended_senders.add(sender)
        self.sender_wm[sender], self.sender_idle[sender] = WM_MAX, False
        self._combine_wm()
        self._maybe_end()

    def _maybe_end(self) -> None:
        n, me = self.worker.transport.worker_count, self.worker.transport.worker_index
        expected = (n - 1) if (self.keys is not None or me == 0) else 0
        if self.local_ended and self.peer_ends == expected:
            self.worker.end_node(self.node.index)


# -- the worker ----------------------------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class _Aligning:
    """A barrier in progress on one worker: barriers seen per exchange, held messages.

    A checkpoint has a positive id; a state query (a consistent read of keyed state for SQL)
    has the negative of its query id and the steps it reads.
    """

    cid: int
    state: dict[str, dict[str, Any]]
    got: defaultdict[int, set[int]]  # exchange index -> senders whose barrier arrived
    sent: set[int]  # exchanges this worker sent its barrier into
    held: list[tuple[Any, ...]]
    started: float
    #: A state query: the step ids to read (None for a checkpoint).
    steps: tuple[str, ...] | None = None
    #: A state query: rows each source of this worker had pushed at the cut.
    cut: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def barrier(self) -> Any:
        """The payload of this barrier's ``B`` messages."""
        return self.cid if self.steps is None else (self.cid, self.steps)


@dataclasses.dataclass(frozen=True, slots=True)
class StateRequest:
    """A request for a consistent read of keyed state (one worker: answered between batches)."""

    query: int
    steps: tuple[str, ...]
    answer: Callable[[dict[str, pl.DataFrame], dict[str, int]], None]


class _NodeContext:
    """The :class:`OpContext` of one node on one worker."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.worker_index = worker.transport.worker_index
        self.worker_count = worker.transport.worker_count

    def emit(self, batch: pl.DataFrame, port: str = "out") -> None:
        self.worker.emit(self.index, port, batch)

    def dead(self, batch: pl.DataFrame) -> None:
        self.worker.stats[self.index].dead += batch.height
        self.worker.emit(self.index, "dead", batch)

    def publish(self, topic: str, rows: pl.DataFrame) -> None:
        if self.worker.publish is not None:
            self.worker.publish(topic, rows)

    def watermark(self, wm: int, idle: bool = False) -> None:
        self.worker.watermark(self.index, wm, idle)

    def now(self) -> float:
        return self.worker.cfg.clock()

    @property
    def current_watermark(self) -> int:
        return self.worker.out_wm[self.index]


class _TimerSlack:
    """Linux: the calling thread's timer slack set to ``ns`` for a block, restored after.

    The kernel may let a sleep run late by the thread's timer slack (50 us by default) to
    batch wake-ups; a worker waiting 100 us for input under the latency setting then sleeps
    about 170 us instead. Elsewhere (or without ``prctl``) it does nothing.

    Examples
    --------
    >>> with _TimerSlack(1_000):
    ...     pass
    """

    _SET, _GET = 29, 30  # PR_SET_TIMERSLACK, PR_GET_TIMERSLACK

    def __init__(self, ns: int) -> None:
        self.ns = ns
        self._old: int | None = None
        self._prctl: Any = None

    def __enter__(self) -> _TimerSlack:
        if not sys.platform.startswith("linux"):
            return self
        try:
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl
            old = int(self._prctl(self._GET, 0, 0, 0, 0))
            if old > 0 and self._prctl(self._SET, self.ns, 0, 0, 0) == 0:
                self._old = old
        except (OSError, AttributeError):  # pragma: no cover - best effort
            log.debug("could not set the timer slack")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            self._prctl(self._SET, self._old, 0, 0, 0)
            self._old = None


#: Steps whose state only serves results still to come: once the input ended for good and
#: they emitted everything, a checkpoint keeps the marker ``FINISHED`` instead. (A model's
#: state, a ``stateful_map``'s or a custom step's, is kept: it may be wanted for itself.)
_RESULT_KINDS = frozenset(
    ("event_time", "window", "agg", "top_n", "join_window", "join_interval", "join_table")
)


class _SourceRunner:
    """Polls one source reader and coalesces small polls into batches."""

    def __init__(self, node: Node, reader: SourceReader, cfg: RunConfig) -> None:
        self.node = node
        self.reader = reader
        self.batch_size = cfg.batch_size
        self.max_delay = cfg.max_delay.total_seconds()
        self.buffer: list[pl.DataFrame] = []
        self.buffered = 0
        self.since = 0.0
        self.ended = False
        #: The last poll brought rows (a source with nothing to read holds nobody back).
        self.reading = True
        #: The event-time step fed by this source alone (None: not paced).
        self.clock_node: int | None = None

    def take(self) -> pl.DataFrame | None:
        if not self.buffer:
            return None
        out = concat(self.buffer)
        self.buffer, self.buffered = [], 0
        return out


class Worker:
    """Runs the whole graph for one worker's share of the data."""

    def __init__(
        self,
        nodes: list[Node],
        cfg: RunConfig,
        transport: LocalTransport | QueueTransport,
        *,
        emit_mode: Callable[[str], str],
        should_stop: Callable[[], bool],
        report: Callable[[dict[str, StepStats]], None] | None = None,
        publish: Callable[[str, pl.DataFrame], None] | None = None,
        control: Callable[[tuple[Any, ...]], None] | None = None,
        checkpointed: Callable[[int, float, bool], None] | None = None,
        requests: collections.deque[StateRequest] | None = None,
    ) -> None:
        self.nodes = nodes
        self.control = control
        #: Told (id, seconds, written) after each checkpoint this worker takes alone.
        self.checkpointed = checkpointed
        #: State queries to answer between batches (one worker; several use ``Q`` messages).
        self.requests = requests
        #: Wall-clock time the source batch being pushed entered the graph (None between).
        self.origin: float | None = None
        self._nested = 0.0
        self._blocked_at: float | None = None
        self.last_query = 0
        self._timed = [n.kind not in ("source", "sink") for n in nodes]
        self._sinks = [n.kind == "sink" for n in nodes]
        self._evaluators = {
            n.index
            for n in nodes
            if n.kind == "custom" and getattr(n.spec, "mode", None) == "evaluate"
        }
        self.cfg = cfg
        self.transport = transport
        self.should_stop = should_stop
        self.report = report
        self.publish = publish
        self.stats = [StepStats() for _ in nodes]
        self.routes: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
        self.pending = [len(n.inputs) for n in nodes]
        for n in nodes:
            for i, (src, port) in enumerate(n.inputs):
                self.routes[(src, port)].append((n.index, i))
        self._wire_dead_letters()
        self.ended = [False] * len(nodes)
        self.in_wm = [[WM_MIN] * len(n.inputs) for n in nodes]
        self.in_idle = [[False] * len(n.inputs) for n in nodes]
        self.out_wm = [WM_MIN] * len(nodes)
        self.out_idle = [False] * len(nodes)
        self.ops: list[Operator | None] = [None] * len(nodes)
        self.sources: list[_SourceRunner] = []
        mine = cfg.resume_parts[transport.worker_index] if cfg.resume_parts else cfg.resume
        #: Resumed from a checkpoint taken after the job's end: every result went out before,
        #: so the steps' results at the end are not written again, unless a source has new
        #: records (an input that grew), after which the steps go on from their state.
        self.quiet = bool(mine.get(JOB, {}).get("ended"))
        projected = project_sources(nodes)
        try:
            for n in nodes:
                ctx = _NodeContext(self, n.index)
                if finished(mine.get(n.step_id)) and n.kind not in ("source", "sink"):
                    self.ops[n.index] = FinishedOperator(n, ctx)
                elif n.kind == "source":
                    sctx = SourceContext(
                        n.step_id,
                        transport.worker_index,
                        transport.worker_count,
                        cfg.batch_size,
                        mine.get(n.step_id, {}),
                    )
                    spec = projected.get(n.index, n.spec)
                    self.sources.append(_SourceRunner(n, spec.build(sctx), cfg))
                elif n.kind == "exchange":
                    self.ops[n.index] = ExchangeOperator(n, ctx, self)
                elif n.kind == "event_time":
                    from tideflow.runtime._time import EventTimeOperator

                    self.ops[n.index] = EventTimeOperator(n, ctx)
                    if n.step_id in mine:
                        self.ops[n.index].restore(mine[n.step_id])  # type: ignore[union-attr]
                elif n.kind == "window":
                    from tideflow.runtime._windowing import build_window_operator

                    self.ops[n.index] = build_window_operator(n, ctx)
                    if n.step_id in mine:
                        self.ops[n.index].restore(mine[n.step_id])  # type: ignore[union-attr]
                elif n.kind in ("agg", "stateful_map", "keyed_transform") and n.spec.ttl:
                    from tideflow.runtime._ttl import build_ttl_operator

                    self.ops[n.index] = build_ttl_operator(
                        n, ctx, emit_mode=emit_mode, resume=mine.get(n.step_id, {})
                    )
                elif n.kind == "agg" and isinstance(n.spec.state or cfg.state, DiskState):
                    from tideflow.runtime._diskagg import DiskAggOperator

                    disk = n.spec.state or cfg.state
                    assert isinstance(disk, DiskState)
                    dop = DiskAggOperator(n, ctx, emit_mode(n.spec.emit), disk)
                    self.ops[n.index] = dop
                    if n.step_id in mine:
                        dop.restore(mine[n.step_id])
                elif n.kind in ("join_window", "join_interval", "join_table", "lookup"):
                    from tideflow.runtime._joins import build_join_operator

                    self.ops[n.index] = build_join_operator(n, ctx)
                    if n.step_id in mine:
                        self.ops[n.index].restore(mine[n.step_id])  # type: ignore[union-attr]
                else:
                    resume = mine.get(n.step_id, {})
                    op = build_operator(n, ctx, emit_mode=emit_mode, resume=resume)
                    if resume and n.kind != "sink":
                        op.restore(resume)
                    self.ops[n.index] = op
        except Exception:
            self.close()
            raise
        self.tickers = [
            op for op in self.ops if op is not None and type(op).on_tick is not Operator.on_tick
        ]
        # Sink writers, kept past their close(): the final checkpoint commits them.
        self.writers: dict[int, SinkWriter] = {
            i: op.writer
            for i, op in enumerate(self.ops)
            if isinstance(op, SinkOperator) and op.writer is not None
        }
        self.store: CheckpointStore | None = None
        self.next_checkpoint = cfg.checkpoint_next
        if cfg.checkpoint_dir is not None:
            self.store = CheckpointStore(cfg.checkpoint_dir, keep=cfg.checkpoint_keep)
        self.aligning: _Aligning | None = None
        self.last_checkpoint = 0
        self.exit_requested = False
        self.checkpoint_requested = False
        #: A savepoint asked the job to stop after it.
        self.stop_requested = False
        self.exchanges = [n.index for n in nodes if n.kind == "exchange"]
        self.exchanges_above = self._exchanges_above()
        self.paced = self._pace_sources()
        #: No source can ever have more input after its end.
        self.fixed_inputs = all(getattr(src.node.spec, "fixed", False) for src in self.sources)

    def _pace_sources(self) -> list[_SourceRunner]:
        """The sources paced by event time: each feeds an event-time step through stateless
        steps alone (so that step's watermark is this source's), and there are at least two.

        Pacing keeps sources abreast in event time (what Flink calls watermark alignment): a
        join or a union then meets its inputs' rows of the same time together instead of
        holding the rows of the source that ran ahead.
        """
        if self.cfg.source_drift is None:
            return []
        chained = ("frame", "record", "event_time")
        for src in self.sources:
            index = src.node.index
            while self.nodes[index].kind != "event_time":
                nexts = self.routes.get((index, "out"), [])
                if len(nexts) != 1:
                    break
                dst, _ = nexts[0]
                if self.nodes[dst].kind not in chained or len(self.nodes[dst].inputs) != 1:
                    break
                index = dst
            else:
                src.clock_node = index
        paced = [src for src in self.sources if src.clock_node is not None]
        return paced if len(paced) > 1 else []

    def _ahead(self) -> set[int] | None:
        """The event-time steps whose source is to skip this turn: their watermark is past
        the slowest reading source's by more than ``source_drift`` (None: no one is)."""
        drift = self.cfg.source_drift
        assert drift is not None
        floor: int | None = None
        for src in self.paced:
            node = src.clock_node
            assert node is not None
            if src.ended or self.out_idle[node] or not (src.reading or src.buffer):
                continue
            wm = self.out_wm[node]
            if floor is None or wm < floor:
                floor = wm
        if floor is None:
            return None
        limit = floor + int(drift.total_seconds() * 1_000_000)
        ahead = {
            src.clock_node
            for src in self.paced
            if src.clock_node is not None and self.out_wm[src.clock_node] > limit
        }
        return ahead or None

    def _wire_dead_letters(self) -> None:
        dead = [n for n in self.nodes if n.kind == "dead_union"]
        if not dead:
            return
        d = dead[0]
        below = {d.index}
        for n in self.nodes:  # nodes are in topological order
            if any(src in below for src, _ in n.inputs):
                below.add(n.index)
        feeders = [
            n for n in self.nodes if n.index not in below and n.kind not in ("sink", "exchange")
        ]
        for i, n in enumerate(feeders):
            self.routes[(n.index, "dead")].append((d.index, i))
        self.pending[d.index] = len(feeders)

    # -- data movement ----------------------------------------------------------------------
    def emit(self, index: int, port: str, batch: pl.DataFrame) -> None:
        rows = batch.height
        if rows == 0:
            return
        if port == "late":
            self.stats[index].late += rows
        elif port != "dead":
            self.stats[index].rows_out += rows
            if self.origin is not None and self._timed[index]:
                self._latency(self.stats[index])
            if index in self._evaluators:
                self._model_metric(self.stats[index], batch)
        for dst, inp in self.routes.get((index, port), ()):
            if self.quiet and self._sinks[dst]:
                continue  # written before the checkpoint this run resumed from
            st = self.stats[dst]
            st.rows_in += rows
            st.batches += 1
            op = self.ops[dst]
            assert op is not None
            outer, self._nested = self._nested, 0.0
            began = time.perf_counter()
            try:
                op.on_batch(inp, batch)
            except TideflowError:
                raise
            except Exception as exc:
                step = self.nodes[dst].step_id
                msg = f"step '{step}' failed: {type(exc).__name__}: {exc}"
                raise JobError(msg, step_id=step) from exc
            took = time.perf_counter() - began
            st.busy_s += took - self._nested
            self._nested = outer + took
            if self._sinks[dst] and self.origin is not None:
                self._latency(st)

    def _latency(self, st: StepStats) -> None:
        """Count the current source batch's latency so far into a step's histogram."""
        assert self.origin is not None
        seconds = max(0.0, time.time() - self.origin)
        st.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        st.latency_sum += seconds

    @staticmethod
    def _model_metric(st: StepStats, batch: pl.DataFrame) -> None:
        """Keep the latest metric of an ``evaluate`` step (rows ``n``, ``metric``, ``value``)."""
        if "value" not in batch.columns or "metric" not in batch.columns:
            return
        value = batch.get_column("value").mean()
        if isinstance(value, int | float) and value == value:
            st.metric_value = float(value)
            st.metric = str(batch.get_column("metric")[-1])
            st.metric_n = st.rows_in

    def watermark(self, index: int, wm: int, idle: bool = False) -> None:
        """Node ``index`` announces its output watermark (monotonic) or that it is idle."""
        wm = max(wm, self.out_wm[index])
        if wm == self.out_wm[index] and idle == self.out_idle[index]:
            return
        self.out_wm[index], self.out_idle[index] = wm, idle
        for port in self.nodes[index].ports:
            for dst, inp in self.routes.get((index, port), ()):
                self.in_wm[dst][inp], self.in_idle[dst][inp] = wm, idle
                self._input_watermark(dst)

    def _input_watermark(self, dst: int) -> None:
        op = self.ops[dst]
        if op is None or self.nodes[dst].kind == "dead_union":
            return
        wms, idles = self.in_wm[dst], self.in_idle[dst]
        only = getattr(op, "watermark_inputs", None)  # e.g. a table join: the stream side only
        if only is not None:
            wms, idles = [wms[i] for i in only], [idles[i] for i in only]
        active = [w for w, i in zip(wms, idles, strict=True) if not i]
        if active:
            wm = min(active)
            if wm > self.out_wm[dst] or self.out_idle[dst]:
                op.on_watermark(wm, False)
        elif not self.out_idle[dst] or max(wms) > self.out_wm[dst]:
            # All inputs idle: release the largest watermark any of them promised.
            op.on_watermark(max(self.out_wm[dst], max(wms)), True)

    def end_node(self, index: int) -> None:
        if self.ended[index]:
            return
        self.ended[index] = True
        if self.nodes[index].kind != "sink":
            self.watermark(index, WM_MAX)
        targets = [
            t
            for port in (*self.nodes[index].ports, "dead")
            for t in self.routes.get((index, port), ())
        ]
        for dst, inp in targets:
            input_end = getattr(self.ops[dst], "on_input_end", None)
            if input_end is not None:
                input_end(inp)
            self.pending[dst] -= 1
            if self.pending[dst] == 0:
                op = self.ops[dst]
                assert op is not None
                op.on_end()
                if not getattr(op, "defers_end", False):
                    self.end_node(dst)

    def _exchanges_above(self) -> dict[int, set[int]]:
        """For each exchange, the exchanges upstream of it on this worker."""
        parents: dict[int, set[int]] = defaultdict(set)
        for (src, _port), targets in self.routes.items():
            for dst, _ in targets:
                parents[dst].add(src)
        out: dict[int, set[int]] = {}
        for x in self.exchanges:
            seen: set[int] = set()
            todo = list(parents[x])
            while todo:
                i = todo.pop()
                if i not in seen:
                    seen.add(i)
                    todo.extend(parents[i])
            out[x] = {i for i in seen if i in self.exchanges}
        return out

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind, index, _sender, payload = msg
        busy = self.aligning
        if busy is not None and kind in ("C", "Q", "B"):
            # One barrier at a time: another kind's start waits for the one aligning here.
            query_msg = kind == "Q" or (kind == "B" and isinstance(payload, tuple))
            if query_msg != (busy.steps is not None):
                busy.held.append(msg)
                return
        if kind == "C":
            self._begin_checkpoint(payload)
            return
        if kind == "Q":  # the driver asks for a consistent read of keyed state
            self._begin_query(payload[0], payload[1])
            return
        if kind == "K":
            self.commit(payload)
            return
        if kind == "X":
            self.exit_requested = True
            return
        if kind == "S":  # stop after a savepoint: no checkpoint (nor commit) comes after it
            self.stop_requested = True
            return
        al = self.aligning
        if kind == "B":
            if isinstance(payload, tuple):  # a state query's barrier: (-query id, steps)
                if not self._begin_query(-payload[0], payload[1]):
                    return  # that query is over here (its sender had ended)
                token = payload[0]
            else:
                token = payload
                if al is None or al.cid != token:
                    self._begin_checkpoint(token)
            al = self.aligning
            assert al is not None and al.cid == token
            al.got[index].add(_sender)
            self._progress_checkpoint()
            return
        if al is not None and _sender in al.got[index]:
            al.held.append(msg)  # after the sender's barrier: waits for this checkpoint
            return
        op = self.ops[index]
        assert isinstance(op, ExchangeOperator)
        if kind == "D":
            data, self.origin = payload
            batch = _from_ipc(data)
            self.stats[index].rows_in += batch.height
            if batch.height:
                self.quiet = False  # a peer's source had new records (see ``quiet``)
            try:
                self.emit(index, "out", batch)
            finally:
                self.origin = None
        elif kind == "W":
            op.peer_watermark(_sender, payload[0], payload[1])
        elif kind == "E":
            op.peer_ended(_sender)

    def _push_source(self, src: _SourceRunner) -> None:
        batch = src.take()
        if batch is not None:
            self.stats[src.node.index].batches += 1
            self.origin = time.time()
            try:
                self.emit(src.node.index, "out", batch)
            finally:
                self.origin = None

    def _poll(self, src: _SourceRunner, now: float) -> bool:
        try:
            got = src.reader.poll()
        except TideflowError:
            raise
        except Exception as exc:
            step = src.node.step_id
            msg = f"source '{step}' failed: {type(exc).__name__}: {exc}"
            raise JobError(msg, step_id=step) from exc
        progressed = False
        src.reading = got is not None and got.data.height > 0
        if got is not None:
            if got.dead is not None and got.dead.height:
                self.stats[src.node.index].dead += got.dead.height
                self.emit(src.node.index, "dead", got.dead)
                progressed = True
            if got.data.height:
                if self.quiet:
                    self.quiet = False
                    log.info(
                        "source '%s' has new records after the end of the run this one "
                        "resumed from: the steps go on from their state",
                        src.node.step_id,
                    )
                if not src.buffer:
                    src.since = now
                src.buffer.append(got.data)
                src.buffered += got.data.height
                progressed = True
        finished = src.reader.finished
        if src.buffer and (
            got is None
            or finished
            or src.buffered >= src.batch_size
            or now - src.since >= src.max_delay
        ):
            self._push_source(src)
        if finished and not src.ended:
            src.ended = True
            self.end_node(src.node.index)
            progressed = True
        return progressed

    def run(self) -> bool:
        """Run until every step ended (True) or a stop was requested (False)."""
        cfg = self.cfg
        flush_every = cfg.flush_interval.total_seconds()
        last_flush = last_report = last_tick = last_checkpoint = time.monotonic()
        checkpoint_every = cfg.checkpoint_interval.total_seconds()
        local_checkpoints = self.store is not None and self.transport.worker_count == 1
        shared_checkpoints = self.store is not None and self.transport.worker_count > 1
        idle = 0.0
        # The idle back-off never sleeps longer than half the latency setting (max_delay), so a
        # job tuned for low latency is not held back by its own wait for input.
        idle_cap = min(0.01, max(0.0001, cfg.max_delay.total_seconds() / 2))
        completed = False
        # Everything alive now (modules, the graph, restored state) lives as long as the job:
        # kept out of the collector's generations, a full collection during the run no longer
        # walks it (a pause of tens of milliseconds otherwise, on the latency path).
        gc.freeze()
        # Under a latency setting of 2 ms or less the idle wait is at most 1 ms: let the kernel
        # wake the worker on time (1 us of timer slack instead of 50 us) while it runs.
        slack = _TimerSlack(1_000) if idle_cap <= 0.001 else None
        if slack is not None:
            slack.__enter__()
        try:
            told_ended = False
            while True:
                if all(self.ended):
                    if not shared_checkpoints:
                        break
                    if not told_ended and self.control is not None:
                        told_ended = True
                        self.control(("ended", self.transport.worker_index))
                    if self.exit_requested and self.aligning is None:
                        break
                if self.should_stop() or self.stop_requested:
                    break
                progressed = False
                for _ in range(64):
                    msg = self.transport.recv(0)
                    if msg is None:
                        break
                    self._handle(msg)
                    progressed = True
                now = time.monotonic()
                if self.requests:
                    self._answer_requests()
                blocked = False
                if self.aligning is None:
                    blocked = self.transport.backlogged()
                    if not blocked:
                        ahead = self._ahead() if self.paced else None
                        for src in self.sources:
                            if src.ended:
                                continue
                            if ahead is not None and src.clock_node in ahead:
                                if src.buffer and now - src.since >= src.max_delay:
                                    self._push_source(src)
                                continue
                            if self._poll(src, now):
                                progressed = True
                self._count_blocked(now, blocked)
                if self.tickers and self.aligning is None and now - last_tick >= 0.02:
                    for op in self.tickers:
                        op.on_tick()
                    last_tick = now
                if now - last_flush >= flush_every:
                    self.flush()
                    last_flush = now
                if local_checkpoints and (
                    self.checkpoint_requested or now - last_checkpoint >= checkpoint_every
                ):
                    self.checkpoint_requested = False
                    self.checkpoint()
                    last_checkpoint = time.monotonic()
                if self.report is not None and now - last_report >= 0.5:
                    self.report(self.named_stats())
                    last_report = now
                if progressed:
                    idle = 0.0
                else:
                    if slack is not None:  # latency setting: 25 us first, doubling up to the cap
                        idle = min(idle_cap, idle * 2 if idle else 0.000025)
                    else:
                        idle = min(idle_cap, idle + 0.0005)
                    msg = self.transport.recv(idle)
                    if msg is not None:
                        self._handle(msg)
                completed = all(self.ended)
            if not completed:
                for src in self.sources:  # stop requested: push what was read
                    self._push_source(src)
            if local_checkpoints and not self.stop_requested:
                self.checkpoint()  # the end (or a stop): a last checkpoint commits the rest
            elif self.store is None and completed:
                for w in self.writers.values():  # no checkpoints: the end of input commits
                    w.pre_commit(0)
                    w.commit(0)
        finally:
            if slack is not None:
                slack.__exit__()
            gc.unfreeze()  # back to the collector (several jobs may run in one process)
            self.close()
        return completed

    def _count_blocked(self, now: float, blocked: bool) -> None:
        """Add the time the sources stood still for backpressure to their ``blocked_s``."""
        if self._blocked_at is not None:
            for src in self.sources:
                if not src.ended:
                    self.stats[src.node.index].blocked_s += now - self._blocked_at
        self._blocked_at = now if blocked else None

    # -- consistent reads of keyed state (SQL over state) ---------------------------------------
    def state_tables(self, steps: tuple[str, ...]) -> dict[str, pl.DataFrame]:
        """The keyed state of ``steps`` on this worker now, one frame per step that has some."""
        out: dict[str, pl.DataFrame] = {}
        for node, op in zip(self.nodes, self.ops, strict=True):
            if op is None or node.step_id not in steps:
                continue
            frame = op.state_table()
            if frame is None:
                continue
            if frame.width == 0 and node.schema:
                frame = pl.DataFrame(schema=node.schema)
            out[node.step_id] = frame
        return out

    def _source_cut(self) -> dict[str, int]:
        return {src.node.step_id: self.stats[src.node.index].rows_out for src in self.sources}

    def _answer_requests(self) -> None:
        """One worker: answer state queries now, between batches (a consistent cut)."""
        assert self.requests is not None
        while self.requests:
            req = self.requests.popleft()
            req.answer(self.state_tables(req.steps), self._source_cut())

    def _begin_query(self, query: int, steps: tuple[str, ...]) -> bool:
        """Several workers: state query ``query`` starts here; False if it is already over."""
        if query <= self.last_query:
            return False
        if self.aligning is not None:
            return self.aligning.cid == -query  # (a newer query cannot start before this one)
        for src in self.sources:  # rows read but not yet pushed belong before the cut
            self._push_source(src)
        self.aligning = _Aligning(
            -query, {}, defaultdict(set), set(), [], time.monotonic(), tuple(steps)
        )
        self.aligning.cut = self._source_cut()
        self._progress_checkpoint()
        return True

    # -- checkpoints --------------------------------------------------------------------------
    def request_checkpoint(self) -> None:
        """One worker: take a checkpoint at the next point between batches (signal-safe)."""
        self.checkpoint_requested = True

    def _begin_checkpoint(self, cid: int) -> None:
        """Several workers: checkpoint ``cid`` starts here (told by the driver or a barrier)."""
        if cid <= self.last_checkpoint or (self.aligning is not None and self.aligning.cid >= cid):
            return
        for src in self.sources:  # rows read but not yet pushed belong before the cut
            self._push_source(src)
        state = {src.node.step_id: src.reader.snapshot() for src in self.sources}
        self.aligning = _Aligning(cid, state, defaultdict(set), set(), [], time.monotonic())
        self._progress_checkpoint()

    def _exchange_senders(self, x: int) -> list[int]:
        op = self.ops[x]
        assert isinstance(op, ExchangeOperator)
        return op._senders()

    def _progress_checkpoint(self) -> None:
        al = self.aligning
        assert al is not None
        n, me = self.transport.worker_count, self.transport.worker_index
        aligned = {x for x in self.exchanges if self._aligned(al, x)}
        changed = True
        while changed:
            changed = False
            for x in self.exchanges:
                if x in al.sent or not self.exchanges_above[x] <= aligned:
                    continue
                # Everything this worker sends into x before the cut has been sent: barrier.
                op = self.ops[x]
                assert isinstance(op, ExchangeOperator)
                dests = [0] if op.keys is None else range(n)
                for d in dests:
                    if d != me:
                        self.transport.send(d, ("B", x, me, al.barrier))
                al.sent.add(x)
                al.got[x].add(me)
                if self._aligned(al, x):
                    aligned.add(x)
                changed = True
        if len(aligned) < len(self.exchanges):
            return
        if al.steps is not None:  # a state query: send this worker's part to the driver
            self._finish_query(al)
            return
        # Every input is at the cut: snapshot operators, pre-commit sinks, write this part.
        state = al.state
        self._snapshot_steps(al.cid, state)
        assert self.store is not None
        entry: dict[str, Any] | None = None
        error = None
        try:
            tmp = self.store.tmp_path(al.cid, self.cfg.checkpoint_owner)
            entry = self.store.write_part(tmp, me, state)
        except OSError as exc:
            error = str(exc)
        if self.control is not None:
            self.control(("part", me, al.cid, entry, error, time.monotonic() - al.started))
        self.aligning, self.last_checkpoint = None, al.cid
        for msg in al.held:  # data after the cut, held back while aligning
            self._handle(msg)

    def _aligned(self, al: _Aligning, x: int) -> bool:
        """Every sender into exchange ``x`` is at the barrier (a query: or has ended)."""
        got = al.got[x]
        if al.steps is not None:
            op = self.ops[x]
            assert isinstance(op, ExchangeOperator)
            got = got | op.ended_senders
        return set(self._exchange_senders(x)) <= got | {-1}

    def _finish_query(self, al: _Aligning) -> None:
        assert al.steps is not None
        me = self.transport.worker_index
        tables = {k: _to_ipc(v) for k, v in self.state_tables(al.steps).items()}
        if self.control is not None:
            self.control(("state", me, -al.cid, tables, al.cut))
        self.aligning, self.last_query = None, -al.cid
        for msg in al.held:  # data after the cut, held back while aligning
            self._handle(msg)

    def checkpoint_state(self, checkpoint_id: int) -> dict[str, dict[str, Any]]:
        """Consistent state of this worker between batches; sinks pre-commit."""
        for src in self.sources:  # rows read but not yet pushed belong before the cut
            self._push_source(src)
        out: dict[str, dict[str, Any]] = {}
        for src in self.sources:
            out[src.node.step_id] = src.reader.snapshot()
        self._snapshot_steps(checkpoint_id, out)
        return out

    def _snapshot_steps(self, checkpoint_id: int, out: dict[str, dict[str, Any]]) -> None:
        """Add every operator's snapshot to ``out``; sinks pre-commit."""
        # After the end of fixed inputs each step has emitted all its results, which this
        # checkpoint commits, and no input can follow: a resume has nothing to do with the
        # state, so none is written (inputs that may grow keep it, so that a later run can go
        # on with their new records). With several workers, one that ended everything at a
        # cut got every peer's end before its barrier: they all did.
        ended = all(self.ended)
        if ended:
            out[JOB] = {"ended": True}
        done = self.fixed_inputs and ended
        for n, op in zip(self.nodes, self.ops, strict=True):
            if op is None:
                continue
            if n.index in self.writers:
                out[n.step_id] = self.writers[n.index].pre_commit(checkpoint_id)
            elif not isinstance(op, SinkOperator):
                if done and n.kind in _RESULT_KINDS:
                    out[n.step_id] = dict(FINISHED)
                    continue
                snap = op.snapshot()
                if snap:
                    out[n.step_id] = snap

    def commit(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is complete: sinks make its output visible."""
        for index, w in self.writers.items():
            try:
                w.commit(checkpoint_id)
            except TideflowError:
                raise
            except Exception as exc:
                step = self.nodes[index].step_id
                msg = f"sink '{step}' failed to commit checkpoint {checkpoint_id}: {exc}"
                raise JobError(msg, step_id=step) from exc

    def checkpoint(self) -> bool:
        """One worker: take, write and commit a checkpoint. False if writing it failed."""
        assert self.store is not None
        cid = self.next_checkpoint
        self.next_checkpoint += 1
        started = time.monotonic()
        state = self.checkpoint_state(cid)
        try:
            path = self.store.write(cid, [state], self.cfg.checkpoint_meta)
        except OSError as exc:
            log.warning(
                "checkpoint %d could not be written (%s); the job goes on and the next "
                "checkpoint retries; a restart resumes from the previous one",
                cid,
                exc,
            )
            if self.checkpointed is not None:
                self.checkpointed(cid, time.monotonic() - started, False)
            return False
        seconds = time.monotonic() - started
        log.info("checkpoint %d written to %s in %.3f s", cid, path, seconds)
        if self.checkpointed is not None:
            self.checkpointed(cid, seconds, True)
        self.commit(cid)
        if fulfil_requests(self.store.path, path):
            self.stop_requested = True
        return True

    def flush(self) -> None:
        """Ask every sink to make what it got visible."""
        for op in self.ops:
            if op is not None:
                op.flush()

    def close(self) -> None:
        """Close sinks and sources (also after an error or a stop)."""
        errors: list[BaseException] = []
        for op in self.ops:
            if op is not None:
                try:
                    op.close()
                except Exception as exc:
                    errors.append(exc)
        for src in self.sources:
            try:
                src.reader.close()
            except Exception as exc:
                log.warning("closing source %s failed: %s", src.node.step_id, exc)
        if errors:
            raise errors[0]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """State of every step on this worker: source positions, operator and sink state."""
        out: dict[str, dict[str, Any]] = {}
        for src in self.sources:
            out[src.node.step_id] = src.reader.snapshot()
        for n, op in zip(self.nodes, self.ops, strict=True):
            if op is not None:
                snap = op.writer_snapshot() if isinstance(op, SinkOperator) else op.snapshot()
                if snap:
                    out[n.step_id] = snap
        return out

    def named_stats(self) -> dict[str, StepStats]:
        """Counters by step id."""
        out = {}
        for n in self.nodes:
            st = dataclasses.replace(self.stats[n.index])
            st.latency = list(st.latency)
            wm = self.out_wm[n.index]
            st.watermark = wm // 1000 if WM_MIN < wm < WM_MAX else None
            out[n.step_id] = st
        return out
