"""Memory over a long run: the generator's batches fed in process through a query's pipeline.

No input files: a source pulls ``iter_batches`` of the generator (the events of one kind, only
the columns the query reads), so a run of 50 M events needs no disk. The pipeline is the
query's tideflow pipeline of the side-by-side table; its results go to a sink that counts
them. The run takes checkpoints like the table's runs (``checkpoint_interval`` seconds, into a
temporary directory). RSS (``VmRSS`` of the process) is sampled when the source has handed
over each tenth of the input; the growth is the last sample minus the first. One worker (the
job runs in this process, so one RSS is the whole job's).

Run in a subprocess per query::

    python -m tideflow.bench.nexmark._memory --query q1 --events 50000000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import polars as pl

from tideflow._errors import ConfigError
from tideflow.bench.nexmark._generator import EventBatch, iter_batches
from tideflow.bench.nexmark._model import GeneratorSettings
from tideflow.bench.nexmark._worker import peak_rss_mb, rss_mb
from tideflow.connectors._base import (
    Sink,
    SinkContext,
    SinkWriter,
    Source,
    SourceBatch,
    SourceContext,
    SourceReader,
)

__all__ = ["MEMORY_QUERIES", "main", "rss_mb", "run_memory"]

MEMORY_QUERIES = ("q0", "q1", "q2")
_SAMPLES = 10


@dataclasses.dataclass
class _Probe:
    """RSS samples taken by the source as it passes each tenth of the input."""

    events: int
    samples: list[dict[str, float]] = dataclasses.field(default_factory=list)
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def passed(self, events_done: int) -> None:
        due = (len(self.samples) + 1) * self.events / _SAMPLES
        while len(self.samples) < _SAMPLES and events_done >= due:
            self.samples.append(
                {
                    "events": events_done,
                    "rss_mb": rss_mb(),
                    "seconds": time.perf_counter() - self.t0,
                }
            )
            due = (len(self.samples) + 1) * self.events / _SAMPLES


@dataclasses.dataclass(frozen=True)
class _GeneratedEvents(Source):
    """Events of one kind straight from the generator, ``batch_events`` event numbers a poll."""

    settings: GeneratorSettings
    kind: str
    columns: tuple[str, ...]
    batch_events: int
    probe: _Probe

    @property
    def bounded(self) -> bool:
        return True

    def build(self, ctx: SourceContext) -> SourceReader:
        return _GeneratedReader(self, ctx)


class _GeneratedReader(SourceReader):
    def __init__(self, src: _GeneratedEvents, ctx: SourceContext) -> None:
        self._src = src
        self._done = 0
        self._batches: Iterator[EventBatch] = iter_batches(
            src.settings, batch_events=src.batch_events
        )
        self._finished = False

    def poll(self) -> SourceBatch | None:
        batch = next(self._batches, None)
        if batch is None:
            self._finished = True
            return None
        frame: pl.DataFrame = getattr(batch, self._src.kind)
        self._done = batch.stop
        self._src.probe.passed(batch.stop)
        return SourceBatch(frame.select(self._src.columns))

    @property
    def finished(self) -> bool:
        return self._finished

    def snapshot(self) -> dict[str, Any]:
        return {"events_done": self._done}


@dataclasses.dataclass(frozen=True)
class _CountSink(Sink):
    counts: list[int]

    def build(self, ctx: SinkContext) -> SinkWriter:
        return _CountWriter(self.counts)


class _CountWriter(SinkWriter):
    def __init__(self, counts: list[int]) -> None:
        self._counts = counts

    def write(self, batch: pl.DataFrame) -> None:
        self._counts[0] += batch.height

    def close(self) -> None:
        pass


class _GeneratedInputs:
    """The ``_Inputs`` of the query pipelines, over generated batches instead of files."""

    def __init__(self, flow: Any, settings: GeneratorSettings, batch_events: int) -> None:
        self.flow = flow
        self.settings = settings
        self.batch_events = batch_events
        self.probe = _Probe(settings.events)
        self._streams: dict[str, Any] = {}

    def read(self, kind: str, *columns: str, seq: bool = False) -> Any:
        if seq or not columns:
            msg = f"nexmark memory: generated inputs give named columns of {kind!r}, no seq"
            raise ConfigError(msg)
        if kind not in self._streams:
            source = _GeneratedEvents(
                self.settings, kind, tuple(columns), self.batch_events, self.probe
            )
            self._streams[kind] = self.flow.source(source, name=kind)
        return self._streams[kind]


def run_memory(
    query: str,
    events: int,
    *,
    seed: int = 0,
    batch_events: int = 100_000,
    checkpoint_interval: float = 10.0,
) -> dict[str, Any]:
    """Run ``query`` over ``events`` generated events in this process; RSS at each tenth.

    Returns the samples (``events``, ``rss_mb``, ``seconds``), the growth from the first
    tenth to the last (MB and percent), the peak RSS, wall and CPU seconds and result rows.
    """
    if query not in MEMORY_QUERIES:
        msg = f"nexmark memory: {query!r} is not supported; use one of {list(MEMORY_QUERIES)}"
        raise ConfigError(msg)
    import tideflow as tf
    from tideflow.bench.nexmark._tideflow import PIPELINES

    settings = GeneratorSettings(events=events, seed=seed)
    flow = tf.Dataflow(f"nexmark_memory_{query}")
    inputs = _GeneratedInputs(flow, settings, batch_events)
    counts = [0]
    PIPELINES[query](inputs).sink(_CountSink(counts), name="count")
    cpu0 = time.process_time()
    start = time.perf_counter()
    inputs.probe.t0 = start
    if checkpoint_interval > 0:
        with tempfile.TemporaryDirectory(prefix="nexmark-memory-") as cp:
            interval = timedelta(seconds=checkpoint_interval)
            tf.run(flow, workers=1, checkpoint_dir=cp, checkpoint_interval=interval)
    else:
        tf.run(flow, workers=1)
    samples = inputs.probe.samples
    first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    return {
        "query": query,
        "events": events,
        "batch_events": batch_events,
        "checkpoint_interval": checkpoint_interval,
        "samples": samples,
        "growth_mb": last - first,
        "growth_pct": 100.0 * (last - first) / first if first else None,
        # VmHWM is updated lazily by the kernel; never below a sample
        "peak_mb": max(peak_rss_mb(), *(s["rss_mb"] for s in samples)),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu0,
        "rows": counts[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of one memory run (prints one JSON object)."""
    parser = argparse.ArgumentParser(prog="tideflow-nexmark-memory")
    parser.add_argument("--query", required=True, choices=MEMORY_QUERIES)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-events", type=int, default=100_000)
    parser.add_argument("--checkpoint-interval", type=float, default=10.0)
    args = parser.parse_args(argv)
    report = run_memory(
        args.query,
        args.events,
        seed=args.seed,
        batch_events=args.batch_events,
        checkpoint_interval=args.checkpoint_interval,
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
