"""Running a dataflow: in this process (one worker) or in N worker processes.

``run(flow, workers=N)`` validates the flow, adds the default dead-letter output if the flow
has none, and runs it. With one worker everything runs in the calling thread. With more, the
flow is shipped (cloudpickle, to processes this run starts itself) to N spawned worker
processes; the driver collects their counters, draws progress and handles Ctrl-C: the first
stops the sources and flushes the sinks, a second one kills the workers.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import polars as pl

from tideflow._errors import ConfigError, JobError
from tideflow.api._dataflow import Dataflow, check_disk_agg
from tideflow.api._graph import Node
from tideflow.connectors._base import Sink, SinkContext, SinkWriter
from tideflow.runtime._control import RunControl
from tideflow.runtime._observe import CheckpointInfo, RunObserver, StepInfo
from tideflow.runtime._progress import Progress
from tideflow.runtime._worker import (
    LocalTransport,
    QueueTransport,
    RunConfig,
    StateRequest,
    StepStats,
    Worker,
    _from_ipc,
    _to_ipc,
)
from tideflow.state._backends import DiskState, StateChoice, state_backend
from tideflow.state._resume import resume_for
from tideflow.state._savepoint import fulfil_requests, load_savepoint, mark_running
from tideflow.state._store import Checkpoint, CheckpointStore

__all__ = ["RunResult", "run"]

log = logging.getLogger("tideflow.runtime")


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    """What a finished (or stopped) run did."""

    flow: str
    workers: int
    seconds: float
    #: Counters per step id, summed over workers.
    steps: dict[str, StepStats]
    #: False when the run was stopped (Ctrl-C) before its input ended.
    completed: bool
    #: Where dead letters were written by the default dead-letter output (None if not used).
    dead_letter_path: Path | None

    @property
    def records_in(self) -> int:
        """Records read by all sources."""
        return sum(s.rows_out for k, s in self.steps.items() if k in self.source_steps)

    @property
    def dead_letters(self) -> int:
        """Records rejected by any step."""
        return sum(s.dead for s in self.steps.values())

    #: Step ids of the sources.
    source_steps: frozenset[str] = frozenset()
    #: Why the run failed (``None`` when it finished or was stopped).
    error: str | None = None


class _DeadLetterFile(Sink):
    """Default dead-letter output: a JSON-lines file created on the first dead letter."""

    single_writer = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, ctx: SinkContext) -> SinkWriter:
        return _DeadLetterWriter(self.path)


class _DeadLetterWriter(SinkWriter):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: Any = None
        self.logged = 0

    def write(self, batch: pl.DataFrame) -> None:
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("ab")
        for row in batch.head(max(0, 5 - self.logged)).iter_rows(named=True):
            log.warning("dead letter from %s (%s): %s", row["step"], row["origin"], row["reason"])
            self.logged += 1
        batch.write_ndjson(self.fh)

    def flush(self) -> None:
        if self.fh is not None:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _plan(flow: Dataflow, cfg: RunConfig) -> tuple[list[Node], Path | None]:
    """The nodes to run: the flow's, plus the default dead-letter output when needed."""
    flow.validate()
    if flow._dead is not None and any(
        src == flow._dead.node.index for n in flow.nodes for src, _ in n.inputs
    ):
        return list(flow.nodes), None
    path = cfg.dead_letter_path or Path.cwd() / f"{flow.name}.dead-letters.jsonl"
    # Build on a copy so the user's flow is unchanged.
    copy = Dataflow(flow.name)
    copy.nodes = list(flow.nodes)
    copy._taken = set(flow._taken)
    copy._dead = flow._dead
    copy.dead_letters.sink(_DeadLetterFile(path), name="dead_letter_file")
    return copy.nodes, path


def _input_schema(flow: Dataflow, node: Node) -> dict[str, pl.DataType] | None:
    """The schema flowing into a node (None when unknown)."""
    if not node.inputs:
        return None
    return flow.nodes[node.inputs[0][0]].schema


def _detail(node: Node) -> str:
    """What a step does beyond its kind (online-model steps: mode and model)."""
    mode = getattr(node.spec, "mode", None)
    model = getattr(node.spec, "model", None)
    if node.kind == "custom" and mode in ("predict", "learn", "evaluate") and model is not None:
        return f"ml.{mode} {type(model).__name__}"
    return ""


