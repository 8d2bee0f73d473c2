"""Throughput of the file sources, one reader (not collected by pytest).

Run: ``PYTHONPATH=src python tests/connectors/bench_files.py [--mb 200] [--rows 2000000]``.
Prints MB/s of ``scan_text`` and rows/s of ``scan_csv``/``scan_jsonl`` on generated files.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import tempfile
import time

import polars as pl

from tideflow.connectors import files
from tideflow.connectors._base import Source, SourceContext


def drain(source: Source, batch_size: int) -> tuple[int, float]:
    reader = source.build(SourceContext("bench", 0, 1, batch_size))
    rows = 0
    start = time.perf_counter()
    while not reader.finished:
        batch = reader.poll()
        if batch is None:
            break
        rows += batch.data.height
    return rows, time.perf_counter() - start


def make_text(path: str, mb: int) -> None:
    rnd = random.Random(1)
    words = [
        "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(2, 10))) for _ in range(5000)
    ]
    words += ["Ünïcödé", "straße", "naïve"]
    with open(path, "w", encoding="utf-8") as f:
        total = 0
        while total < mb * 1_000_000:
            block = "\n".join(
                " ".join(rnd.choices(words, k=rnd.randint(3, 15))) for _ in range(10_000)
            )
            f.write(block + "\n")
            total += len(block) + 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--batch-size", type=int, default=65_536)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        text = os.path.join(d, "big.txt")
        make_text(text, args.mb)
        size = os.path.getsize(text) / 1e6
        for _ in range(args.repeat):
            rows, dt = drain(files.scan_text(text), args.batch_size)
            print(f"scan_text: {size:.0f} MB, {rows} lines in {dt:.2f}s = {size / dt:.0f} MB/s")
        n = args.rows
        idx = pl.int_range(0, n, eager=True)
        start = pl.datetime(2024, 1, 1, time_zone="UTC")
        df = pl.DataFrame(
            {
                "id": idx,
                "card": (idx % 9973).cast(pl.String),
                "amount": idx.cast(pl.Float64) * 0.37,
                "country": pl.Series(["DE", "FR", "US", "GB"]).sample(n, with_replacement=True),
                "ts": pl.datetime_range(
                    start, start + pl.duration(seconds=n - 1), "1s", eager=True
                ),
            }
        )
        schema = dict(df.schema)
        csv, jsonl = os.path.join(d, "t.csv"), os.path.join(d, "t.jsonl")
        df.write_csv(csv)
        df.write_ndjson(jsonl)
        for name, src, path in (
            ("scan_csv", files.scan_csv(csv, schema=schema), csv),
            ("scan_jsonl", files.scan_jsonl(jsonl, schema=schema), jsonl),
        ):
            for _ in range(args.repeat):
                rows, dt = drain(src, args.batch_size)
                mb = os.path.getsize(path) / 1e6
                print(
                    f"{name}: {rows} rows ({mb:.0f} MB, 5 columns) in {dt:.2f}s = "
                    f"{rows / dt / 1e6:.2f} M rows/s ({mb / dt:.0f} MB/s)"
                )


if __name__ == "__main__":
    main()
