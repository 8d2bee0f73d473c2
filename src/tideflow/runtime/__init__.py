"""The runtime: workers, exchanges, operators and the run driver."""

from __future__ import annotations

from tideflow.runtime._observe import BaseObserver, RunObserver, StepInfo
from tideflow.runtime._run import RunResult, run
from tideflow.runtime._worker import RunConfig, StepStats

__all__ = [
    "BaseObserver",
    "RunConfig",
    "RunObserver",
    "RunResult",
    "StepInfo",
    "StepStats",
    "run",
]
