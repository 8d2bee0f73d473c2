"""State backends: where keyed state lives (memory, or disk for state larger than memory).

What the user configures is a frozen settings object (:class:`MemoryState`,
:class:`DiskState`); the runtime builds the store from it. A backend is chosen per run
(``tf.run(flow, state=...)``) and can be overridden per step (``agg(..., state=...)``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from tideflow._errors import ConfigError

__all__ = ["DiskState", "MemoryState", "StateBackend", "StateChoice", "state_backend"]


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryState:
    """Keyed state in memory, in NumPy arrays indexed by key (the default, and the fastest).

    Examples
    --------
    >>> MemoryState()
    MemoryState()
    """


@dataclasses.dataclass(frozen=True, slots=True)
class DiskState:
    """Keyed state on disk (SQLite) with the recently used keys in memory.

    Each keyed step on each worker keeps the ``cache_keys`` most recently touched keys in
    memory (NumPy arrays, as the memory backend) and the rest in a SQLite database under
    ``path``. Memory stays bounded however many keys there are; throughput drops when most
    keys of a batch are not in the hot set (see ``docs/state.md`` for measured figures).

    Parameters
    ----------
    path
        Directory for the working databases (created; one file per step and worker, removed
        when the run ends). ``None``: a fresh temporary directory.
    cache_keys
        Keys kept in memory per step and worker (at least 1,000).
    cache_mb
        SQLite page cache per step and worker, in MiB (at least 1).

    Examples
    --------
    >>> DiskState("/tmp/tf-state", cache_keys=200_000).cache_keys
    200000
    >>> DiskState(cache_keys=10)
    Traceback (most recent call last):
    ...
    tideflow._errors.ConfigError: DiskState: cache_keys must be a whole number >= 1000, got 10
    """

    path: str | os.PathLike[str] | None = None
    cache_keys: int = 250_000
    cache_mb: int = 64

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, str | os.PathLike):
            msg = f"DiskState: path must be a directory path or None, got {self.path!r}"
            raise ConfigError(msg)
        for name, low in (("cache_keys", 1000), ("cache_mb", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                msg = f"DiskState: {name} must be a whole number >= {low}, got {value!r}"
                raise ConfigError(msg)

    @property
    def directory(self) -> Path | None:
        """The working directory as a Path (None: a temporary one)."""
        return None if self.path is None else Path(self.path)


StateBackend = MemoryState | DiskState
#: What ``state=`` accepts: a settings object, or ``"memory"`` / ``"disk"`` (default settings).
StateChoice = StateBackend | Literal["memory", "disk"]


def state_backend(value: object, where: str) -> StateBackend | None:
    """Validate a ``state=`` choice; ``None`` stays ``None`` (use the run's default).

    Examples
    --------
    >>> state_backend("disk", "run()")
    DiskState(path=None, cache_keys=250000, cache_mb=64)
    >>> state_backend("rocks", "step 'x'")
    Traceback (most recent call last):
    ...
    tideflow._errors.ConfigError: step 'x': state='rocks' is not one of ['memory', 'disk'] or a MemoryState/DiskState
    """
    if value is None or isinstance(value, MemoryState | DiskState):
        return value
    if value == "memory":
        return MemoryState()
    if value == "disk":
        return DiskState()
    msg = f"{where}: state={value!r} is not one of ['memory', 'disk'] or a MemoryState/DiskState"
    raise ConfigError(msg)
