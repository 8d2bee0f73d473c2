"""tideflow: real-time big-data processing in Python.

One columnar dataflow API (Arrow micro-batches, Polars expressions) for unbounded streams and
bounded batches, with event time, keyed state, checkpoints and online machine learning.
"""

from __future__ import annotations

from tideflow._errors import (
    ConfigError,
    ConnectorError,
    CostWarning,
    DataError,
    JobError,
    StateError,
    TideflowError,
)
from tideflow.api import BestMatch, Dataflow, KeyedStream, Split, Stream
from tideflow.runtime import RunResult, StepStats, run
from tideflow.state._backends import DiskState, MemoryState

__version__ = "0.1.0"

__all__ = [
    "BestMatch",
    "ConfigError",
    "ConnectorError",
    "CostWarning",
    "DataError",
    "Dataflow",
    "DiskState",
    "JobError",
    "KeyedStream",
    "MemoryState",
    "RunResult",
    "Split",
    "StateError",
    "StepStats",
    "Stream",
    "TideflowError",
    "__version__",
    "run",
]
