"""The contracts between the runtime and every source and sink.

A *source* or *sink* object is an immutable settings object (what the user configures). The
runtime calls ``build(ctx)`` once per worker to make the runtime object that does the I/O and
holds the position (what runs). Positions are plain JSON-able data so checkpoints can store them.

Sources
-------
``Source.build(ctx)`` returns a :class:`SourceReader` for the partitions that worker owns.
Partitioning is the source's business: it gets ``ctx.worker_index``/``ctx.worker_count`` and
``ctx.resume`` (the merged positions of *all* partitions from a checkpoint, keyed by a stable
partition key such as a file path), so a job can resume with a different number of workers.

``SourceReader.poll()`` returns a :class:`SourceBatch` of at most ``ctx.batch_size`` rows, or
``None`` when nothing is available right now (an unbounded source waiting for data). Once a
bounded reader is exhausted, ``finished`` is true. Records that cannot be decoded go into
``SourceBatch.dead`` (see :func:`dead_letters`) and never stop the job.

Sinks
-----
``Sink.build(ctx)`` returns a :class:`SinkWriter`. ``write`` receives micro-batches; ``flush`` is
called periodically and before a checkpoint; ``close`` at the end of the stream (finalize files,
commit). A sink whose ``single_writer`` is true receives all data on worker 0 (one output file).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "CheckpointHold",
    "Sink",
    "SinkContext",
    "SinkWriter",
    "Source",
    "SourceBatch",
    "SourceContext",
    "SourceReader",
    "dead_letters",
    "worker_entries",
]

#: Columns of every dead-letter record: the step that rejected it, where it came from
#: (``file:line``, ``file@offset``, ``topic/partition/offset``), why, and its raw text.
DEAD_LETTER_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.String(),
    "origin": pl.String(),
    "reason": pl.String(),
    "raw": pl.String(),
    "time": pl.Datetime("us", "UTC"),
}


def dead_letters(
    step: str,
    origins: Sequence[str],
    reasons: Sequence[str],
    raws: Sequence[str | None],
) -> pl.DataFrame:
    """Build a dead-letter frame with :data:`DEAD_LETTER_SCHEMA`.

    Examples
    --------
    >>> dl = dead_letters("read", ["a.csv:3"], ["expected 2 fields, got 3"], ["1,2,3"])
    >>> dl.select("step", "origin", "reason").row(0)
    ('read', 'a.csv:3', 'expected 2 fields, got 3')
    """
    now = datetime.now(UTC)
    n = len(origins)
    return pl.DataFrame(
        {
            "step": [step] * n,
            "origin": list(origins),
            "reason": list(reasons),
            "raw": list(raws),
            "time": [now] * n,
        },
        schema=DEAD_LETTER_SCHEMA,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source is told when the runtime builds it on one worker."""

    step_id: str
    worker_index: int
    worker_count: int
    batch_size: int
    #: Positions of all partitions from the checkpoint being resumed (empty on a fresh start).
    resume: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class SourceBatch:
    """One micro-batch from a source: good rows and dead letters (either may be empty)."""

    data: pl.DataFrame
    dead: pl.DataFrame | None = None


class SourceReader(abc.ABC):
    """The runtime side of a source on one worker: reads, and knows its position."""

    @abc.abstractmethod
    def poll(self) -> SourceBatch | None:
        """Return the next micro-batch, or ``None`` if nothing is available right now."""

    @property
    @abc.abstractmethod
    def finished(self) -> bool:
        """True once a bounded reader has delivered everything (never for unbounded ones)."""

    @abc.abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """Return the position of every partition this reader owns (JSON-able)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files, sockets and consumers."""


class Source(abc.ABC):
    """Settings of a source; immutable. ``build`` makes the reader."""

    @property
    @abc.abstractmethod
    def bounded(self) -> bool:
        """True when the input ends by itself (files), false for streams (follow mode, Kafka)."""

    @property
    def fixed(self) -> bool:
        """True when nothing is ever added to the input after its end (a generated or given
        set of records): a job resumed after that end can read nothing new.

        When every source of a job is fixed, the job's last checkpoint, taken after the end,
        keeps no operator state (see docs/checkpoints.md). False (the default) for inputs that
        may grow: a directory that gains files, a topic, a table.
        """
        return False

    def validate(self, step_id: str) -> None:  # noqa: B027 - optional hook
        """Check settings before the job starts; raise :class:`~tideflow.ConfigError`."""

    def schema(self) -> dict[str, pl.DataType] | None:
        """The columns this source produces, when known before reading (``None`` otherwise)."""
        return None

    def project(self, columns: frozenset[str]) -> Source | None:
        """This source reading only ``columns``, all that the flow uses of it; None: cannot.

        The runtime asks before it builds the readers, with the columns that the steps after
        the source read (``select``, ``filter``, ``with_columns``, keys, aggregates...).
        """
        return None

    @abc.abstractmethod
    def build(self, ctx: SourceContext) -> SourceReader:
        """Make the reader for the partitions of worker ``ctx.worker_index``."""


@dataclasses.dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink is told when the runtime builds it on one worker."""

    step_id: str
    worker_index: int
    worker_count: int
    resume: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Send a (small) frame to the run's observers under a topic, e.g. for live tables.
    publish: Callable[[str, pl.DataFrame], None] = dataclasses.field(
        default=lambda topic, rows: None
    )
    #: True when the run takes checkpoints (exactly-once sinks keep what a restart needs).
    checkpointing: bool = False
    #: The flow's name when the run takes checkpoints (exactly-once sinks record it).
    job: str = ""


def worker_entries(ctx: SinkContext) -> dict[int, Mapping[str, Any]]:
    """The per-worker entries (``"w0003": {...}``) of a sink state merged over all workers.

    Exactly-once sinks key their snapshot by worker, so that a rescaled restore can tell whose
    output each entry holds: worker ``i`` takes entry ``i``, worker 0 also adopts the entries of
    workers that no longer exist.

    Examples
    --------
    >>> ctx = SinkContext("out", 0, 1, resume={"w0000": {"rows": 1}, "w0002": {"rows": 0}})
    >>> worker_entries(ctx)
    {0: {'rows': 1}, 2: {'rows': 0}}
    """
    out: dict[int, Mapping[str, Any]] = {}
    for k, e in (ctx.resume or {}).items():
        if isinstance(k, str) and k.startswith("w") and k[1:].isdigit() and isinstance(e, Mapping):
            out[int(k[1:])] = e
    return out


class CheckpointHold:
    """Rows a sink holds back until the checkpoint that covers them completes.

    ``hold`` keeps a batch; ``cut(K)`` is checkpoint K's cut (``pre_commit``): what is held
    so far is *staged* under K (also what a failed earlier checkpoint had staged), and later
    batches wait for the next cut; ``take(c)`` hands over the staged batches when they were
    staged under a checkpoint ``<= c`` (``commit``), else ``None``.

    Examples
    --------
    >>> h = CheckpointHold()
    >>> h.hold(pl.DataFrame({"x": [1]})); h.cut(1); h.hold(pl.DataFrame({"x": [2]}))
    >>> h.take(0) is None, [f["x"].to_list() for f in h.take(1)], h.staged, len(h.after)
    (True, [[1]], None, 1)
    """

    def __init__(self) -> None:
        self.pending: list[pl.DataFrame] = []  # before the newest cut, not yet committed
        self.after: list[pl.DataFrame] = []  # after the staged checkpoint's cut
        self.staged: int | None = None

    def hold(self, batch: pl.DataFrame) -> None:
        """Keep ``batch`` until its checkpoint commits."""
        (self.after if self.staged is not None else self.pending).append(batch)

    def cut(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is taken: stage everything held so far under it."""
        if self.after:
            self.pending += self.after
            self.after = []
        if self.pending:
            self.staged = checkpoint_id

    def rows(self) -> int:
        """Rows staged or waiting for the next cut's staging (not the ones after the cut)."""
        return sum(f.height for f in self.pending)

    def take(self, checkpoint_id: int) -> list[pl.DataFrame] | None:
        """The staged batches if checkpoint ``checkpoint_id`` covers them (then forgotten)."""
        if self.staged is None or self.staged > checkpoint_id:
            return None
        out, self.pending, self.staged = self.pending, [], None
        return out


class SinkWriter(abc.ABC):
    """The runtime side of a sink on one worker."""

    @abc.abstractmethod
    def write(self, batch: pl.DataFrame) -> None:
        """Write one micro-batch (may buffer)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable/visible."""

    def snapshot(self) -> dict[str, Any]:
        """Return what a restart needs to continue this writer (JSON-able)."""
        return {}

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        """Checkpoint ``checkpoint_id`` is being taken: make what was written durable but not
        yet visible, and return the snapshot (JSON-able) a restart needs.

        The default flushes and returns :meth:`snapshot` (at-least-once sinks).
        """
        self.flush()
        return self.snapshot()

    def commit(self, checkpoint_id: int) -> None:  # noqa: B027 - optional hook
        """Checkpoint ``checkpoint_id`` is complete: make its pre-committed output visible.

        Called at most once per checkpoint, possibly after :meth:`close`. Exactly-once sinks
        also roll forward a completed checkpoint's output when they are built with its
        snapshot (the commit may have been cut short by a crash).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """End of stream: flush, finalize files, release resources."""


class Sink(abc.ABC):
    """Settings of a sink; immutable. ``build`` makes the writer."""

    #: When true, the runtime routes every batch to worker 0 (for example one output file).
    single_writer: bool = False

    def validate(self, step_id: str) -> None:  # noqa: B027 - optional hook
        """Check settings before the job starts; raise :class:`~tideflow.ConfigError`."""

    def check_run(self, step_id: str, *, bounded: bool, checkpointing: bool) -> None:  # noqa: B027
        """Check the sink fits the run (``bounded`` input, ``checkpointing`` on) before it
        starts; raise :class:`~tideflow.ConfigError` (exactly-once without checkpoints on a
        stream that never ends, ...)."""

    @abc.abstractmethod
    def build(self, ctx: SinkContext) -> SinkWriter:
        """Make the writer for worker ``ctx.worker_index``."""
