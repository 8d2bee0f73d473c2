"""Throttled runs: end-to-end latency at a fixed event rate (event creation to result).

Events are generated up front; event ``n`` is *created* (due) at ``t0 + n / rate`` of the wall
clock, and an engine may only see it from then on. The engines read the bids only.

Latency of a result, the same for every engine:

- q0-q2 (one result per bid): the wall-clock time at which the engine's sink receives the row
  minus the creation time of its bid.
- q5 (one result per window): the time at which the sink receives the window's rows minus the
  creation time of the *trigger* of the window, the first bid (in input order, which is event
  time order) whose event time is at or after the window's end. That bid is the first event
  that lets a watermark with no allowed out-of-orderness pass the window's end, so it is the
  earliest instant at which the result can exist. Windows that end after the last bid have no
  trigger (they fire at the end of input) and are left out; a bounded run's results (all
  windows) are checked against the DuckDB reference of the same events.

Reported: p50, p99 and max latency, and the rate actually achieved (an engine that cannot keep
up falls behind and its latency grows without bound). The latency settings: tideflow's
``--max-delay-ms`` (the longest a source holds rows back to fill a micro-batch; default 0: each
poll goes on at once, and batches form only from rows that arrived while the worker was busy)
and Bytewax's ``--epoch-ms`` (``epoch_interval``; default 1 ms).

Run in a subprocess per engine, like the throughput runs::

    python -m tideflow.bench.nexmark._latency --engine python --query q1 --events 500000 \
        --rate 50000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from tideflow._errors import ConfigError
from tideflow.bench.nexmark._generator import generate_tables
from tideflow.bench.nexmark._model import GeneratorSettings

__all__ = ["LATENCY_QUERIES", "latency_summary", "main", "prepare_bids", "window_latencies"]

LATENCY_QUERIES = ("q0", "q1", "q2", "q5")
WINDOW_QUERIES = ("q5",)
LATENCY_ENGINES = ("python", "bytewax", "tideflow")


def prepare_bids(events: int, seed: int) -> pa.Table:
    """The bids of ``events`` generated events, with their ``event_number``."""
    return generate_tables(GeneratorSettings(events=events, seed=seed))["bid"]


def latency_summary(
    latencies_s: npt.NDArray[np.float64], *, events: int, elapsed_s: float, rate: float
) -> dict[str, Any]:
    """p50/p99/max in milliseconds plus the achieved input rate.

    Examples
    --------
    >>> s = latency_summary(np.array([0.001, 0.002, 0.003]), events=3, elapsed_s=1.0, rate=3)
    >>> s["p50_ms"], s["max_ms"]
    (2.0, 3.0)
    """
    lat = np.asarray(latencies_s) * 1000.0
    return {
        "rate": rate,
        "events": events,
        "achieved_rate": events / elapsed_s if elapsed_s > 0 else None,
        "results": int(lat.size),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "max_ms": float(lat.max()) if lat.size else None,
    }


# --- plain Python loop ------------------------------------------------------------------------
def _python_fn(query: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    if query == "q0":
        return lambda r: {
            "auction": r["auction"],
            "bidder": r["bidder"],
            "price": r["price"],
            "date_time": r["date_time"],
            "extra": r["extra"],
        }
    if query == "q1":
        return lambda r: {
            "auction": r["auction"],
            "bidder": r["bidder"],
            "price": r["price"] * 0.908,
            "date_time": r["date_time"],
        }
    if query == "q2":
        return lambda r: (
            {"auction": r["auction"], "price": r["price"]} if r["auction"] % 123 == 0 else None
        )
    msg = f"nexmark latency: no python loop for {query}; available: {list(LATENCY_QUERIES)}"
    raise ConfigError(msg)


def _run_python(query: str, bids: pa.Table, rate: float) -> tuple[list[float], float]:
    fn = _python_fn(query)
    records = bids.to_pylist()
    due = bids.column("event_number").to_numpy() / rate
    latencies: list[float] = []
    out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, rec in enumerate(records):
        wait = t0 + due[i] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        res = fn(rec)
        if res is not None:
            out.append(res)
            latencies.append(time.perf_counter() - (t0 + due[i]))
    return latencies, time.perf_counter() - t0


def window_latencies(
    results: pl.DataFrame, bid_times_ms: npt.NDArray[np.int64], due_s: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Latency of each window result: arrival minus the creation of its trigger bid.

    ``results`` has ``window_end`` and ``_arrived`` (seconds after the start, the clock of
    ``due_s``); a window's rows count once, at the last arrival. The trigger is the first bid
    whose time is at or after the window's end; windows without one are left out.

    Examples
    --------
    >>> res = pl.DataFrame({"window_end": [2000, 2000, 4000, 9000], "_arrived": [0.5, 0.6, 1.0, 2.0]})
    >>> times = np.array([0, 1000, 2000, 3000, 4000], dtype=np.int64)
    >>> window_latencies(res, times, np.array([0.0, 0.1, 0.2, 0.3, 0.4])).round(3).tolist()
    [0.4, 0.6]
    """
    per_window = (
        results.select(pl.col("window_end").cast(pl.Int64).alias("end"), "_arrived")
        .group_by("end")
        .agg(pl.col("_arrived").max())
        .sort("end")
    )
    ends = per_window["end"].to_numpy()
    trigger = np.searchsorted(bid_times_ms, ends, side="left")
    has = trigger < bid_times_ms.size
    arrived = per_window["_arrived"].to_numpy()[has]
    return np.asarray(arrived - due_s[trigger[has]], dtype=np.float64)


