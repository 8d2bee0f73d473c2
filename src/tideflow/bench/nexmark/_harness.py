"""The side-by-side harness: every engine on every query, alternating, medians, checked.

Each measured run is a fresh subprocess (``_worker``), so peak RSS is the engine's own and one
engine's caches never help another. Repetitions alternate the engine order (rotated each round).
Throughput counts *all* events of the input (people + auctions + bids, the Nexmark convention)
over the wall time of the run; "per core" divides by the process CPU time instead (all threads).
Every engine's first output of a query is checked against the DuckDB reference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from tideflow._errors import ConfigError
from tideflow.bench.nexmark._compare import ResultMismatchError, check
from tideflow.bench.nexmark._reference import run_reference, spec
from tideflow.bench.nexmark._worker import KNOWN_ENGINES, PER_RECORD_ENGINES, UNAVAILABLE_EXIT

__all__ = [
    "FLINK_PER_CORE",
    "BenchResult",
    "count_events",
    "latency_table",
    "markdown_table",
    "memory_table",
    "run_bench",
    "run_latency_bench",
    "run_memory_bench",
    "run_once",
]

log = logging.getLogger(__name__)

#: Flink 1.13's published Nexmark throughput per core (events/s; 8 workers, exactly-once
#: checkpoints every 180 s, RocksDB), the per-core target of each query that has one.
FLINK_PER_CORE = {
    "q0": 155e3,
    "q1": 158e3,
    "q2": 175e3,
    "q3": 152e3,
    "q4": 34e3,
    "q5": 22e3,
    "q7": 12e3,
    "q8": 146e3,
    "q9": 14e3,
    "q11": 40e3,
}


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """The measurements of one engine on one query (medians over repetitions)."""

    query: str
    engine: str
    status: str  # "ok", "mismatch", "unavailable", "failed"
    events: int
    reps: int = 0
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    rows: int | None = None
    note: str = ""
    #: Seconds between checkpoints of a tideflow run (None: no checkpoints).
    checkpoint_interval_s: float | None = None

    @property
    def events_per_s(self) -> float | None:
        """Events of the input per wall second (median run)."""
        return self.events / self.wall_s if self.wall_s else None

    @property
    def events_per_core_s(self) -> float | None:
        """Events of the input per CPU second (median run): the per-core throughput."""
        return self.events / self.cpu_s if self.cpu_s else None

    def to_json(self) -> dict[str, Any]:
        """Plain data, with the derived throughputs."""
        out = dataclasses.asdict(self)
        out["events_per_s"] = self.events_per_s
        out["events_per_core_s"] = self.events_per_core_s
        return out


def count_events(input_dir: Path) -> int:
    """Number of events (all kinds) in a generated directory."""
    return sum(
        pq.ParquetFile(Path(input_dir) / f"{k}.parquet").metadata.num_rows
        for k in ("person", "auction", "bid")
    )


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps a measured process at ``threads`` threads per pool (0: no cap).

    Polars (``POLARS_MAX_THREADS``), Arrow (``OMP_NUM_THREADS``, its CPU pool) and DuckDB (the
    worker's ``SET threads``, from ``TIDEFLOW_NEXMARK_THREADS``) read it when they start. With
    one thread "per core" is one core's work for every engine, as for the per-record peers;
    a tideflow run with several workers sizes its workers' pools itself.

    Examples
    --------
    >>> thread_env(1)["POLARS_MAX_THREADS"]
    '1'
    >>> thread_env(0)
    {}
    """
    if threads <= 0:
        return {}
    n = str(int(threads))
    return {"POLARS_MAX_THREADS": n, "OMP_NUM_THREADS": n, "TIDEFLOW_NEXMARK_THREADS": n}


