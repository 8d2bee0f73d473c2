"""Asking a running job for a consistent read of its keyed state (SQL over state).

A read is one *cut* of the whole job: with one worker it is taken between two batches; with
several, the driver sends a state query that travels through the dataflow as a barrier, like a
checkpoint's (sources stop at it, exchanges align on it), and each worker answers with the
state of the requested steps once every input is at the barrier. So every keyed step's table
reflects exactly the records the sources had pushed before the cut, on every worker, and the
answer says how many those were (:attr:`StateSnapshot.cut`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import polars as pl

from tideflow._errors import StateError
from tideflow.runtime._worker import StateRequest

__all__ = ["RunControl", "StateSnapshot"]


@dataclasses.dataclass(frozen=True, slots=True)
class StateSnapshot:
    """Keyed state of some steps, as of one consistent cut of the running job."""

    #: One frame per step id: the key columns and the current aggregates, one row per key.
    tables: dict[str, pl.DataFrame]
    #: Columns ``source`` (step id), ``worker`` and ``records``: how many records each
    #: worker's share of each source had pushed into the dataflow at the cut.
    cut: pl.DataFrame
    #: Seconds from the request to the answer.
    seconds: float


@dataclasses.dataclass(slots=True)
class _Pending:
    steps: tuple[str, ...]
    future: concurrent.futures.Future[StateSnapshot]
    started: float
    parts: dict[int, tuple[dict[str, pl.DataFrame], dict[str, int]]] = dataclasses.field(
        default_factory=dict
    )


class RunControl:
    """The handle of a running job that observers get (``on_control``): reads of keyed state.

    Thread-safe: a web server thread may ask while the job runs.

    Parameters
    ----------
    queryable
        Step ids whose keyed state can be read (keyed aggregations).

    Examples
    --------
    >>> import threading, time
    >>> import tideflow as tf
    >>> from tideflow.runtime import BaseObserver
    >>> from tideflow.testing import PAUSE, CollectSink, TestingSource
    >>> class Handle(BaseObserver):
    ...     def on_control(self, control):
    ...         self.control = control
    >>> flow = tf.Dataflow("peek")
    >>> rows = [{"k": "a"}, {"k": "b"}, {"k": "a"}]
    >>> src = TestingSource(rows + [PAUSE] * 100, schema={"k": pl.String()})
    >>> _ = flow.source(src, name="src").key_by("k").agg(
    ...     pl.len().alias("n"), name="counts").sink(CollectSink())
    >>> handle = Handle()
    >>> job = threading.Thread(target=tf.run, args=(flow,), kwargs={"observers": [handle]})
    >>> job.start()
    >>> while not hasattr(handle, "control") and job.is_alive():
    ...     time.sleep(0.01)
    >>> snap = handle.control.read_state(["peek.counts"])
    >>> counted = snap.tables["peek.counts"]["n"].sum()  # 0 if read before the first batch
    >>> counted == snap.cut["records"].sum()
    True
    >>> job.join()
    """

    def __init__(self, queryable: Iterable[str]) -> None:
        self.queryable = frozenset(queryable)
        self._lock = threading.Lock()
        self._next = 1
        self._pending: dict[int, _Pending] = {}
        self._waiting: collections.deque[int] = collections.deque()
        self._local: collections.deque[StateRequest] | None = None
        self._wake: Callable[[], None] | None = None
        self._closed: str | None = None

    # -- asking (any thread) ------------------------------------------------------------------
    def request(self, steps: Iterable[str]) -> concurrent.futures.Future[StateSnapshot]:
        """Ask for the state of ``steps`` at the next cut; the future holds the answer."""
        wanted = tuple(dict.fromkeys(steps))
        unknown = [s for s in wanted if s not in self.queryable]
        future: concurrent.futures.Future[StateSnapshot] = concurrent.futures.Future()
        if unknown:
            msg = (
                f"step '{unknown[0]}' has no queryable keyed state; steps that have some: "
                f"{sorted(self.queryable) or 'none'}"
            )
            future.set_exception(StateError(msg))
            return future
        with self._lock:
            if self._closed is not None:
                future.set_exception(StateError(self._closed))
                return future
            query = self._next
            self._next += 1
            self._pending[query] = _Pending(wanted, future, time.monotonic())
            if self._local is not None:
                self._local.append(StateRequest(query, wanted, self._local_answer(query)))
            else:
                self._waiting.append(query)
            wake = self._wake
        if wake is not None:
            try:
                wake()
            except (ValueError, OSError):  # the run ended meanwhile (its queue is closed)
                self.fail(query, self._closed or "the run has ended")
        return future

    def read_state(self, steps: Iterable[str], *, timeout: float = 10.0) -> StateSnapshot:
        """The state of ``steps`` as of one consistent cut (waits at most ``timeout`` seconds).

        Raises
        ------
        tideflow.StateError
            A step has no queryable state, the run ended, or no answer came in time.
        """
        future = self.request(steps)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            msg = f"no consistent state read within {timeout:g}s (the job may be stalled or busy)"
            raise StateError(msg) from None

    # -- the engine's side -------------------------------------------------------------------
    def attach_local(self, requests: collections.deque[StateRequest]) -> None:
        """One worker in this thread: requests go straight to its queue."""
        with self._lock:
            self._local = requests
            while self._waiting:
                query = self._waiting.popleft()
                steps = self._pending[query].steps
                requests.append(StateRequest(query, steps, self._local_answer(query)))

    def attach_driver(self, wake: Callable[[], None]) -> None:
        """Several workers: ``wake`` makes the driver loop look at :meth:`next_waiting`."""
        with self._lock:
            self._wake = wake
            waiting = bool(self._waiting)
        if waiting:
            wake()

    def next_waiting(self) -> tuple[int, tuple[str, ...]] | None:
        """The next query the driver should start (None when none waits)."""
        with self._lock:
            while self._waiting:
                query = self._waiting.popleft()
                pending = self._pending.get(query)
                if pending is not None and not pending.future.cancelled():
                    return query, pending.steps
                self._pending.pop(query, None)
            return None

    def add_part(
        self, query: int, worker: int, tables: dict[str, pl.DataFrame], cut: dict[str, int]
    ) -> None:
        """A worker's answer to ``query``."""
        with self._lock:
            pending = self._pending.get(query)
            if pending is not None:
                pending.parts[worker] = (tables, cut)

    def parts(self, query: int) -> set[int]:
        """Workers that answered ``query`` so far."""
        with self._lock:
            pending = self._pending.get(query)
            return set(pending.parts) if pending is not None else set()

    def complete(self, query: int) -> None:
        """Every expected worker answered: combine the parts and hand the answer over."""
        with self._lock:
            pending = self._pending.pop(query, None)
        if pending is None or pending.future.done():
            return
        tables: dict[str, pl.DataFrame] = {}
        cut_rows: list[tuple[str, int, int]] = []
        for worker in sorted(pending.parts):
            part, cut = pending.parts[worker]
            for step, frame in part.items():
                if step in tables and frame.width:
                    tables[step] = pl.concat([tables[step], frame], how="diagonal_relaxed")
                elif step not in tables or not tables[step].width:
                    tables[step] = frame
            cut_rows.extend((src, worker, n) for src, n in sorted(cut.items()))
        frame = pl.DataFrame(
            cut_rows,
            schema={"source": pl.String, "worker": pl.Int64, "records": pl.Int64},
            orient="row",
        )
        seconds = time.monotonic() - pending.started
        _settle(pending.future, StateSnapshot(tables, frame, seconds))

    def fail(self, query: int, reason: str) -> None:
        """``query`` cannot be answered."""
        with self._lock:
            pending = self._pending.pop(query, None)
        if pending is not None:
            _settle(pending.future, StateError(reason))

    def close(
        self, reason: str = "the run has ended: keyed state is read while a job runs"
    ) -> None:
        """The run ended: every open and later request fails with ``reason``."""
        with self._lock:
            self._closed = reason
            pending = list(self._pending.values())
            self._pending.clear()
            self._waiting.clear()
        for p in pending:
            _settle(p.future, StateError(reason))

    def _local_answer(
        self, query: int
    ) -> Callable[[dict[str, pl.DataFrame], dict[str, int]], None]:
        def answer(tables: dict[str, pl.DataFrame], cut: dict[str, int]) -> None:
            self.add_part(query, 0, tables, cut)
            self.complete(query)

        return answer


def _settle(future: concurrent.futures.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass
