"""The testing kit (public API): a scripted source and a collecting sink.

:class:`TestingSource` replays rows or batches, split between workers, with markers to pause
(nothing available once) or abort (raise, to simulate a crash). :class:`CollectSink` gathers
what a run wrote, also from worker processes, for assertions.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from tideflow._errors import ConfigError
from tideflow.connectors._base import (
    Sink,
    SinkContext,
    SinkWriter,
    Source,
    SourceBatch,
    SourceContext,
    SourceReader,
)

__all__ = ["ABORT", "PAUSE", "CollectSink", "FakeClock", "TestingAbort", "TestingSource"]


class TestingAbort(RuntimeError):
    """Raised by :class:`TestingSource` at an :data:`ABORT` marker."""

    __test__ = False


@dataclasses.dataclass(frozen=True)
class _Marker:
    name: str


#: Marker: the source reports nothing available once.
PAUSE = _Marker("pause")
#: Marker: the source raises :class:`TestingAbort` (a simulated crash).
ABORT = _Marker("abort")


class FakeClock:
    """A processing-time clock that moves only when told (pass it as ``run(..., clock=)``).

    ``clock.advance(seconds)`` moves it now; ``clock.advance_marker(seconds)`` is an item for a
    :class:`TestingSource` that moves it when the source reaches that point (one worker).

    Examples
    --------
    >>> clock = FakeClock(100.0)
    >>> clock.advance(5); clock()
    105.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds

    def advance_marker(self, seconds: float) -> _Advance:
        """A source item that advances this clock when reached."""
        return _Advance(self, seconds)


@dataclasses.dataclass(frozen=True)
class _Advance:
    clock: FakeClock
    seconds: float


Item = dict[str, Any] | pl.DataFrame | _Marker | _Advance


class TestingSource(Source):
    """A source that replays ``items``: rows (dicts), batches (DataFrames) or markers.

    Consecutive rows form batches of at most ``batch_size`` rows; item ``i`` of the resulting
    batch list goes to worker ``i % worker_count``. With ``bounded=False`` the source never
    ends (it reports nothing available once its items are used up). ``fixed=True`` declares
    that no items ever follow the end (the source's ``fixed`` property): the last
    checkpoint of a job that reads only fixed sources keeps no state of its result steps.

    Examples
    --------
    >>> src = TestingSource([{"x": 1}, {"x": 2}, PAUSE, {"x": 3}], batch_size=10)
    >>> reader = src.build(SourceContext("t", 0, 1, 100))
    >>> [(b := reader.poll()) and b.data["x"].to_list() for _ in range(3)], reader.finished
    ([[1, 2], None, [3]], True)
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        items: Sequence[Item],
        *,
        bounded: bool = True,
        batch_size: int | None = None,
        schema: dict[str, pl.DataType] | None = None,
        fixed: bool = False,
    ) -> None:
        self.items = list(items)
        self._bounded = bounded
        if fixed and not bounded:
            msg = "TestingSource(fixed=True) needs bounded=True: an endless source has no end"
            raise ConfigError(msg)
        self._fixed = fixed
        self.batch_size = batch_size
        self._schema = schema

    @property
    def bounded(self) -> bool:
        return self._bounded

    @property
    def fixed(self) -> bool:
        """Whether the items are declared final (``fixed=True``): nothing follows the end."""
        return self._fixed

    def schema(self) -> dict[str, pl.DataType] | None:
        return self._schema

    def _batches(self, batch_size: int) -> list[pl.DataFrame | _Marker | _Advance]:
        out: list[pl.DataFrame | _Marker | _Advance] = []
        rows: list[dict[str, Any]] = []

        def close_rows() -> None:
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                out.append(
                    pl.DataFrame(chunk, schema=self._schema)
                    if self._schema
                    else pl.from_dicts(chunk)
                )
            rows.clear()

        for it in self.items:
            if isinstance(it, dict):
                rows.append(it)
                continue
            close_rows()
            out.append(it)
        close_rows()
        return out

    def build(self, ctx: SourceContext) -> SourceReader:
        batches = self._batches(self.batch_size or ctx.batch_size)
        mine = [b for i, b in enumerate(batches) if i % ctx.worker_count == ctx.worker_index]
        key = f"w{ctx.worker_index}of{ctx.worker_count}"
        start = int(ctx.resume.get(key, 0))
        return _TestingReader(mine, start, key, self._bounded)


class _TestingReader(SourceReader):
    def __init__(
        self, batches: list[pl.DataFrame | _Marker | _Advance], start: int, key: str, bounded: bool
    ) -> None:
        self.batches = batches
        self.pos = start
        self.key = key
        self.bounded = bounded

    def poll(self) -> SourceBatch | None:
        if self.pos >= len(self.batches):
            return None
        item = self.batches[self.pos]
        self.pos += 1
        # Markers are compared by value: a worker process holds unpickled copies.
        if isinstance(item, _Marker) and item.name == PAUSE.name:
            return None
        if isinstance(item, _Advance):
            item.clock.advance(item.seconds)
            return None
        if isinstance(item, _Marker) and item.name == ABORT.name:
            raise TestingAbort("TestingSource reached an ABORT marker")
        assert isinstance(item, pl.DataFrame)
        return SourceBatch(item)

    @property
    def finished(self) -> bool:
        return self.bounded and self.pos >= len(self.batches)

    def snapshot(self) -> dict[str, Any]:
        return {self.key: self.pos}


class CollectSink(Sink):
    """Collects every batch written, from any worker process, for assertions.

    Batches are stored as Arrow IPC files in a temporary directory that :meth:`frame` reads.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tideflow-collect-"))

    def build(self, ctx: SinkContext) -> SinkWriter:
        return _CollectWriter(self.dir, ctx.worker_index)

    def frames(self) -> list[pl.DataFrame]:
        """Every batch written, in write order per worker."""
        files = sorted(
            self.dir.glob("*.arrow"), key=lambda p: tuple(int(x) for x in p.stem.split("-"))
        )
        return [pl.read_ipc(f) for f in files]

    def frame(self) -> pl.DataFrame:
        """All rows written, as one DataFrame (empty if none)."""
        frames = self.frames()
        if not frames:
            return pl.DataFrame()
        return pl.concat(frames, how="vertical_relaxed")

    def rows(self) -> list[dict[str, Any]]:
        """All rows written, as dicts."""
        return self.frame().to_dicts()

    def clear(self) -> None:
        """Forget what was collected."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)


class _CollectWriter(SinkWriter):
    def __init__(self, directory: Path, worker: int) -> None:
        self.dir = directory
        self.worker = worker
        self.n = 0

    def write(self, batch: pl.DataFrame) -> None:
        tmp = self.dir / f".{self.worker}-{self.n}.tmp"
        batch.write_ipc(tmp)
        tmp.rename(self.dir / f"{self.worker}-{self.n}.arrow")
        self.n += 1

    def close(self) -> None:
        pass
