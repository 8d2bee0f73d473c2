"""``tideflow bench ...``: the benchmark command line.

The top-level CLI calls :func:`main` with the arguments after ``bench``::

    tideflow bench nexmark generate --events N --seed S --out DIR [--format parquet|jsonl]
    tideflow bench nexmark run --query qN --input DIR --output FILE.parquet [--engine E]
    tideflow bench nexmark reference --query qN --input DIR --output FILE.parquet
    tideflow bench nexmark latency --query q1,q2,q5 --rate 50000 --events N [--engines ...]
    tideflow bench nexmark memory --query q0,q1,q2 --events 50000000 [--json FILE]
    tideflow bench nexmark [bench] --query all|q0,q1,... (--events N | --input DIR)
                                   [--engines ...] [--reps 3] [--json [FILE]]

Every flag can also come from an environment variable ``TIDEFLOW_NEXMARK_<FLAG>`` (upper case,
dashes as underscores), shown in ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tideflow._errors import ConfigError, TideflowError

__all__ = ["main"]

log = logging.getLogger(__name__)

_SUBCOMMANDS = ("generate", "run", "reference", "bench", "latency", "memory")


def _env(flag: str) -> str:
    return "TIDEFLOW_NEXMARK_" + flag.lstrip("-").replace("-", "_").upper()


def _add(parser: argparse.ArgumentParser, flag: str, *, help: str, **kw: Any) -> None:
    var = _env(flag)
    if var in os.environ:
        value = os.environ[var]
        if kw.get("action") == "store_true":
            kw["default"] = value.strip().lower() in ("1", "true", "yes", "on")
        else:
            kw["default"] = value  # argparse applies `type` to string defaults
        kw.pop("required", None)
    default = kw.get("default")
    shown = f" (env {var}" + (f"; default {default})" if default is not None else ")")
    parser.add_argument(flag, help=help + shown, **kw)


def _add_json(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--json",
        nargs="?",
        const="-",
        default=None,
        help="also write JSON results to FILE ('-' or no value: print JSON instead of the table)",
    )


def _parser() -> argparse.ArgumentParser:
    from tideflow.bench.nexmark._worker import ENGINES, KNOWN_ENGINES, PER_RECORD_ENGINES

    root = argparse.ArgumentParser(prog="tideflow bench", description="Benchmarks.")
    suites = root.add_subparsers(dest="suite", required=True)
    nx = suites.add_parser("nexmark", help="the Nexmark benchmark")
    sub = nx.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write Nexmark events to DIR")
    _add(gen, "--events", type=int, required=True, help="number of events")
    _add(gen, "--seed", type=int, default=0, help="random seed")
    _add(gen, "--out", type=Path, required=True, help="output directory")
    _add(gen, "--format", choices=["parquet", "jsonl"], default="parquet", help="file format")
    _add(
        gen,
        "--base-time",
        default="2026-01-01T00:00:00+00:00",
        help="event time of the first event (ISO 8601, UTC)",
    )
    _add(gen, "--event-rate", type=int, default=10_000, help="events per second of event time")

    run = sub.add_parser("run", help="run one query, write its final results")
    _add(run, "--query", required=True, help="q0..q22")
    _add(run, "--input", type=Path, required=True, help="directory written by generate")
    _add(run, "--output", type=Path, required=True, help="result Parquet file")
    _add(run, "--engine", choices=list(KNOWN_ENGINES), default="tideflow", help="engine")
    _add(
        run,
        "--checkpoint-interval",
        type=float,
        default=0.0,
        help="tideflow: seconds between checkpoints (into a temporary directory); 0: none",
    )
    _add(
        run,
        "--check",
        action="store_true",
        default=False,
        help="compare the result with the DuckDB reference; exit 1 on mismatch",
    )

    ref = sub.add_parser("reference", help="run one query's DuckDB reference SQL")
    _add(ref, "--query", required=True, help="q0..q22")
    _add(ref, "--input", type=Path, required=True, help="directory written by generate")
    _add(ref, "--output", type=Path, required=True, help="result Parquet file")

    bench = sub.add_parser("bench", help="side-by-side benchmark (the default command)")
    _add(bench, "--query", default="all", help="'all' or a comma list such as q0,q1,q5")
    _add(
        bench,
        "--events",
        type=int,
        default=None,
        help="generate this many events (cached under --data) when --input is not given",
    )
    _add(bench, "--input", type=Path, default=None, help="an existing generated directory")
    _add(
        bench,
        "--data",
        type=Path,
        default=Path("nexmark-data"),
        help="where generated inputs are cached",
    )
    _add(bench, "--seed", type=int, default=0, help="random seed for --events")
    _add(
        bench,
        "--engines",
        default=",".join(ENGINES),
        help=f"comma list of engines among {', '.join(KNOWN_ENGINES)}",
    )
    _add(bench, "--reps", type=int, default=3, help="measured repetitions per engine")
    _add(
        bench,
        "--checkpoint-interval",
        type=float,
        default=10.0,
        help="seconds between the checkpoints of the tideflow runs (into a temporary "
        "directory; engine tideflow-nocp runs without); 0: none",
    )
    _add(
        bench,
        "--peer-events",
        type=int,
        default=1_000_000,
        help=f"with --events: the per-record peers ({', '.join(PER_RECORD_ENGINES)}) read the "
        "first this many events (generated with the same seed) and are compared per event; "
        "0: the whole input",
    )
    _add(
        bench,
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds after which one run counts as failed",
    )
    _add(
        bench,
        "--threads",
        type=int,
        default=1,
        help="threads per pool (Polars, Arrow, DuckDB) of each measured process, so that "
        "'per core' is one core's work; 0: each engine's default (every core)",
    )
    _add_json(bench)
    _add(
        bench,
        "--no-check",
        action="store_true",
        default=False,
        help="skip the comparison with the DuckDB reference",
    )

    lat = sub.add_parser("latency", help="throttled runs: end-to-end latency at a fixed rate")
    _add(lat, "--query", default="q1,q2", help="comma list among q0,q1,q2,q5")
    _add(lat, "--rate", type=float, default=50_000.0, help="events per second (wall clock)")
    _add(lat, "--events", type=int, default=500_000, help="events per run")
    _add(lat, "--seed", type=int, default=0, help="random seed")
    _add(lat, "--engines", default="python,bytewax,tideflow", help="comma list of engines")
    _add(lat, "--reps", type=int, default=3, help="repetitions per engine")
    _add(
        lat,
        "--max-delay-ms",
        type=float,
        default=0.0,
        help="tideflow's latency setting: the longest a source holds rows back to fill a batch "
        "(0: every poll goes on at once; batches form only while the worker is busy)",
    )
    _add(lat, "--epoch-ms", type=float, default=1.0, help="Bytewax's epoch_interval")
    _add_json(lat)
    mem = sub.add_parser(
        "memory", help="RSS over a long run, generated events fed in process (no files)"
    )
    _add(mem, "--query", default="q0,q1,q2", help="comma list among q0,q1,q2")
    _add(mem, "--events", type=int, default=50_000_000, help="events per run")
    _add(mem, "--seed", type=int, default=0, help="random seed")
    _add(mem, "--batch-events", type=int, default=100_000, help="event numbers per source batch")
    _add(
        mem,
        "--checkpoint-interval",
        type=float,
        default=10.0,
        help="seconds between checkpoints (0: none)",
    )
    _add_json(mem)
    return root


def _memory(args: argparse.Namespace) -> int:
    from tideflow.bench.nexmark._harness import memory_table, run_memory_bench

    rows = run_memory_bench(
        _split(args.query),
        events=int(args.events),
        seed=int(args.seed),
        batch_events=int(args.batch_events),
        checkpoint_interval=float(args.checkpoint_interval),
    )
    return _print_rows(args, rows, memory_table(rows))


def _latency(args: argparse.Namespace) -> int:
    from tideflow.bench.nexmark._compare import ResultMismatchError
    from tideflow.bench.nexmark._harness import latency_table, run_latency_bench

    try:
        rows = run_latency_bench(
            _split(args.query),
            _split(args.engines),
            events=int(args.events),
            rate=float(args.rate),
            reps=int(args.reps),
            seed=int(args.seed),
            max_delay_ms=float(args.max_delay_ms),
            epoch_ms=float(args.epoch_ms),
        )
    except ResultMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _print_rows(args, rows, latency_table(rows))


def _print_rows(args: argparse.Namespace, rows: list[dict[str, Any]], table: str) -> int:
    """Print the table (and write ``--json FILE``), or print the JSON with ``--json -``."""
    payload = {"cores": os.cpu_count(), "results": rows}
    if args.json == "-":
        print(json.dumps(payload, indent=2))
    else:
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def _split(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _generate(args: argparse.Namespace) -> int:
    from tideflow.bench.nexmark import GeneratorSettings, write_events

    base = datetime.fromisoformat(str(args.base_time))
    settings = GeneratorSettings(
        events=int(args.events),
        seed=int(args.seed),
        base_time=base,
        event_rate=int(args.event_rate),
    )
    counts = write_events(settings, args.out, fmt=args.format)
    print(json.dumps({"out": str(args.out), "rows": counts}))
    return 0


def _run(args: argparse.Namespace) -> int:
    import polars as pl

    from tideflow.bench.nexmark._compare import ResultMismatchError, check
    from tideflow.bench.nexmark._reference import run_reference, spec
    from tideflow.bench.nexmark._worker import engine_runner

    spec(args.query)
    runner = engine_runner(args.engine, checkpoint_interval=float(args.checkpoint_interval))
    rows = runner(args.query, args.input, args.output)
    print(
        json.dumps(
            {"query": args.query, "engine": args.engine, "rows": rows, "output": str(args.output)}
        )
    )
    if args.check:
        try:
            check(
                args.query,
                pl.read_parquet(args.output),
                run_reference(args.query, args.input),
                label=f"{args.query} on {args.engine}",
            )
        except ResultMismatchError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{args.query} on {args.engine}: matches the DuckDB reference", file=sys.stderr)
    return 0


def _reference(args: argparse.Namespace) -> int:
    from tideflow.bench.nexmark._reference import run_reference

    frame = run_reference(args.query, args.input)
    frame.write_parquet(args.output)
    print(json.dumps({"query": args.query, "rows": frame.height, "output": str(args.output)}))
    return 0


def _generated(data: Path, events: int, seed: int) -> Path:
    """A generated input of ``events`` events (cached under ``data``)."""
    from tideflow.bench.nexmark import GeneratorSettings, write_events

    input_dir = data / f"events-{events}-seed-{seed}"
    meta = input_dir / "nexmark.json"
    fresh = meta.exists() and json.loads(meta.read_text()).get("format") == "parquet"
    if not fresh:
        log.info("nexmark: generating %s events into %s", events, input_dir)
        write_events(GeneratorSettings(events=events, seed=seed), input_dir)
    return input_dir


def _bench(args: argparse.Namespace) -> int:
    from tideflow.bench.nexmark._harness import markdown_table, run_bench
    from tideflow.bench.nexmark._reference import QUERY_NAMES

    peer_dir: Path | None = None
    if args.input is not None:
        input_dir = Path(args.input)
    elif args.events is not None:
        input_dir = _generated(Path(args.data), int(args.events), int(args.seed))
        cap = int(args.peer_events)
        if 0 < cap < int(args.events):
            peer_dir = _generated(Path(args.data), cap, int(args.seed))
    else:
        msg = "nexmark bench: pass --events N (generate) or --input DIR (existing data)"
        raise ConfigError(msg)
    queries = list(QUERY_NAMES) if args.query == "all" else _split(args.query)
    results = run_bench(
        input_dir,
        queries,
        _split(args.engines),
        reps=int(args.reps),
        check_results=not args.no_check,
        checkpoint_interval=float(args.checkpoint_interval),
        peer_input=peer_dir,
        timeout=float(args.timeout),
        threads=int(args.threads),
    )
    payload = {
        "input": str(input_dir),
        "peer_input": str(peer_dir) if peer_dir is not None else None,
        "cores": os.cpu_count(),
        "reps": int(args.reps),
        "checkpoint_interval_s": float(args.checkpoint_interval),
        "threads": int(args.threads),
        "results": [r.to_json() for r in results],
    }
    if args.json == "-":
        print(json.dumps(payload, indent=2))
    else:
        print(markdown_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    bad = [r for r in results if r.status in ("mismatch", "failed")]
    for r in bad:
        print(f"\n{r.query} on {r.engine}: {r.status}\n{r.note}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tideflow bench`` with ``argv`` (the arguments after ``bench``).

    Returns the exit code: 0 on success, 1 when a result differs from its reference, 2 on a
    usage or configuration error.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    # `tideflow bench nexmark --query all --events N` means the side-by-side benchmark.
    if (
        len(args_in) >= 1
        and args_in[0] == "nexmark"
        and (len(args_in) == 1 or args_in[1] not in (*_SUBCOMMANDS, "-h", "--help"))
    ):
        args_in.insert(1, "bench")
    parser = _parser()
    args = parser.parse_args(args_in)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        handler = {
            "generate": _generate,
            "run": _run,
            "reference": _reference,
            "bench": _bench,
            "latency": _latency,
            "memory": _memory,
        }[args.command]
        return handler(args)
    except TideflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