def _queryable(nodes: list[Node]) -> frozenset[str]:
    """Steps whose keyed state SQL can read: keyed aggregations (without a state TTL), top_n."""
    return frozenset(
        n.step_id for n in nodes if (n.kind == "agg" and not n.spec.ttl) or n.kind == "top_n"
    )


def _emit_mode(bounded: bool) -> Callable[[str], str]:
    def mode(emit: str) -> str:
        if emit == "auto":
            return "final" if bounded else "updates"
        return emit

    return mode


def _merge(into: dict[str, StepStats], stats: dict[str, StepStats]) -> None:
    for k, v in stats.items():
        into.setdefault(k, StepStats()).add(v)


class _Hub:
    """Fans run events out to observers; an observer that raises is logged and dropped."""

    def __init__(self, observers: list[RunObserver]) -> None:
        self.observers = observers
        self.start = time.monotonic()

    def _call(self, method: str, *args: Any) -> None:
        for obs in list(self.observers):
            call = getattr(obs, method, None)
            if call is None:  # on_control and on_checkpoint are optional
                continue
            try:
                call(*args)
            except Exception:
                log.exception("observer %r failed in %s; it is disabled", obs, method)
                self.observers.remove(obs)

    def started(self, flow: str, nodes: list[Node], workers: int, control: RunControl) -> None:
        self._call("on_control", control)
        by_index = {n.index: n.step_id for n in nodes}
        steps = [
            StepInfo(n.step_id, n.kind, tuple((by_index[i], p) for i, p in n.inputs), _detail(n))
            for n in nodes
        ]
        self._call("on_start", flow, steps, workers)

    def checkpointed(self, checkpoint_id: int, seconds: float, written: bool) -> None:
        self._call("on_checkpoint", CheckpointInfo(checkpoint_id, seconds, written, time.time()))

    def stats(self, stats: dict[str, StepStats]) -> None:
        self._call("on_stats", stats, time.monotonic() - self.start)

    def rows(self, topic: str, rows: pl.DataFrame) -> None:
        self._call("on_rows", topic, rows)

    def finished(self, result: RunResult) -> None:
        self._call("on_finish", result)


