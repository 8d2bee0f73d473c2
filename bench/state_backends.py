"""Candidate stores for on-disk keyed state, measured on the keyed-aggregate workload.

Workload: micro-batches of ``--batch`` rows (keys uniform over ``--keys``), reduced per batch
with a Polars ``group_by`` to one partial row per key (count, sum), then merged into the
store ("upsert"), and the new values of the batch's keys read back (what ``emit="updates"``
needs). Each candidate runs in its own process so that its peak RSS is its own.

    python bench/state_backends.py --keys 1000000 --rows 2000000 memory sqlite duckdb rocksdict
    python bench/state_backends.py --keys 1000000 --rows 200000 parquet

Candidates: ``memory`` (tideflow's in-memory AggState), ``sqlite`` (stdlib, WAL, WITHOUT ROWID
table, executemany upsert + read back), ``duckdb`` (file database, ``INSERT ... ON CONFLICT``
from Arrow), ``rocksdict`` (RocksDB bindings, raw bytes, multi-get + write batch), ``parquet``
(key-hash partitions on disk, each touched partition loaded, merged and rewritten per batch),
``tideflow-disk`` (the backend built on the winner: hot set in memory + SQLite).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

Merge = Callable[[pl.DataFrame], pl.DataFrame]


def batches(keys: int, rows: int, size: int, seed: int = 1) -> Iterator[pl.DataFrame]:
    """Uniform keys, small integer amounts; reduced to partials (k, n, t) per batch."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < rows:
        m = min(size, rows - done)
        df = pl.DataFrame({"k": rng.integers(0, keys, m), "v": rng.integers(1, 100, m)})
        yield df.group_by("k").agg(n=pl.len().cast(pl.Int64), t=pl.col("v").sum())
        done += m


def store_memory(tmp: Path) -> tuple[Merge, Callable[[], None]]:
    from tideflow.api._aggs import AggSpec
    from tideflow.runtime._keyed import AggState

    st = AggState(("k",), (AggSpec("count", None, "n"), AggSpec("sum", "v", "t")))
    st._dtypes["t"] = pl.Int64()

    def merge(p: pl.DataFrame) -> pl.DataFrame:
        keys, ids = st.merge(p.rename({"n": "__n", "t": "__t"}))
        return st.values(keys, ids)

    return merge, lambda: None