def run_once(
    engine: str,
    query: str,
    input_dir: Path,
    output: Path,
    *,
    timeout: float = 3600,
    checkpoint_interval: float = 0.0,
    threads: int = 1,
) -> dict[str, Any]:
    """Run one measured worker process; return its JSON report (or ``unavailable``/``error``).

    ``threads`` > 0 caps the process's thread pools (Polars, Arrow, DuckDB; see
    :func:`thread_env`); 0 leaves each engine its default (every core).
    """
    cmd = [
        sys.executable,
        "-m",
        "tideflow.bench.nexmark._worker",
        "--engine",
        engine,
        "--query",
        query,
        "--input",
        str(input_dir),
        "--output",
        str(output),
        "--checkpoint-interval",
        str(checkpoint_interval),
    ]
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(thread_env(threads))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == UNAVAILABLE_EXIT and lines:
        return dict(json.loads(lines[-1]))
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"error": f"exit {proc.returncode}: " + "\n".join(tail)}
    return dict(json.loads(lines[-1]))


def run_bench(
    input_dir: Path,
    queries: Sequence[str],
    engines: Sequence[str],
    *,
    reps: int = 3,
    check_results: bool = True,
    checkpoint_interval: float = 0.0,
    peer_input: Path | None = None,
    timeout: float = 3600,
    threads: int = 1,
) -> list[BenchResult]:
    """Run every engine on every query ``reps`` times, alternating; medians; checks.

    Parameters
    ----------
    input_dir
        A generated Nexmark directory.
    queries, engines
        What to run (engines among ``KNOWN_ENGINES``).
    reps
        Measured repetitions per engine and query.
    check_results
        Compare each engine's first output with the DuckDB reference.
    checkpoint_interval
        Seconds between checkpoints of the ``tideflow`` runs (0: none).
    peer_input
        A smaller generated directory (a prefix of the same events) for the per-record
        engines (``PER_RECORD_ENGINES``), whose events/s do not depend on the input size;
        None: they read ``input_dir`` too.
    timeout
        Seconds after which one run counts as failed.
    threads
        Threads per pool of each measured process (:func:`thread_env`; 0: the engines'
        defaults).
    """
    if threads < 0:
        msg = f"nexmark bench: --threads must be >= 0, got {threads}"
        raise ConfigError(msg)
    for q in queries:
        spec(q)
    unknown = [e for e in engines if e not in KNOWN_ENGINES]
    if unknown:
        msg = f"nexmark bench: unknown engines {unknown}; known: {', '.join(KNOWN_ENGINES)}"
        raise ConfigError(msg)
    if reps < 1:
        msg = f"nexmark bench: --reps must be >= 1, got {reps}"
        raise ConfigError(msg)
    inputs = {e: input_dir for e in engines}
    if peer_input is not None:
        inputs.update({e: peer_input for e in engines if e in PER_RECORD_ENGINES})
    events = {d: count_events(d) for d in set(inputs.values())}
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="nexmark-bench-") as tmp:
        for query in queries:
            references: dict[Path, pl.DataFrame] = {}
            runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
            final: dict[str, BenchResult] = {}
            for rep in range(reps):
                order = list(engines[rep % len(engines) :]) + list(engines[: rep % len(engines)])
                for engine in order:
                    if engine in final:
                        continue
                    data = inputs[engine]
                    out = Path(tmp) / f"{query}-{engine}-{rep}.parquet"
                    report = run_once(
                        engine,
                        query,
                        data,
                        out,
                        timeout=timeout,
                        checkpoint_interval=checkpoint_interval if engine == "tideflow" else 0.0,
                        threads=threads,
                    )
                    if "unavailable" in report or "error" in report:
                        status = "unavailable" if "unavailable" in report else "failed"
                        note = str(report.get("unavailable") or report.get("error"))
                        final[engine] = BenchResult(query, engine, status, events[data], note=note)
                        continue
                    if rep == 0 and check_results:
                        if data not in references:
                            references[data] = run_reference(query, data)
                        try:
                            got = pl.read_parquet(out) if out.exists() else pl.DataFrame()
                            check(query, got, references[data], label=f"{query} on {engine}")
                        except ResultMismatchError as exc:
                            report["mismatch"] = str(exc)
                    out.unlink(missing_ok=True)
                    runs[engine].append(report)
                    log.info("nexmark %s %s rep %d: %.3fs", query, engine, rep, report["wall_s"])
            for engine in engines:
                if engine in final:
                    results.append(final[engine])
                    continue
                reports = runs[engine]
                mismatch = next((r["mismatch"] for r in reports if "mismatch" in r), "")
                results.append(
                    BenchResult(
                        query,
                        engine,
                        "mismatch" if mismatch else "ok",
                        events[inputs[engine]],
                        reps=len(reports),
                        wall_s=statistics.median(r["wall_s"] for r in reports),
                        cpu_s=statistics.median(r["cpu_s"] for r in reports),
                        peak_rss_mb=max(r["peak_rss_mb"] for r in reports),
                        rows=reports[0]["rows"],
                        note=mismatch,
                        checkpoint_interval_s=(
                            checkpoint_interval
                            if engine == "tideflow" and checkpoint_interval > 0
                            else None
                        ),
                    )
                )
    return results


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    return f"{x / 1e3:.1f} k"


