"""Checkpoint storage, savepoints and the state format (see ``docs/checkpoints.md``)."""

from tideflow.state._savepoint import load_savepoint, take_savepoint, write_savepoint
from tideflow.state._store import (
    FORMAT,
    VERSION,
    Checkpoint,
    CheckpointSettings,
    CheckpointStore,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointSettings",
    "CheckpointStore",
    "load_savepoint",
    "take_savepoint",
    "write_savepoint",
]