def store_sqlite(tmp: Path) -> tuple[Merge, Callable[[], None]]:
    db = sqlite3.connect(tmp / "state.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
    db.execute("CREATE TABLE s (k INTEGER PRIMARY KEY, n INTEGER, t INTEGER) WITHOUT ROWID")
    up = (
        "INSERT INTO s VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET "
        "n = n + excluded.n, t = t + excluded.t"
    )

    def merge(p: pl.DataFrame) -> pl.DataFrame:
        db.execute("BEGIN")
        db.executemany(up, p.iter_rows())
        db.execute("COMMIT")
        keys = json.dumps(p.get_column("k").to_list())
        got = db.execute(
            "SELECT k, n, t FROM s WHERE k IN (SELECT value FROM json_each(?))", (keys,)
        ).fetchall()
        return pl.DataFrame(got, schema=["k", "n", "t"], orient="row")

    return merge, db.close


def store_duckdb(tmp: Path) -> tuple[Merge, Callable[[], None]]:
    import duckdb

    db = duckdb.connect(str(tmp / "state.duckdb"))
    db.execute("SET memory_limit='256MB'")
    db.execute("SET threads=1")
    db.execute("CREATE TABLE s (k BIGINT PRIMARY KEY, n BIGINT, t BIGINT)")

    def merge(p: pl.DataFrame) -> pl.DataFrame:
        arrow = p.to_arrow()  # noqa: F841 - read by name by DuckDB
        db.execute(
            "INSERT INTO s SELECT k, n, t FROM arrow ON CONFLICT (k) DO UPDATE SET "
            "n = n + excluded.n, t = t + excluded.t"
        )
        tab = db.execute("SELECT s.* FROM s JOIN arrow USING (k)").to_arrow_table()
        return pl.DataFrame(pl.from_arrow(tab))

    return merge, db.close


def store_rocksdict(tmp: Path) -> tuple[Merge, Callable[[], None]]:
    from rocksdict import Options, Rdict, WriteBatch, WriteOptions

    opts = Options(raw_mode=True)
    opts.set_write_buffer_size(32 << 20)
    db = Rdict(str(tmp / "state.rocks"), opts)
    wo = WriteOptions()
    wo.disable_wal = True
    db.set_write_options(wo)
    rec = np.dtype([("n", "<i8"), ("t", "<i8")])

    def merge(p: pl.DataFrame) -> pl.DataFrame:
        keys = p.get_column("k").to_numpy().astype(">i8")
        kb = [keys[i : i + 1].tobytes() for i in range(len(keys))]
        old = db.get(kb)
        n = p.get_column("n").to_numpy().copy()
        t = p.get_column("t").to_numpy().copy()
        have = [i for i, v in enumerate(old) if v is not None]
        if have:
            prev = np.frombuffer(b"".join(old[i] for i in have), dtype=rec)
            n[have] += prev["n"]
            t[have] += prev["t"]
        vals = np.empty(len(kb), dtype=rec)
        vals["n"], vals["t"] = n, t
        raw = vals.tobytes()
        wb = WriteBatch(raw_mode=True)
        for i, k in enumerate(kb):
            wb.put(k, raw[16 * i : 16 * i + 16])
        db.write(wb)
        return pl.DataFrame({"k": p.get_column("k"), "n": n, "t": t})

    return merge, db.close


def store_parquet(tmp: Path, parts: int = 64) -> tuple[Merge, Callable[[], None]]:
    def merge(p: pl.DataFrame) -> pl.DataFrame:
        out = []
        h = p.with_columns(__p=(pl.col("k").hash(seed=7) % parts))
        for (pid,), chunk in h.partition_by("__p", as_dict=True).items():
            f = tmp / f"part-{pid}.parquet"
            chunk = chunk.drop("__p")
            old = pl.read_parquet(f) if f.exists() else chunk.clear()
            new = pl.concat([old, chunk]).group_by("k").agg(pl.col("n").sum(), pl.col("t").sum())
            new.write_parquet(f, compression="lz4")
            out.append(new.join(chunk.select("k"), on="k"))
        return pl.concat(out)

    return merge, lambda: None


def store_tideflow_disk(tmp: Path) -> tuple[Merge, Callable[[], None]]:
    from tideflow.api._aggs import AggSpec
    from tideflow.runtime._diskagg import DiskAggState

    cache = int(os.environ.get("BENCH_CACHE_KEYS", "200000"))
    st = DiskAggState(
        ("k",), (AggSpec("count", None, "n"), AggSpec("sum", "v", "t")), tmp / "s.sqlite", cache
    )
    st.mem._dtypes["t"] = pl.Int64()

    def merge(p: pl.DataFrame) -> pl.DataFrame:
        return st.merge_values(p.rename({"n": "__n", "t": "__t"}))

    return merge, st.close


STORES = {
    "memory": store_memory,
    "sqlite": store_sqlite,
    "duckdb": store_duckdb,
    "rocksdict": store_rocksdict,
    "parquet": store_parquet,
    "tideflow-disk": store_tideflow_disk,
}


def one(name: str, keys: int, rows: int, size: int, limit: float) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix=f"tf-bench-{name}-"))
    try:
        merge, close = STORES[name](tmp)
        done = 0
        check = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        for p in batches(keys, rows, size):
            out = merge(p)
            check += out.height
            done += int(p.get_column("n").sum())
            if time.perf_counter() - t0 > limit:
                break
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0
        close()
        disk = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "store": name,
            "keys": keys,
            "rows": done,
            "seconds": round(secs, 2),
            "rows_per_s": round(done / secs),
            "cpu_seconds": round(cpu, 2),
            "rows_per_cpu_s": round(done / cpu),
            "peak_rss_mb": round(rss),
            "disk_mb": round(disk / 2**20, 1),
            "complete": done == rows,
            "updates_returned": check,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", choices=sorted(STORES))
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--limit", type=float, default=300.0, help="seconds per store at most")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="append results (JSON lines) to this file")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.stores[0], a.keys, a.rows, a.batch, a.limit)))
        return
    for name in a.stores:
        cmd = [sys.executable, __file__, name, "--one", f"--keys={a.keys}", f"--rows={a.rows}"]
        cmd += [f"--batch={a.batch}", f"--limit={a.limit}"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            print(f"{name}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        line = res.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        if a.json:
            with a.json.open("a") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()