def _fmt_events(n: int) -> str:
    return f"{n / 1e6:g} M" if n >= 1_000_000 else f"{n / 1e3:g} k"


def markdown_table(results: Sequence[BenchResult], *, baseline: str = "bytewax") -> str:
    """The results as a Markdown table, with the speed-up over ``baseline`` where it ran.

    The speed-ups compare events/s (wall) and events per CPU second, so engines that read
    inputs of different sizes (per-record peers on a prefix of the events) compare per-event
    rates; on a shared machine the per-core ratio is the steadier one.
    """
    ok = [r for r in results if r.engine == baseline and r.status == "ok"]
    base = {r.query: r.events_per_s for r in ok}
    base_core = {r.query: r.events_per_core_s for r in ok}
    lines = [
        f"| query | engine | events/s | events/s per core | peak RSS MB | x {baseline} "
        f"| x {baseline} per core | x Flink per core | check | input events | checkpoints |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in results:
        ratio = ratio_core = "-"
        b, bc = base.get(r.query), base_core.get(r.query)
        if b and r.events_per_s and r.status == "ok":
            ratio = f"{r.events_per_s / b:.1f}"
        if bc and r.events_per_core_s and r.status == "ok":
            ratio_core = f"{r.events_per_core_s / bc:.1f}"
        if r.status == "ok":
            status = "ok"
        elif r.status == "unavailable":
            status = "n/a: " + r.note.splitlines()[0][:80] if r.note else "n/a"
        else:
            status = f"**{r.status.upper()}**"
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        cp = f"every {r.checkpoint_interval_s:g} s" if r.checkpoint_interval_s else "-"
        flink = FLINK_PER_CORE.get(r.query)
        per_core = r.events_per_core_s
        vs_flink = "-"
        if flink and per_core and r.status == "ok" and r.engine.startswith("tideflow"):
            vs_flink = f"{per_core / flink:.1f}"
        lines.append(
            f"| {r.query} | {r.engine} | {_fmt_rate(r.events_per_s)} | "
            f"{_fmt_rate(per_core)} | {rss} | {ratio} | {ratio_core} | {vs_flink} | {status} | "
            f"{_fmt_events(r.events)} | {cp} |"
        )
    return "\n".join(lines)


def run_latency_bench(
    queries: Sequence[str],
    engines: Sequence[str],
    *,
    events: int,
    rate: float,
    reps: int = 3,
    seed: int = 0,
    max_delay_ms: float = 0.0,
    epoch_ms: float = 1.0,
) -> list[dict[str, Any]]:
    """Throttled runs (``_latency``) of each engine, alternating; medians of p50/p99.

    ``max_delay_ms`` is tideflow's latency setting (how long a source may hold rows back to
    fill a micro-batch), ``epoch_ms`` Bytewax's ``epoch_interval``.
    """
    out: list[dict[str, Any]] = []
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for query in queries:
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        skip: dict[str, str] = {}
        for rep in range(reps):
            order = list(engines[rep % len(engines) :]) + list(engines[: rep % len(engines)])
            for engine in order:
                if engine in skip:
                    continue
                cmd = [
                    sys.executable,
                    "-m",
                    "tideflow.bench.nexmark._latency",
                    "--engine",
                    engine,
                    "--query",
                    query,
                    "--events",
                    str(events),
                    "--rate",
                    str(rate),
                    "--seed",
                    str(seed),
                    "--max-delay-ms",
                    str(max_delay_ms),
                    "--epoch-ms",
                    str(epoch_ms),
                ]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env=env, check=False, timeout=3600
                )
                if proc.returncode == 1:  # a result that differs from the reference
                    msg = f"nexmark latency: {engine} {query}: {proc.stderr.strip()[-2000:]}"
                    raise ResultMismatchError(msg)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                report = (
                    json.loads(lines[-1])
                    if lines
                    else {"error": (proc.stderr or "no output").strip().splitlines()[-1:]}
                )
                if "unavailable" in report or "error" in report:
                    skip[engine] = str(report.get("unavailable") or report.get("error"))
                    continue
                runs[engine].append(report)
        for engine in engines:
            if engine in skip:
                out.append(
                    {
                        "query": query,
                        "engine": engine,
                        "status": "unavailable",
                        "note": skip[engine],
                    }
                )
                continue
            rs = runs[engine]
            out.append(
                {
                    "query": query,
                    "engine": engine,
                    "status": "ok",
                    "rate": rate,
                    "events": events,
                    "reps": len(rs),
                    "achieved_rate": statistics.median(r["achieved_rate"] for r in rs),
                    "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    "max_ms": max(r["max_ms"] for r in rs),
                    "results": statistics.median(r["results"] for r in rs),
                    "check": rs[0].get("check", "skipped") if rs else "skipped",
                    "max_delay_ms": max_delay_ms,
                    "epoch_ms": epoch_ms,
                }
            )
    return out


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    """Throttled-run results as a Markdown table."""
    lines = [
        "| query | engine | target rate | achieved rate | results | p50 ms | p99 ms | max ms "
        "| check |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['query']} | {r['engine']} | - | - | - | - | - | - "
                f"| n/a: {str(r['note'])[:60]} |"
            )
            continue
        lines.append(
            f"| {r['query']} | {r['engine']} | {_fmt_rate(r['rate'])} | "
            f"{_fmt_rate(r['achieved_rate'])} | {r['results']:.0f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['max_ms']:.1f} | {r['check']} |"
        )
    return "\n".join(lines)


