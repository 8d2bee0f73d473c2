"""One measured run of one engine on one query, in its own process.

``python -m tideflow.bench.nexmark._worker --engine E --query Q --input DIR --output FILE``
prints one JSON object: wall seconds, process CPU seconds (all threads), peak RSS and result rows.
The clock covers reading the input, computing and writing the result; interpreter start-up and
imports are excluded. Exit code 3 with ``{"unavailable": reason}`` when the engine has no
implementation of the query.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from tideflow._errors import ConfigError

__all__ = [
    "ENGINES",
    "KNOWN_ENGINES",
    "PER_RECORD_ENGINES",
    "UNAVAILABLE_EXIT",
    "engine_runner",
    "peak_rss_mb",
    "peer_module",
    "rss_mb",
]

ENGINES = ("tideflow", "bytewax", "python", "polars", "duckdb")
#: ``tideflow-nocp``: tideflow with checkpoints off (to measure what checkpoints cost).
KNOWN_ENGINES = (*ENGINES, "tideflow-nocp")
#: Engines that run every record through Python calls (their input may be capped).
PER_RECORD_ENGINES = ("bytewax", "python")
UNAVAILABLE_EXIT = 3

Runner = Callable[[str, Path, Path], int]


def peer_module(name: str) -> ModuleType:
    """Import ``bench/nexmark/<name>.py`` from the source tree (bench-only peer code)."""
    root = Path(__file__).resolve().parents[4] / "bench" / "nexmark"
    path = root / f"{name}.py"
    if not path.exists():
        msg = f"nexmark: peer module {path} not found (run from a source checkout of tideflow)"
        raise ConfigError(msg)
    spec = importlib.util.spec_from_file_location(f"tideflow_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _duckdb(query: str, input_dir: Path, output: Path) -> int:
    from tideflow.bench.nexmark._reference import connect, spec

    q = spec(query)
    threads = os.environ.get("TIDEFLOW_NEXMARK_THREADS")
    con = connect(input_dir, threads=int(threads) if threads else None)
    try:
        target = str(output).replace("'", "''")
        con.execute(f"COPY ({q.sql}) TO '{target}' (FORMAT parquet)")
        row = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def engine_runner(engine: str, *, checkpoint_interval: float = 0.0) -> Runner:
    """The run function of ``engine`` (imports its packages).

    ``checkpoint_interval`` (seconds, 0: off) applies to ``tideflow`` runs, which then take
    checkpoints into a temporary directory; ``tideflow-nocp`` never checkpoints.
    """
    if engine == "duckdb":
        return _duckdb
    if engine == "polars":
        from tideflow.bench.nexmark._peers import run_polars

        return run_polars
    if engine == "python":
        from tideflow.bench.nexmark._peers import run_python

        return run_python
    if engine == "bytewax":
        run: Runner = peer_module("bytewax_flows").run
        return run
    if engine in ("tideflow", "tideflow-nocp"):
        from tideflow.bench.nexmark._tideflow import run_tideflow

        _import_engine()

        interval = checkpoint_interval if engine == "tideflow" else 0.0
        return functools.partial(run_tideflow, checkpoint_interval=interval)
    msg = f"nexmark: unknown engine {engine!r}; known: {', '.join(KNOWN_ENGINES)}"
    raise ConfigError(msg)


def _import_engine() -> None:
    """Import every module of tideflow's runtime and state before the clock starts.

    A run imports the operators it needs on first use; with bytecode caching off
    (``PYTHONDONTWRITEBYTECODE``, as on CI machines) each such import compiles its module,
    some 10 ms of a query's CPU that is start-up, not processing (the peers' packages are
    imported before the clock too).
    """
    import importlib
    import pkgutil

    import tideflow.runtime
    import tideflow.state

    for package in (tideflow.runtime, tideflow.state):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)


def rss_mb(field: str = "VmRSS") -> float:
    """The process's resident set (``VmRSS``) or its peak (``VmHWM``) in MB.

    Examples
    --------
    >>> rss_mb() > 0
    True
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:  # not Linux: the peak from getrusage (kB on Linux, bytes on macOS)
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (1024 * 1024 if sys.platform == "darwin" else 1024)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    Reads ``VmHWM`` (reset by ``exec``) rather than ``ru_maxrss``, which Linux carries over from
    the parent process and would report the harness's own peak.
    """
    return rss_mb("VmHWM")


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished child processes.

    An engine with worker processes (tideflow with ``TIDEFLOW_NEXMARK_WORKERS`` > 1) spends its
    CPU in them; they are joined before the engine returns, so their time is counted here.
    """
    own = time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process."""
    parser = argparse.ArgumentParser(prog="tideflow-nexmark-worker")
    parser.add_argument("--engine", required=True, choices=KNOWN_ENGINES)
    parser.add_argument("--query", required=True)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--checkpoint-interval", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        runner = engine_runner(args.engine, checkpoint_interval=args.checkpoint_interval)
    except (ImportError, ConfigError) as exc:
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}"}))
        return UNAVAILABLE_EXIT
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    try:
        rows = runner(args.query, args.input, args.output)
    except ConfigError as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return UNAVAILABLE_EXIT
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
