"""Entry point of the ``tideflow`` command.

Every option can also be set with a ``TIDEFLOW_<OPTION>`` environment variable (shown in
``--help``); the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from tideflow._errors import ConfigError, TideflowError
from tideflow.api import Dataflow

__all__ = ["main"]

log = logging.getLogger("tideflow.cli")


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"TIDEFLOW_{name}", default)


def _whole(text: str, least: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole(text, 0)


def _workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    return _positive_int(text)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``demo``: the execution knobs."""
    p.add_argument(
        "--workers",
        type=_workers,
        default=_workers(_env("WORKERS", "auto") or "auto"),
        help="worker processes, or 'auto' for one per core [TIDEFLOW_WORKERS, default auto]",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=_positive_int(_env("BATCH_SIZE", "65536") or "65536"),
        help="rows per micro-batch: large for throughput, small for latency "
        "[TIDEFLOW_BATCH_SIZE, default 65536]",
    )
    p.add_argument(
        "--max-delay-ms",
        type=_non_negative_int,
        default=_non_negative_int(_env("MAX_DELAY_MS", "100") or "100"),
        help="longest a source holds rows back to fill a batch; 0: every poll goes on at once "
        "(lowest latency) [TIDEFLOW_MAX_DELAY_MS, default 100]",
    )
    p.add_argument(
        "--source-drift-ms",
        type=_non_negative_int,
        default=_non_negative_int(_env("SOURCE_DRIFT_MS", "0") or "0"),
        help="how far (event time) a source may run ahead of the slowest source still reading "
        "[TIDEFLOW_SOURCE_DRIFT_MS, default 0]",
    )
    p.add_argument(
        "--no-source-pacing",
        action="store_true",
        default=(_env("NO_SOURCE_PACING", "") or "") not in ("", "0"),
        help="read every source as fast as it comes [TIDEFLOW_NO_SOURCE_PACING]",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        default=(_env("NO_PROGRESS", "") or "") not in ("", "0"),
        help="do not draw live progress [TIDEFLOW_NO_PROGRESS]",
    )
    # Live dashboard, metrics and run recording (tideflow.dashboard).
    from tideflow.dashboard._cli import add_observer_options

    add_observer_options(p)