def run_memory_bench(
    queries: Sequence[str],
    *,
    events: int,
    seed: int = 0,
    batch_events: int = 100_000,
    checkpoint_interval: float = 10.0,
) -> list[dict[str, Any]]:
    """One memory run (``_memory``, generated input in process) per query, each in its own
    process; RSS at each tenth of the input."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out: list[dict[str, Any]] = []
    for query in queries:
        cmd = [
            sys.executable,
            "-m",
            "tideflow.bench.nexmark._memory",
            "--query",
            query,
            "--events",
            str(events),
            "--seed",
            str(seed),
            "--batch-events",
            str(batch_events),
            "--checkpoint-interval",
            str(checkpoint_interval),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or "no output").strip().splitlines()[-1:]
            msg = f"nexmark memory: the {query} run failed (exit {proc.returncode}): {tail}"
            raise ConfigError(msg)
        out.append(json.loads(lines[-1]))
    return out


def memory_table(rows: Sequence[dict[str, Any]]) -> str:
    """Memory runs as a Markdown table: RSS (MB) at each tenth of the input, growth, peak."""
    tenths = " | ".join(f"{10 * (i + 1)} %" for i in range(10))
    lines = [
        f"| query | events | {tenths} | growth MB (first to last tenth) | peak MB | CPU s |",
        "| --- | ---: | " + " | ".join(["---:"] * 10) + " | ---: | ---: | ---: |",
    ]
    for r in rows:
        rss = " | ".join(f"{s['rss_mb']:.0f}" for s in r["samples"])
        lines.append(
            f"| {r['query']} | {_fmt_events(r['events'])} | {rss} | {r['growth_mb']:+.1f} | "
            f"{r['peak_mb']:.0f} | {r['cpu_seconds']:.1f} |"
        )
    return "\n".join(lines)
