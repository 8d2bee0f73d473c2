"""Throttled runs: end-to-end latency at a fixed event rate (event creation to result).

Events are generated up front; event ``n`` is *created* (due) at ``t0 + n / rate`` of the wall
clock, and an engine may only see it from then on. A result's latency is the wall-clock time at
which the engine's sink receives it minus the creation time of the event that produced it.
Reported: p50, p99 and max latency, and the rate actually achieved (an engine that cannot keep
up falls behind and its latency grows without bound).

Run in a subprocess per engine, like the throughput runs::

    python -m tideflow.bench.nexmark._latency --engine python --query q1 --events 500000 \
        --rate 50000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from tideflow._errors import ConfigError
from tideflow.bench.nexmark._generator import generate_tables
from tideflow.bench.nexmark._model import GeneratorSettings

__all__ = ["LATENCY_QUERIES", "latency_summary", "main", "prepare_bids"]

LATENCY_QUERIES = ("q0", "q1", "q2")
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


def _run_engine(engine: str, query: str, bids: pa.Table, rate: float) -> tuple[list[float], float]:
    if engine == "python":
        return _run_python(query, bids, rate)
    if engine == "bytewax":
        from tideflow.bench.nexmark._worker import peer_module

        result: tuple[list[float], float] = peer_module("bytewax_flows").run_latency(
            query, bids, rate
        )
        return result
    if engine == "tideflow":
        from tideflow.bench.nexmark._tideflow import run_latency

        return run_latency(query, bids, rate)
    msg = f"nexmark latency: unknown engine {engine!r}; known: {list(LATENCY_ENGINES)}"
    raise ConfigError(msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of one throttled run (prints one JSON object)."""
    parser = argparse.ArgumentParser(prog="tideflow-nexmark-latency")
    parser.add_argument("--engine", required=True, choices=LATENCY_ENGINES)
    parser.add_argument("--query", required=True, choices=LATENCY_QUERIES)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    bids = prepare_bids(args.events, args.seed)
    try:
        latencies, elapsed = _run_engine(args.engine, args.query, bids, args.rate)
    except (ConfigError, ImportError) as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return 3
    summary = latency_summary(
        np.asarray(latencies), events=args.events, elapsed_s=elapsed, rate=args.rate
    )
    summary.update(engine=args.engine, query=args.query)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
