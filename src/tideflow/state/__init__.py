"""Checkpoint storage and the state format (see ``docs/checkpoints.md``)."""

from tideflow.state._store import (
    FORMAT,
    VERSION,
    Checkpoint,
    CheckpointSettings,
    CheckpointStore,
)

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointSettings", "CheckpointStore"]
