"""The runtime: workers, exchanges, operators and the run driver."""

from __future__ import annotations

from tideflow.runtime._control import RunControl, StateSnapshot
from tideflow.runtime._observe import BaseObserver, CheckpointInfo, RunObserver, StepInfo
from tideflow.runtime._run import RunResult, run
from tideflow.runtime._worker import LATENCY_BUCKETS, RunConfig, StepStats

__all__ = [
    "LATENCY_BUCKETS",
    "BaseObserver",
    "CheckpointInfo",
    "RunConfig",
    "RunControl",
    "RunObserver",
    "RunResult",
    "StateSnapshot",
    "StepInfo",
    "StepStats",
    "run",
]