def _window_ends_ms(results: pl.DataFrame) -> pl.DataFrame:
    dtype = results.schema["window_end"]
    if isinstance(dtype, pl.Datetime):
        return results.with_columns(pl.col("window_end").dt.epoch("ms"))
    return results


@dataclasses.dataclass
class _Outcome:
    latencies_s: npt.NDArray[np.float64]
    results: pl.DataFrame | None
    elapsed_s: float


def _run_engine(
    engine: str, query: str, bids: pa.Table, rate: float, args: argparse.Namespace
) -> _Outcome:
    if query in WINDOW_QUERIES and engine == "python":
        msg = f"nexmark latency: no python loop for {query}; it has q0-q2"
        raise ConfigError(msg)
    if engine == "python":
        lat, elapsed = _run_python(query, bids, rate)
        return _Outcome(np.asarray(lat), None, elapsed)
    if engine == "bytewax":
        from tideflow.bench.nexmark._worker import peer_module

        lat, rows, elapsed = peer_module("bytewax_flows").run_latency(
            query, bids, rate, epoch_ms=args.epoch_ms
        )
        frame = pl.from_dicts(rows, infer_schema_length=None) if rows else None
        return _Outcome(np.asarray(lat), frame, float(elapsed))
    if engine == "tideflow":
        from tideflow.bench.nexmark._tideflow import run_latency

        run = run_latency(query, bids, rate, max_delay_ms=args.max_delay_ms)
        return _Outcome(np.asarray(run.latencies_s), run.results, run.elapsed_s)
    msg = f"nexmark latency: unknown engine {engine!r}; known: {list(LATENCY_ENGINES)}"
    raise ConfigError(msg)


def _check_windows(query: str, results: pl.DataFrame | None, events: int, seed: int) -> None:
    """The throttled run's results against the DuckDB reference of the same events."""
    from tideflow.bench.nexmark._compare import check
    from tideflow.bench.nexmark._generator import write_events
    from tideflow.bench.nexmark._reference import normalize, run_reference, spec

    cols = list(spec(query).columns)
    with tempfile.TemporaryDirectory(prefix="nexmark-latency-") as d:
        write_events(GeneratorSettings(events=events, seed=seed), d)
        reference = run_reference(query, d)
    got = normalize(results.select(cols)) if results is not None else reference.clear()
    check(query, got, reference, label="throttled run")


def main(argv: list[str] | None = None) -> int:
    """Entry point of one throttled run (prints one JSON object; exit 1 on a wrong result)."""
    parser = argparse.ArgumentParser(prog="tideflow-nexmark-latency")
    parser.add_argument("--engine", required=True, choices=LATENCY_ENGINES)
    parser.add_argument("--query", required=True, choices=LATENCY_QUERIES)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay-ms", type=float, default=0.0)
    parser.add_argument("--epoch-ms", type=float, default=1.0)
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args(argv)
    bids = prepare_bids(args.events, args.seed)
    try:
        outcome = _run_engine(args.engine, args.query, bids, args.rate, args)
    except (ConfigError, ImportError) as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return 3
    latencies = outcome.latencies_s
    check = "skipped"
    if args.query in WINDOW_QUERIES:
        results = outcome.results
        if results is not None:
            results = _window_ends_ms(results)
            times = bids.column("date_time").cast(pa.int64()).to_numpy()
            due = bids.column("event_number").to_numpy() / args.rate
            latencies = window_latencies(results, times, due)
        if not args.no_check:
            _check_windows(args.query, outcome.results, args.events, args.seed)
            check = "ok"
    summary = latency_summary(
        latencies, events=args.events, elapsed_s=outcome.elapsed_s, rate=args.rate
    )
    summary.update(engine=args.engine, query=args.query, check=check)
    summary.update(max_delay_ms=args.max_delay_ms, epoch_ms=args.epoch_ms)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
