"""Watching a run: the observer protocol used by progress display, dashboards and metrics.

Observers live in the driver process (the one that called ``run``). They receive the graph once,
counters summed over workers about twice a second, rows that sinks *publish* (bounded samples
of results, for live tables), each checkpoint taken, and the result at the end. Observer calls
happen on the driver's thread and must return quickly. An observer with an ``on_control``
method also gets the run's :class:`~tideflow.runtime.RunControl` before the run starts (for
consistent reads of keyed state, from any thread).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import polars as pl

if TYPE_CHECKING:
    from tideflow.runtime._control import RunControl
    from tideflow.runtime._run import RunResult
    from tideflow.runtime._worker import StepStats

__all__ = ["CheckpointInfo", "RunObserver", "StepInfo"]


@dataclasses.dataclass(frozen=True, slots=True)
class StepInfo:
    """One step of the running graph, as observers see it."""

    step_id: str
    kind: str
    #: Step ids feeding this step, with the port they come from.
    inputs: tuple[tuple[str, str], ...]
    #: What the step does beyond its kind, when known (e.g. ``"ml.evaluate LogisticRegression"``).
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A checkpoint the run took (or failed to write)."""

    checkpoint_id: int
    #: Seconds from its start to its manifest being written (or the failure).
    seconds: float
    #: False when it could not be written (the job goes on; the next one retries).
    written: bool
    #: When it ended, seconds since the epoch.
    at: float


@runtime_checkable
class RunObserver(Protocol):
    """Receives what a run does; every method is optional in practice (see ``BaseObserver``)."""

    def on_start(self, flow: str, steps: list[StepInfo], workers: int) -> None:
        """The run starts with this graph."""

    def on_stats(self, stats: dict[str, StepStats], elapsed: float) -> None:
        """Counters per step id, summed over workers, ``elapsed`` seconds into the run."""

    def on_rows(self, topic: str, rows: pl.DataFrame) -> None:
        """Rows published by a sink under ``topic`` (see ``SinkContext.publish``)."""

    def on_finish(self, result: RunResult) -> None:
        """The run ended (finished, stopped or failed: ``result`` says which)."""


class BaseObserver:
    """An observer that ignores everything; subclass and override what you need."""

    def on_control(self, control: RunControl) -> None:
        """Ignore (called before ``on_start`` with the handle of the run)."""

    def on_start(self, flow: str, steps: list[StepInfo], workers: int) -> None:
        """Ignore."""

    def on_stats(self, stats: dict[str, StepStats], elapsed: float) -> None:
        """Ignore."""

    def on_rows(self, topic: str, rows: pl.DataFrame) -> None:
        """Ignore."""

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        """Ignore."""

    def on_finish(self, result: RunResult) -> None:
        """Ignore."""
