"""Keyed 10-second tumbling sum over events in Parquet: tideflow (1 and N workers) next to a
plain-Python dict loop and DuckDB SQL over the same file, in one run.

    python bench/windows.py --events 10000000 [--keys 10000] [--json out.json]

Events: key (int), ts (epoch ms, out of order by up to 2 s), value (float). Results of all
engines are compared (window count and total sum) before speeds are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

WINDOW_MS = 10_000


def make(path: Path, events: int, keys: int) -> None:
    rng = np.random.default_rng(7)
    i = np.arange(events, dtype=np.int64)
    ts = 1_700_000_000_000 + i // 10 - rng.integers(0, 2000, events)  # 10 events per ms
    frame = pl.DataFrame(
        {"key": rng.integers(0, keys, events), "ts": ts, "value": rng.random(events).round(3)}
    )
    frame.write_parquet(path, row_group_size=1_000_000)


def run_tideflow(path: Path, out: Path, workers: int) -> float:
    import tideflow as tf
    from tideflow import windows
    from tideflow.connectors import files

    flow = tf.Dataflow("bench_windows")
    w = (
        flow.source(files.scan_parquet(str(path)))
        .event_time("ts", unit="ms", delay=timedelta(seconds=5))
        .key_by("key")
        .window(windows.tumbling(timedelta(milliseconds=WINDOW_MS)))
        .agg(pl.col("value").sum().alias("total"))
    )
    w.results.sink(files.sink_parquet(str(out)))
    t = time.perf_counter()
    tf.run(flow, workers=workers)
    return time.perf_counter() - t


def run_python(path: Path) -> tuple[float, int, float]:
    t = time.perf_counter()
    sums: dict[tuple[int, int], float] = defaultdict(float)
    frame = pl.read_parquet(path)
    for key, ts, value in frame.iter_rows():
        sums[(key, ts // WINDOW_MS)] += value
    return time.perf_counter() - t, len(sums), sum(sums.values())


def run_duckdb(path: Path) -> tuple[float, int, float]:
    import duckdb

    t = time.perf_counter()
    con = duckdb.connect()
    n, total = con.execute(
        f"select count(*), sum(total) from (select key, ts // {WINDOW_MS} as w, sum(value) as total "
        f"from read_parquet('{path}') group by key, w)"
    ).fetchone()
    return time.perf_counter() - t, int(n), float(total)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dir", type=Path, default=Path("/tmp/tideflow-bench"))
    p.add_argument("--skip-python", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / f"events-{args.events}-{args.keys}.parquet"
    if not src.exists():
        make(src, args.events, args.keys)
    res: dict[str, dict[str, float]] = {}
    d_s, d_n, d_total = run_duckdb(src)
    res["duckdb"] = {"seconds": d_s, "events_per_s": args.events / d_s}
    for w in args.workers:
        out = args.dir / f"tf-out-{w}"
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        s = run_tideflow(src, out, w)
        got = pl.read_parquet(out / "**/*.parquet")
        ok = got.height == d_n and abs(float(got["total"].sum()) - d_total) < 1e-6 * d_total
        res[f"tideflow_{w}w"] = {
            "seconds": s,
            "events_per_s": args.events / s,
            "matches_duckdb": ok,
        }
        if not ok:
            print(f"MISMATCH with {w} workers: {got.height} windows vs {d_n}", file=sys.stderr)
    if not args.skip_python:
        p_s, p_n, p_total = run_python(src)
        res["python_dict"] = {
            "seconds": p_s,
            "events_per_s": args.events / p_s,
            "matches_duckdb": p_n == d_n and abs(p_total - d_total) < 1e-6 * d_total,
        }
    print("| engine | seconds | events/s | same result as DuckDB |\n|---|---|---|---|")
    for name, r in res.items():
        print(
            f"| {name} | {r['seconds']:.2f} | {r['events_per_s']:,.0f} | {r.get('matches_duckdb', '-')} |"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if all(r.get("matches_duckdb", True) for r in res.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
