"""Checkpoint storage, savepoints, state backends and the state format.

See ``docs/checkpoints.md`` and ``docs/state.md``.
"""

from tideflow.state._backends import DiskState, MemoryState
from tideflow.state._savepoint import load_savepoint, take_savepoint, write_savepoint
from tideflow.state._store import (
    FORMAT,
    VERSION,
    Checkpoint,
    CheckpointSettings,
    CheckpointStore,
    SnapshotChunk,
    SnapshotFile,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointSettings",
    "CheckpointStore",
    "DiskState",
    "MemoryState",
    "SnapshotChunk",
    "SnapshotFile",
    "load_savepoint",
    "take_savepoint",
    "write_savepoint",
]
