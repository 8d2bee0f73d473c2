"""The tideflow exception and warning tree.

Every error a user can meet derives from :class:`TideflowError`:

- :class:`ConfigError` -- a pipeline or setting is wrong; raised before any data moves.
- :class:`DataError` -- a record could not be processed (used when a step is told to crash on
  bad data; by default bad records go to the dead-letter stream instead).
- :class:`ConnectorError` -- an external system (file, broker, database) failed.
- :class:`StateError` -- operator state could not be snapshotted or restored.
- :class:`JobError` -- a worker failed while the job ran; carries the step id.

Warnings for hidden costs derive from :class:`CostWarning`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectorError",
    "CostWarning",
    "DataError",
    "JobError",
    "StateError",
    "TideflowError",
]


class TideflowError(Exception):
    """Root of every tideflow error."""


class ConfigError(TideflowError, ValueError):
    """A pipeline, operator or setting is wrong; raised before the job starts."""


class DataError(TideflowError):
    """A record could not be processed and the step was told to fail on bad data."""


class ConnectorError(TideflowError):
    """A source or sink could not read from or write to its external system."""


class StateError(TideflowError):
    """Operator state could not be snapshotted or restored."""


class JobError(TideflowError):
    """A worker failed while running the job."""

    def __init__(self, message: str, *, step_id: str | None = None) -> None:
        super().__init__(message)
        self.step_id = step_id


class CostWarning(UserWarning):
    """A pipeline choice has a hidden cost (a per-record Python path, a shuffle, a buffer)."""