def run_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """``tideflow.run`` keyword arguments from parsed run options."""
    return {
        "workers": args.workers,
        "batch_size": args.batch_size,
        "max_delay": timedelta(milliseconds=args.max_delay_ms),
        "source_drift": (
            None if args.no_source_pacing else timedelta(milliseconds=args.source_drift_ms)
        ),
        "progress": not args.no_progress,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tideflow",
        description="Real-time big-data processing in Python: run dataflows, the demo, benchmarks.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run",
        help="run a pipeline file",
        description="Run the dataflow defined in a Python file. The file builds a "
        "tideflow.Dataflow in a module-level variable (default name: flow); arguments "
        "after '--' are passed to the file as sys.argv[1:]: "
        "tideflow run pipeline.py [options] -- [pipeline arguments]",
    )
    r.add_argument("path", type=Path, help="the pipeline file")
    r.add_argument("--flow", default="flow", help="name of the Dataflow variable (default flow)")
    add_run_options(r)
    r.add_argument(
        "--checkpoint-dir",
        default=_env("CHECKPOINT_DIR", None),
        help="take checkpoints there and resume from the newest [TIDEFLOW_CHECKPOINT_DIR]",
    )
    r.add_argument(
        "--checkpoint-interval",
        type=float,
        default=float(_env("CHECKPOINT_INTERVAL", "0") or 0) or None,
        help="seconds between checkpoints [TIDEFLOW_CHECKPOINT_INTERVAL, default 10]",
    )
    r.add_argument(
        "--from-savepoint",
        default=_env("FROM_SAVEPOINT", None),
        help="start from this savepoint (any number of workers); checkpoints taken after it "
        "in --checkpoint-dir win after a crash [TIDEFLOW_FROM_SAVEPOINT]",
    )
    r.add_argument(
        "--state",
        choices=["memory", "disk"],
        default=_env("STATE", None),
        help="where keyed aggregation state lives: memory, or disk for more keys than fit in "
        "memory [TIDEFLOW_STATE, default memory]",
    )
    r.add_argument(
        "--state-dir",
        default=_env("STATE_DIR", None),
        help="directory of the on-disk state (implies --state disk; default a temporary "
        "directory) [TIDEFLOW_STATE_DIR]",
    )
    r.add_argument(
        "--state-cache-keys",
        type=_positive_int,
        default=int(_env("STATE_CACHE_KEYS", "0") or 0) or None,
        help="keys kept in memory per step and worker with the on-disk state "
        "[TIDEFLOW_STATE_CACHE_KEYS, default 250000]",
    )

    s = sub.add_parser(
        "savepoint",
        help="take a savepoint of a job",
        description="Copy a consistent checkpoint of the job that checkpoints into "
        "--checkpoint-dir to a new directory that no retention deletes. A running job takes "
        "it now (SIGUSR1); a job that is not running is saved from its newest checkpoint. "
        "Restore with: tideflow run JOB --from-savepoint OUT [--workers N]",
    )
    s.add_argument(
        "--checkpoint-dir",
        default=_env("CHECKPOINT_DIR", None),
        help="the job's checkpoint directory [TIDEFLOW_CHECKPOINT_DIR]",
    )
    s.add_argument("--out", required=True, help="the savepoint directory to create")
    s.add_argument(
        "--stop",
        action="store_true",
        help="stop the job right after the savepoint (nothing after it is committed)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=float(_env("SAVEPOINT_TIMEOUT", "60") or 60),
        help="seconds to wait for a running job [TIDEFLOW_SAVEPOINT_TIMEOUT, default 60]",
    )

    d = sub.add_parser(
        "demo",
        help="real-time card-transaction monitoring on embedded defaults",
        description="The main job: synthetic card transactions -> per-card features -> fraud "
        "rules -> alerts in SQLite and on the terminal; bad records to a dead-letter file.",
    )
    from tideflow.demo import add_demo_options

    add_demo_options(d)
    add_run_options(d)

    # SQL over live results or output files, and run reports (tideflow.dashboard).
    from tideflow.dashboard._cli import add_report_parser, add_sql_parser

    add_sql_parser(sub)
    add_report_parser(sub)

    b = sub.add_parser("bench", help="benchmarks (Nexmark, ...)", add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _load_flow(path: Path, name: str, args: Sequence[str]) -> Dataflow:
    if not path.is_file():
        msg = f"pipeline file {str(path)!r} does not exist"
        raise ConfigError(msg)
    argv = sys.argv
    sys.argv = [str(path), *args]
    try:
        ns = runpy.run_path(str(path), run_name="__tideflow__")
    finally:
        sys.argv = argv
    from tideflow.state import CheckpointSettings

    settings = ns.get("checkpoints")
    _LOADED["checkpoints"] = settings if isinstance(settings, CheckpointSettings) else None
    from tideflow.state import DiskState, MemoryState

    backend = ns.get("state")
    _LOADED["state"] = backend if isinstance(backend, DiskState | MemoryState) else None
    flow = ns.get(name)
    if not isinstance(flow, Dataflow):
        found = [k for k, v in ns.items() if isinstance(v, Dataflow)]
        if len(found) == 1 and name == "flow":
            only: Dataflow = ns[found[0]]
            return only
        msg = f"{path} defines no Dataflow named {name!r}" + (
            f"; it has {found}: pass --flow NAME" if found else "; assign one to `flow`"
        )
        raise ConfigError(msg)
    return flow


_LOADED: dict[str, object] = {}


def _checkpoint_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """Checkpointing from the pipeline file's ``checkpoints`` variable, then the options."""
    from tideflow.state import CheckpointSettings

    out: dict[str, object] = {}
    settings = _LOADED.get("checkpoints")
    if isinstance(settings, CheckpointSettings):
        out.update(settings.run_kwargs())
    if args.checkpoint_dir is not None:
        out["checkpoint_dir"] = Path(args.checkpoint_dir)
    if args.checkpoint_interval is not None:
        out["checkpoint_interval"] = timedelta(seconds=args.checkpoint_interval)
    if args.from_savepoint is not None:
        out["from_savepoint"] = Path(args.from_savepoint)
    return out


def _savepoint(args: argparse.Namespace) -> int:
    from tideflow.state import take_savepoint

    if args.checkpoint_dir is None:
        msg = "savepoint: pass --checkpoint-dir DIR (or set TIDEFLOW_CHECKPOINT_DIR)"
        raise ConfigError(msg)
    path = take_savepoint(
        args.checkpoint_dir, args.out, stop=args.stop, timeout=timedelta(seconds=args.timeout)
    )
    print(path)
    return 0


def _state_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The state backend: the pipeline file's ``state`` variable, then the options."""
    from tideflow.state import DiskState, MemoryState

    backend = _LOADED.get("state")
    choice = args.state or ("disk" if args.state_dir or args.state_cache_keys else None)
    if choice == "memory":
        backend = MemoryState()
    elif choice == "disk":
        base = backend if isinstance(backend, DiskState) else DiskState()
        backend = DiskState(
            args.state_dir or base.path,
            cache_keys=args.state_cache_keys or base.cache_keys,
            cache_mb=base.cache_mb,
        )
    return {} if backend is None else {"state": backend}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tideflow`` command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from tideflow.bench.cli import main as bench_main

        code: int = bench_main(argv[1:])
        return code
    pipeline_args: list[str] = []
    if "--" in argv and "run" in argv[: argv.index("--")]:
        cut = argv.index("--")
        argv, pipeline_args = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            import tideflow
            from tideflow.dashboard._cli import observers_for

            flow = _load_flow(args.path, args.flow, pipeline_args)
            kwargs = run_kwargs(args)
            kwargs.update(_checkpoint_kwargs(args))
            kwargs.update(_state_kwargs(args))
            with observers_for(args) as observers:
                result = tideflow.run(flow, **kwargs, observers=observers)  # type: ignore[arg-type]
            if result.dead_letter_path is not None:
                log.warning(
                    "%d dead letters written to %s", result.dead_letters, result.dead_letter_path
                )
            # Ctrl-C is how an unbounded job ends; a bounded one stopped early did not finish.
            return 0 if result.completed or not flow.bounded else 130
        if args.command == "savepoint":
            return _savepoint(args)
        if args.command == "demo":
            from tideflow.demo import run_demo

            return run_demo(args)
        if args.command in ("sql", "report"):
            from tideflow.dashboard._cli import report_main, sql_main

            return sql_main(args) if args.command == "sql" else report_main(args)
    except TideflowError as exc:
        print(f"tideflow: error: {exc}", file=sys.stderr)
        return 2
    return 0
