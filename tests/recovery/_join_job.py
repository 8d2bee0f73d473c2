"""A job with joins for the recovery tests: input, the flow, reading committed output.

Run as a pipeline file it builds one job from its arguments::

    tideflow run tests/recovery/_join_job.py -- --kind window --input DIR --output DIR

Input (:func:`write_input`): JSON-lines files of both join sides (column ``side``), times
rising from file to file and out of order by at most 2 s inside a file; the watermark delay is
3 s, so no record is late however the workers interleave. The step ``maybe_crash`` throws at
record ``CRASH_AT`` (or as the file says, see :func:`crash_when`) while ``<input>/crash`` exists.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

import tideflow as tf
from tideflow import windows
from tideflow.connectors import files

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
KEYS = [f"k{i}" for i in range(6)]
FILES, PER_FILE = 12, 60
CRASH_AT = 7 * PER_FILE + 25
STEP = {
    "window": "pairs",
    "interval": "pairs",
    "regular": "pairs",
    "regular_unique": "pairs",
    "best": "pairs",
    "table": "tiers",
    "lookup": "names",
}


def write_input(d: Path) -> None:
    """Events in ``d/events``, a table in ``d/tiers``, the lookup's data version in ``d/version``."""
    rng = random.Random(3)
    (d / "events").mkdir(parents=True)
    n = 0
    for f in range(FILES):
        with open(d / "events" / f"ev-{f:03d}.jsonl", "w") as fh:
            for i in range(PER_FILE):
                # Every file starts with every key: each worker's lookup cache is full early.
                key = KEYS[i] if i < len(KEYS) else rng.choice(KEYS)
                ms = f * 10_000 + i * (10_000 // PER_FILE) - rng.randint(0, 2_000)
                ts = (T0 + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                rec = {"side": rng.choice("LR"), "k": key, "ts": ts, "n": n}
                fh.write(json.dumps(rec) + "\n")
                n += 1
    (d / "tiers").mkdir()
    with open(d / "tiers" / "tiers.jsonl", "w") as fh:
        for i, k in enumerate(KEYS[:-1]):  # the last key has no tier: null in a left join
            fh.write(json.dumps({"k": k, "tier": i * 10}) + "\n")
    (d / "version").write_text("1")


def _newest_checkpoint(ck: Path) -> int:
    ids = [int(p.name[4:]) for p in ck.glob("chk-*")] if ck.is_dir() else []
    return max(ids, default=0)


def crash_when(flag: Path, pause: float) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Throw at the first batch reaching record ``at`` while ``flag`` exists.

    ``flag`` holds nothing (``at`` is ``CRASH_AT``), a number, or JSON ``{"at": n,
    "checkpoints": dir, "min_id": k}``: then only once ``dir`` holds checkpoint ``k`` or later,
    so that the crash comes after checkpoints with state whatever the start-up times.
    """

    def maybe_crash(batch: pl.DataFrame) -> pl.DataFrame:
        time.sleep(pause)  # spread the run over several checkpoints
        if not flag.exists() or batch.height == 0:
            return batch
        text = flag.read_text().strip()
        spec = json.loads(text) if text.startswith("{") else {"at": int(text or CRASH_AT)}
        if batch["n"].max() < spec["at"]:  # type: ignore[operator]
            return batch
        if "checkpoints" in spec and _newest_checkpoint(Path(spec["checkpoints"])) < spec["min_id"]:
            return batch
        raise RuntimeError("crash requested by the test")

    return maybe_crash


def fetch_names(version_file: Path) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def fetch(keys: pl.DataFrame) -> pl.DataFrame:
        version = version_file.read_text()
        return keys.with_columns(name=pl.format("{}-v" + version, pl.col("k")))

    return fetch


def build(kind: str, d: Path, out: Path, pause: float = 0.003) -> tf.Dataflow:
    """The job: events -> maybe_crash -> event time -> a join of ``kind`` -> parts files."""
    flow = tf.Dataflow(f"join_recovery_{kind}")
    schema = {"side": pl.String, "k": pl.String, "ts": pl.String, "n": pl.Int64}
    ev = (
        flow.source(files.scan_jsonl(d / "events", schema=schema), name="events")
        .map_batches(crash_when(d / "crash", pause), name="maybe_crash")
        .event_time("ts", delay=timedelta(seconds=3))
    )
    result: tf.Stream
    if kind == "regular_unique":
        # Left records are unique by ``n``; a right record names a record 3 ahead (odd ``n``:
        # it may wait for its left record, which then removes it) or 3 behind.
        parts = ev.split(left=pl.col("side") == "L", right=pl.col("side") == "R")
        ref = pl.when(pl.col("n") % 2 == 1).then(pl.col("n") + 3).otherwise(pl.col("n") - 3)
        left = parts.left.drop("side").with_columns(id=pl.col("n")).key_by("id")
        right = parts.right.drop("side").with_columns(id=ref).key_by("id")
        j = left.join_interval(right, lower=None, upper=None, left_unique=True, name="pairs")
        result = j.results.select("id", "n", "n_right")
        j.late.sink(files.sink_jsonl_parts(out / "late"), name="late")
    elif kind in ("window", "interval", "regular", "best"):
        parts = ev.split(left=pl.col("side") == "L", right=pl.col("side") == "R")
        left = parts.left.drop("side").key_by("k")
        right = parts.right.drop("side").key_by("k")
        if kind == "window":
            j = left.join_window(
                right, windows.tumbling(timedelta(seconds=10)), how="full", name="pairs"
            )
        elif kind == "interval":
            j = left.join_interval(
                right, lower=timedelta(seconds=-2), upper=timedelta(seconds=3), name="pairs"
            )
        elif kind == "best":  # per left record, its right record with the largest n
            j = left.join_interval(
                right,
                lower=timedelta(seconds=-2),
                upper=timedelta(seconds=3),
                emit="close",
                best=tf.BestMatch("n", descending=True),
                name="pairs",
            )
        else:  # a regular join: every pair of equal keys (the key index)
            j = left.join_interval(right, lower=None, upper=None, name="pairs")
        result = j.results
        if kind == "window":
            result = result.select("k", "window_start", "n", "n_right")
        else:
            result = result.select("k", "n", "n_right")
        j.late.sink(files.sink_jsonl_parts(out / "late"), name="late")
    elif kind == "table":
        tiers = flow.source(
            files.scan_jsonl(d / "tiers", schema={"k": pl.String, "tier": pl.Int64}), name="t"
        )
        result = ev.select("k", "n").join_table(tiers.key_by("k"), on="k", name="tiers")
    else:
        result = ev.select("k", "n").lookup(fetch_names(d / "version"), on="k", name="names")
    result.sink(files.sink_jsonl_parts(out / "results"), name="write")
    return flow


def committed(out: Path) -> list[tuple[Any, ...]]:
    """Rows of the committed ``.jsonl`` files in ``out``, sorted (duplicates kept)."""
    rows = []
    for p in sorted(out.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            rows.append(tuple(sorted(json.loads(line).items())))
    return sorted(rows, key=repr)


if __name__ == "__tideflow__":
    parser = argparse.ArgumentParser(prog="_join_job")
    parser.add_argument("--kind", choices=sorted(STEP), default="window")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds per batch")
    args = parser.parse_args()
    flow = build(args.kind, args.input, args.output, args.pause)
