"""Watching a run: the observer protocol used by progress display, dashboards and metrics.

Observers live in the driver process (the one that called ``run``). They receive the graph once,
counters summed over workers about twice a second, rows that sinks *publish* (bounded samples
of results, for live tables), and the result at the end. Observer calls happen on the driver's
thread and must return quickly.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import polars as pl

if TYPE_CHECKING:
    from tideflow.runtime._run import RunResult
    from tideflow.runtime._worker import StepStats

__all__ = ["RunObserver", "StepInfo"]


@dataclasses.dataclass(frozen=True, slots=True)
class StepInfo:
    """One step of the running graph, as observers see it."""

    step_id: str
    kind: str
    #: Step ids feeding this step, with the port they come from.
    inputs: tuple[tuple[str, str], ...]


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

    def on_start(self, flow: str, steps: list[StepInfo], workers: int) -> None:
        """Ignore."""

    def on_stats(self, stats: dict[str, StepStats], elapsed: float) -> None:
        """Ignore."""

    def on_rows(self, topic: str, rows: pl.DataFrame) -> None:
        """Ignore."""

    def on_finish(self, result: RunResult) -> None:
        """Ignore."""
