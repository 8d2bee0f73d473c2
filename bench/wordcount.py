"""Word count on a large text file: tideflow (N workers) next to a plain Python Counter loop.

    python bench/wordcount.py --size-mb 1024 [--workers 2] [--json out.json]

Generates (once, cached) a text file of the given size from a Zipf-distributed vocabulary with
some non-ASCII words, then times in the same run: `tideflow run examples/wordcount.py` and a
single-process loop over lines with collections.Counter and a regular expression. Reports
words/s and MB/s of each and their ratio, and checks both found the same number of words.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORD = re.compile(r"[^\W\d_]+")


def make_file(path: Path, size_mb: int) -> None:
    rng = random.Random(42)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(50_000)
    ] + ["naïve", "Größe", "éclair", "город", "東京", "Ωmega"]
    weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    lines = []
    size = 0
    while size < 32 * 1024 * 1024:
        words = rng.choices(vocab, cum_weights=weights, k=12)
        line = " ".join(w.capitalize() if rng.random() < 0.1 else w for w in words) + ",\n"
        lines.append(line)
        size += len(line.encode())
    block = "".join(lines).encode()
    with path.open("wb") as f:
        for _ in range(max(1, size_mb * 1024 * 1024 // len(block))):
            f.write(block)


def counter_loop(path: Path) -> tuple[int, int]:
    counts: collections.Counter[str] = collections.Counter()
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            counts.update(WORD.findall(line.lower()))
    return sum(counts.values()), len(counts)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir", type=Path, default=Path("/tmp/tideflow-bench"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    text = args.dir / f"text-{args.size_mb}mb.txt"
    if not text.exists():
        make_file(text, args.size_mb)
    mb = text.stat().st_size / 1e6
    out = args.dir / "counts.csv"
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tideflow.cli",
            "run",
            str(ROOT / "examples/wordcount.py"),
            "--workers",
            str(args.workers),
            "--no-progress",
            "--",
            "--input",
            str(text),
            "--output",
            str(out),
        ],
        check=True,
    )
    tf_s = time.perf_counter() - t
    import polars as pl

    counts = pl.read_csv(out)
    tf_words, tf_distinct = int(counts["count"].sum()), counts.height
    t = time.perf_counter()
    py_words, py_distinct = counter_loop(text)
    py_s = time.perf_counter() - t
    res = {
        "file_mb": round(mb, 1),
        "words": tf_words,
        "tideflow": {
            "workers": args.workers,
            "seconds": round(tf_s, 2),
            "words_per_s": round(tf_words / tf_s),
            "mb_per_s": round(mb / tf_s, 1),
        },
        "python_counter": {
            "seconds": round(py_s, 2),
            "words_per_s": round(py_words / py_s),
            "mb_per_s": round(mb / py_s, 1),
        },
        "speedup": round(py_s / tf_s, 2),
        "same_counts": (tf_words, tf_distinct) == (py_words, py_distinct),
    }
    print("| engine | seconds | words/s | MB/s |\n|---|---|---|---|")
    print(
        f"| tideflow ({args.workers} workers) | {tf_s:.2f} | {tf_words / tf_s:,.0f} | {mb / tf_s:.1f} |"
    )
    print(f"| Python Counter loop | {py_s:.2f} | {py_words / py_s:,.0f} | {mb / py_s:.1f} |")
    print(f"speedup {res['speedup']}x; same totals: {res['same_counts']} ({tf_words:,} words)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if res["same_counts"] else 1


if __name__ == "__main__":
    sys.exit(main())
