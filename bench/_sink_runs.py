"""What the sink benchmarks share: one timed run of a flow, with its checkpoints' figures."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import tideflow as tf


class Durations(logging.Handler):
    """Collects the durations the runtime logs for each checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.search(r"checkpoint \d+ written to .* in ([0-9.]+) s", record.getMessage())
        if m:
            self.seconds.append(float(m.group(1)))


def timed_run(flow: tf.Dataflow, rows: int, interval: float | None) -> dict[str, Any]:
    """Run ``flow`` (1 worker; a checkpoint every ``interval`` s, or none) and measure it.

    ``seconds`` and ``per_s`` (``rows`` / seconds) are wall clock; ``cpu_seconds`` is the CPU of
    this process, all threads (steadier on a shared machine; servers' CPU not included). With
    checkpoints: how many were taken, the longest (snapshot and write, before the sinks
    commit), and the size of the largest retained one.
    """
    kw: dict[str, Any] = {}
    ck = None
    if interval is not None:
        ck = Path(tempfile.mkdtemp(prefix="sinkbench-ck-"))
        kw = {"checkpoint_dir": ck, "checkpoint_interval": timedelta(seconds=interval)}
    durations = Durations()
    runtime_log = logging.getLogger("tideflow.runtime")
    runtime_log.addHandler(durations)
    runtime_log.setLevel(logging.INFO)
    t, cpu = time.perf_counter(), time.process_time()
    try:
        result = tf.run(flow, **kw)
    finally:
        runtime_log.removeHandler(durations)
    secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    assert result.completed
    out: dict[str, Any] = {
        "checkpoint_interval_s": interval,
        "seconds": round(secs, 2),
        "per_s": round(rows / secs),
        "cpu_seconds": round(cpu, 2),
    }
    if ck is not None:
        sizes = [sum(f.stat().st_size for f in d.iterdir()) for d in ck.glob("chk-*") if d.is_dir()]
        out["checkpoints"] = len(durations.seconds)
        out["checkpoint_seconds_max"] = max(durations.seconds, default=None)
        out["checkpoints_kept"] = len(sizes)
        out["largest_checkpoint_bytes"] = max(sizes, default=0)
    return out