def run(
    flow: Dataflow,
    *,
    workers: int | None = 1,
    batch_size: int = 65_536,
    max_delay: timedelta = timedelta(milliseconds=100),
    flush_interval: timedelta = timedelta(seconds=1),
    dead_letter_path: str | Path | None = None,
    progress: bool = False,
    observers: Sequence[RunObserver] = (),
    clock: Callable[[], float] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_interval: timedelta = timedelta(seconds=10),
    checkpoint_keep: int = 3,
    from_savepoint: str | Path | None = None,
    state: StateChoice | None = None,
    source_drift: timedelta | None = timedelta(0),
) -> RunResult:
    """Run a dataflow until its inputs end (bounded) or until stopped (Ctrl-C).

    Parameters
    ----------
    flow
        The dataflow to run.
    workers
        Worker processes; ``None`` means one per core. With 1 the job runs in this process.
    batch_size, max_delay
        The throughput/latency knob: rows per micro-batch read from a source, and the longest
        a source holds rows back to fill a batch. ``max_delay=timedelta(0)`` passes every poll
        on at once (lowest latency; a batch then holds what arrived during the previous one).
    flush_interval
        How often sinks make what they received visible.
    dead_letter_path
        Where rejected records go when the flow does not sink ``flow.dead_letters`` itself
        (default ``./<flow name>.dead-letters.jsonl``, created only if needed).
    progress
        Show live progress on the terminal (stderr).
    observers
        Objects told about the run as it goes (:class:`~tideflow.runtime.RunObserver`): the
        graph, counters, rows that sinks publish, the result. Dashboards and metrics use this.
    clock
        Processing-time clock in seconds since the epoch (default ``time.time``); tests pass a
        :class:`~tideflow.testing.FakeClock`.
    checkpoint_dir
        Where consistent checkpoints of the job go (see ``docs/checkpoints.md``). When it holds
        a complete checkpoint of this flow, the run resumes from the newest one: sources seek,
        operators restore their state, exactly-once sinks drop output written after it.
    checkpoint_interval
        How often a checkpoint is taken (a last one is taken when the input ends).
    checkpoint_keep
        How many complete checkpoints are retained.
    from_savepoint
        Start from this savepoint (see :func:`tideflow.state.take_savepoint`), with any number
        of workers. When ``checkpoint_dir`` already holds checkpoints taken after this savepoint
        (the restored job crashed), the run resumes from the newest of them instead; checkpoints
        of another history there are an error.
    state
        Where keyed aggregation state lives for steps that do not choose themselves:
        ``"memory"`` (the default), ``"disk"`` or a :class:`~tideflow.state.DiskState`
        (state larger than memory: a hot set in memory, the rest in SQLite on disk).
    source_drift
        How far in event time one source may run ahead of the slowest source that is still
        reading before the worker stops reading it (watermark alignment). Each source that
        feeds an event-time step through stateless steps is compared by that step's
        watermark; a source with nothing to read holds nobody back. A join or a union then
        meets its inputs' rows of the same time together, instead of holding the rows of the
        source that ran ahead. ``None`` reads every source as fast as it comes.

    Examples
    --------
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> flow = tf.Dataflow("doc_run")
    >>> out = CollectSink()
    >>> flow.source(TestingSource([{"k": "a"}, {"k": "b"}, {"k": "a"}])).key_by("k").agg(
    ...     pl.len().alias("n")).sink(out)
    >>> result = tf.run(flow)
    >>> sorted(out.frame().rows()), result.completed
    ([('a', 2), ('b', 1)], True)
    """
    n = workers if workers is not None else (os.cpu_count() or 1)
    if not isinstance(n, int) or n < 1:
        msg = f"run(): workers must be a whole number >= 1 (or None for one per core), got {workers!r}"
        raise ConfigError(msg)
    if batch_size < 1:
        msg = f"run(): batch_size must be >= 1, got {batch_size}"
        raise ConfigError(msg)
    if not isinstance(flow, Dataflow):
        msg = f"run() takes a tideflow.Dataflow, got {type(flow).__name__}"
        raise ConfigError(msg)
    if source_drift is not None and (
        not isinstance(source_drift, timedelta) or source_drift < timedelta(0)
    ):
        msg = (
            "run(): source_drift must be a timedelta >= 0 (or None to never pace sources), "
            f"got {source_drift!r}"
        )
        raise ConfigError(msg)
    cfg = RunConfig(
        workers=n,
        batch_size=batch_size,
        max_delay=max_delay,
        flush_interval=flush_interval,
        dead_letter_path=Path(dead_letter_path) if dead_letter_path else None,
        clock=clock or time.time,
        state=state_backend(state, "run()"),
        source_drift=source_drift,
    )
    if isinstance(cfg.state, DiskState):
        for nd in flow.nodes:
            if nd.kind == "agg" and nd.spec.state is None:
                check_disk_agg(nd.step_id, nd.spec, _input_schema(flow, nd), "run(state=...)")
    if checkpoint_dir is not None:
        cfg = _with_checkpoints(
            cfg, flow.name, Path(checkpoint_dir), checkpoint_interval, checkpoint_keep
        )
    nodes, dl_path = _plan(flow, cfg)
    for nd in nodes:
        if nd.kind == "sink" and isinstance(nd.spec, Sink):
            nd.spec.check_run(
                nd.step_id, bounded=flow.bounded, checkpointing=checkpoint_dir is not None
            )
    if checkpoint_dir is not None or from_savepoint is not None:
        cfg = _resume(
            cfg, nodes, flow.name, None if from_savepoint is None else Path(from_savepoint)
        )
    sources = frozenset(nd.step_id for nd in nodes if nd.kind == "source")
    sinks = frozenset(nd.step_id for nd in nodes if nd.kind == "sink")
    watchers: list[RunObserver] = list(observers)
    if progress:
        watchers.append(Progress(flow.name, sources, sinks))
    hub = _Hub(watchers)
    control = RunControl(_queryable(nodes))
    hub.started(flow.name, nodes, n, control)
    stats: dict[str, StepStats] = {}
    completed = False
    error: str | None = None
    running: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    usr1 = _CheckpointSignal(cfg.checkpoint_dir is not None)
    if cfg.checkpoint_dir is not None:  # savepoints find the job (and whether it takes SIGUSR1)
        running = mark_running(cfg.checkpoint_dir, flow.name, signals=usr1.enabled)
    try:
        # The handler is installed before RUNNING.json appears and stays until it is gone: a
        # savepoint request that found the job running never meets the default action
        # (which would end the process).
        with usr1, running:
            if n == 1:
                stats, completed = _run_local(nodes, cfg, flow.bounded, hub, control, usr1)
            else:
                stats, completed = _run_processes(nodes, cfg, flow.bounded, hub, control, usr1)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        control.close()
        seconds = time.monotonic() - hub.start
        used = dl_path if dl_path is not None and dl_path.exists() else None
        result = RunResult(flow.name, n, seconds, stats, completed, used, sources, error)
        hub.finished(result)
    return result


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None], stopped: Callable[[], bool]) -> Iterator[None]:
    """Ctrl-C or SIGTERM stops the run cleanly (sources stop, sinks flush); a second aborts.

    Installed in the main thread only; also when the process started with SIGINT ignored (a
    background job), so that a stop request always works.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        if stopped():
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.warning("stopping on %s: flushing sinks (Ctrl-C again to abort)", name)
        stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _with_checkpoints(
    cfg: RunConfig, flow: str, path: Path, interval: timedelta, keep: int
) -> RunConfig:
    if not isinstance(interval, timedelta) or interval <= timedelta(0):
        msg = f"run(): checkpoint_interval must be a positive timedelta, got {interval!r}"
        raise ConfigError(msg)
    CheckpointStore(path, keep=keep)  # validates keep, creates the directory
    meta = {"flow": flow, "workers": cfg.workers}
    return dataclasses.replace(
        cfg,
        checkpoint_owner=os.getpid(),
        checkpoint_dir=path,
        checkpoint_interval=interval,
        checkpoint_keep=keep,
        checkpoint_meta=meta,
    )


def _resume(cfg: RunConfig, nodes: list[Node], flow: str, savepoint: Path | None) -> RunConfig:
    """Load the newest complete checkpoint (or the savepoint); the run resumes from it."""
    started = time.monotonic()
    sp: Checkpoint | None = None
    if savepoint is not None:
        sp, info = load_savepoint(savepoint)
        if sp.meta.get("flow") != flow:
            msg = (
                f"the savepoint {str(savepoint)!r} is of flow {sp.meta.get('flow')!r}, not {flow!r}"
            )
            raise ConfigError(msg)
        if cfg.checkpoint_dir is not None:  # checkpoints of this run name their savepoint
            meta = {**cfg.checkpoint_meta, "savepoint": info["id"]}
            cfg = dataclasses.replace(cfg, checkpoint_meta=meta)
    cp: Checkpoint | None = None
    next_id = 1
    if cfg.checkpoint_dir is not None:
        store = CheckpointStore(cfg.checkpoint_dir, keep=cfg.checkpoint_keep)
        ids = store.ids()
        next_id = ids[-1] + 1 if ids else 1
        cp = store.latest()
        if cp is not None and cp.meta.get("flow") != flow:
            msg = (
                f"the checkpoint directory {str(cfg.checkpoint_dir)!r} holds checkpoints of flow "
                f"{cp.meta.get('flow')!r}, not {flow!r}; use another checkpoint_dir"
            )
            raise ConfigError(msg)
        if cp is not None and sp is not None:
            if cp.meta.get("savepoint") != cfg.checkpoint_meta.get("savepoint"):
                msg = (
                    f"the checkpoint directory {str(cfg.checkpoint_dir)!r} holds checkpoints "
                    f"that were not taken after the savepoint {str(savepoint)!r}; restore the "
                    "savepoint into an empty checkpoint directory, or drop from_savepoint "
                    "(--from-savepoint) to resume from those checkpoints"
                )
                raise ConfigError(msg)
            log.info(
                "the job restored from %s crashed before: resuming from its checkpoint", savepoint
            )
    if cp is None and sp is not None:
        cp = sp
        next_id = max(next_id, sp.id + 1)
    if cp is None:
        return dataclasses.replace(cfg, checkpoint_next=next_id)
    parts = [resume_for(cp, nodes, i, cfg.workers) for i in range(cfg.workers)]
    log.info(
        "resuming from %s %d (%s, %d worker(s)) loaded in %.3f s",
        "savepoint of checkpoint" if cp is sp else "checkpoint",
        cp.id,
        cp.path,
        cp.workers,
        time.monotonic() - started,
    )
    return dataclasses.replace(cfg, resume=parts[0], resume_parts=parts, checkpoint_next=next_id)


class _Coordinator:
    """The driver's side of checkpoints with several workers.

    Every interval it starts checkpoint N (workers take aligned barrier snapshots and write
    their parts into the checkpoint's temporary directory), writes the manifest once every
    part is in, then tells the workers to commit their sinks. When every worker has ended its
    input, a last checkpoint is taken and committed, then the workers are told to exit.
    """

    def __init__(self, cfg: RunConfig, inboxes: list[Any], hub: _Hub) -> None:
        assert cfg.checkpoint_dir is not None
        self.cfg = cfg
        self.inboxes = inboxes
        self.hub = hub
        #: A state query is aligning: the next checkpoint waits for it.
        self.paused = False
        self.store = CheckpointStore(cfg.checkpoint_dir, keep=cfg.checkpoint_keep)
        self.every = cfg.checkpoint_interval.total_seconds()
        self.next = cfg.checkpoint_next
        self.last = time.monotonic()
        self.current: int | None = None
        self.started = 0.0
        self.parts: dict[int, dict[str, Any]] = {}
        self.failed: list[str] = []
        self.ended: set[int] = set()
        self.final: int | None = None
        self.exited = False
        self.requested = False

    def request(self) -> None:
        """Take a checkpoint as soon as the one in flight (if any) is done."""
        self.requested = True

    def _send(self, kind: str, payload: int) -> None:
        for q in self.inboxes:
            q.put((kind, -1, -1, payload))

    def tick(self) -> None:
        if self.current is not None or self.exited or self.paused:
            return
        n = len(self.inboxes)
        all_ended = len(self.ended) == n
        if all_ended and self.final is not None:
            self._send("X", 0)
            self.exited = True
            return
        if all_ended or self.requested or time.monotonic() - self.last >= self.every:
            self.requested = False
            cid = self.next
            self.next += 1
            self.store.begin(cid)
            self.current, self.started = cid, time.monotonic()
            self.parts, self.failed = {}, []
            if all_ended:
                self.final = cid
            self._send("C", cid)

    def part(self, worker: int, cid: int, entry: dict[str, Any] | None, error: str | None) -> None:
        if cid != self.current:
            return
        if entry is None:
            self.failed.append(f"worker {worker}: {error}")
        self.parts[worker] = entry or {}
        if len(self.parts) < len(self.inboxes):
            return
        tmp = self.store.tmp_path(cid)
        self.current, self.last = None, time.monotonic()
        seconds = self.last - self.started
        if self.failed:
            self.hub.checkpointed(cid, seconds, False)
            self.store.abort(tmp)
            log.warning(
                "checkpoint %d could not be written (%s); the job goes on and the next "
                "checkpoint retries",
                cid,
                "; ".join(self.failed),
            )
            if self.final == cid:
                self.final = None  # the last checkpoint must succeed: try again
            return
        entries = [self.parts[i] for i in range(len(self.inboxes))]
        try:
            path = self.store.complete(tmp, cid, entries, self.cfg.checkpoint_meta)
        except OSError as exc:
            self.store.abort(tmp)
            self.hub.checkpointed(cid, seconds, False)
            log.warning("checkpoint %d could not be completed (%s)", cid, exc)
            if self.final == cid:
                self.final = None
            return
        log.info("checkpoint %d written to %s in %.3f s", cid, path, seconds)
        self.hub.checkpointed(cid, seconds, True)
        self._send("K", cid)
        if fulfil_requests(self.store.path, path):
            # Stop with this savepoint: workers commit it, then stop; no checkpoint follows.
            self._send("S", 0)
            self.exited = True


def _run_local(
    nodes: list[Node],
    cfg: RunConfig,
    bounded: bool,
    hub: _Hub,
    control: RunControl,
    usr1: _CheckpointSignal,
) -> tuple[dict[str, StepStats], bool]:
    stop = threading.Event()
    requests: collections.deque[StateRequest] = collections.deque()
    control.attach_local(requests)
    with _stop_on_signals(stop.set, stop.is_set):
        worker = Worker(
            nodes,
            cfg,
            LocalTransport(),
            emit_mode=_emit_mode(bounded),
            should_stop=stop.is_set,
            report=hub.stats,
            publish=hub.rows,
            checkpointed=hub.checkpointed,
            requests=requests,
        )
        usr1.target = worker.request_checkpoint
        try:
            completed = worker.run()
        finally:
            usr1.target = None
        return worker.named_stats(), completed


class _CheckpointSignal:
    """SIGUSR1 asks the running job for a checkpoint now (an on-demand savepoint).

    Installed (in the main thread, with a checkpoint directory) for the whole run; ``target``
    is the running worker's or coordinator's request function, None between them.
    """

    def __init__(self, wanted: bool) -> None:
        self.enabled = (
            wanted
            and hasattr(signal, "SIGUSR1")
            and threading.current_thread() is threading.main_thread()
        )
        self.target: Callable[[], None] | None = None
        self._old: Any = None

    def _on_usr1(self, signum: int, frame: Any) -> None:
        target = self.target
        if target is None:
            log.warning("checkpoint requested (SIGUSR1) while the job is not running: ignored")
            return
        log.warning("checkpoint requested (SIGUSR1)")
        target()

    def __enter__(self) -> _CheckpointSignal:
        if self.enabled:
            self._old = signal.signal(signal.SIGUSR1, self._on_usr1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGUSR1, self._old)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the driver dies (a SIGKILLed driver must not
    leave workers writing behind a restarted job)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - best effort
        log.debug("could not ask to die with the driver")
    if os.getppid() == 1:  # the driver died before prctl took effect
        os._exit(1)


def _worker_main(
    payload: bytes,
    index: int,
    count: int,
    inboxes: list[Any],
    sent: Any,
    received: Any,
    driver: Any,
    stop: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    try:
        nodes, cfg, bounded = cloudpickle.loads(payload)
        transport = QueueTransport(index, count, inboxes, sent, received, cfg.max_inflight)

        def report(stats: dict[str, StepStats]) -> None:
            driver.put(("stats", index, stats))

        def publish(topic: str, rows: pl.DataFrame) -> None:
            driver.put(("rows", index, topic, _to_ipc(rows)))

        worker = Worker(
            nodes,
            cfg,
            transport,
            emit_mode=_emit_mode(bounded),
            should_stop=stop.is_set,
            report=report,
            publish=publish,
            control=driver.put,
        )
        completed = worker.run()
        if not completed:
            # Stopped: what is still queued for peers is no longer needed; do not wait at exit
            # for a peer that stopped reading. (A finished run flushes it: peers need the ends.)
            for q in inboxes:
                q.cancel_join_thread()
        driver.put(("done", index, worker.named_stats(), completed))
    except BaseException as exc:
        step = getattr(exc, "step_id", None)
        driver.put(("error", index, step, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class _Queries:
    """The driver's side of state queries with several workers: one aligns at a time."""

    def __init__(self, control: RunControl, inboxes: list[Any], coord: _Coordinator | None) -> None:
        self.control = control
        self.inboxes = inboxes
        self.coord = coord
        self.current: int | None = None
        self.expected: set[int] = set()

    def tick(self, done: set[int]) -> None:
        """Start the next waiting query when no checkpoint or query is aligning."""
        if self.current is not None or (self.coord is not None and self.coord.current is not None):
            return
        nxt = self.control.next_waiting()
        if nxt is None:
            return
        query, steps = nxt
        if done:
            self.control.fail(query, "the job is ending (workers have finished): no state read")
            return
        self.current, self.expected = query, set(range(len(self.inboxes)))
        if self.coord is not None:
            self.coord.paused = True
        for q in self.inboxes:
            q.put(("Q", -1, -1, (query, steps)))

    def part(self, worker: int, query: int, tables: dict[str, bytes], cut: dict[str, int]) -> None:
        frames = {step: _from_ipc(data) for step, data in tables.items()}
        self.control.add_part(query, worker, frames, cut)
        if query == self.current and self.expected <= self.control.parts(query):
            self.control.complete(query)
            self._next()

    def worker_done(self, worker: int) -> None:
        """A worker ended: a query it has not answered cannot be complete."""
        if self.current is not None and worker not in self.control.parts(self.current):
            self.control.fail(self.current, "the job is ending (a worker finished): no state read")
            self._next()

    def _next(self) -> None:
        self.current = None
        if self.coord is not None:
            self.coord.paused = False


def _run_processes(
    nodes: list[Node],
    cfg: RunConfig,
    bounded: bool,
    hub: _Hub,
    control: RunControl,
    usr1: _CheckpointSignal,
) -> tuple[dict[str, StepStats], bool]:
    n = cfg.workers
    ctx = mp.get_context("spawn")
    try:
        payload = cloudpickle.dumps((nodes, cfg, bounded))
    except Exception as exc:
        msg = f"the dataflow cannot be sent to worker processes: {exc}; run with workers=1"
        raise ConfigError(msg) from exc
    inboxes = [ctx.Queue() for _ in range(n)]
    sent = ctx.Array("q", n * n, lock=False)
    received = ctx.Array("q", n * n, lock=False)
    driver = ctx.Queue()
    stop = ctx.Event()
    threads = max(1, (os.cpu_count() or 1) // n)
    env_old = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = str(threads)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(payload, i, n, inboxes, sent, received, driver, stop),
            name=f"tideflow-worker-{i}",
            daemon=True,
        )
        for i in range(n)
    ]
    try:
        for p in procs:
            p.start()
    finally:
        if env_old is None:
            os.environ.pop("POLARS_MAX_THREADS", None)
        else:
            os.environ["POLARS_MAX_THREADS"] = env_old
    latest: dict[int, dict[str, StepStats]] = {}
    final: dict[int, dict[str, StepStats]] = {}
    coord = _Coordinator(cfg, inboxes, hub) if cfg.checkpoint_dir is not None else None
    queries = _Queries(control, inboxes, coord)
    control.attach_driver(lambda: driver.put(("wake", -1)))
    if coord is not None:
        usr1.target = coord.request
    completed = True
    error: tuple[Any, ...] | None = None
    signals = _stop_on_signals(stop.set, stop.is_set)
    signals.__enter__()
    try:
        while len(final) < n and error is None:
            queries.tick(set(final))  # first: a waiting state read goes before a checkpoint
            if coord is not None:
                coord.tick()
            try:
                msg = driver.get(timeout=0.05 if coord is not None else 0.2)
            except queue.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead and not error:
                    msg = f"worker {dead[0].name} died with exit code {dead[0].exitcode}"
                    raise JobError(msg) from None
                continue
            kind, idx = msg[0], msg[1]
            if kind == "stats":
                latest[idx] = msg[2]
                agg: dict[str, StepStats] = {}
                for s in latest.values():
                    _merge(agg, s)
                hub.stats(agg)
            elif kind == "rows":
                hub.rows(msg[2], _from_ipc(msg[3]))
            elif kind == "done":
                final[idx] = msg[2]
                completed = completed and msg[3]
                queries.worker_done(idx)
            elif kind == "state":
                queries.part(idx, msg[2], msg[3], msg[4])
            elif kind == "error":
                error = msg
            elif kind == "part" and coord is not None:
                coord.part(idx, msg[2], msg[3], msg[4])
            elif kind == "ended" and coord is not None:
                coord.ended.add(idx)
    finally:
        signals.__exit__(None, None, None)
        usr1.target = None
        if error is not None or len(final) < n:
            stop.set()
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
        for p in procs:
            p.join(timeout=10)
        for q in (*inboxes, driver):
            q.cancel_join_thread()
            q.close()
    if error is not None:
        _, idx, step, text, tb = error
        log.debug("worker %s traceback:\n%s", idx, tb)
        raise JobError(f"worker {idx} failed: {text}", step_id=step)
    stats: dict[str, StepStats] = {}
    for s in final.values():
        _merge(stats, s)
    return stats, completed
