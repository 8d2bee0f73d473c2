"""Jobs with joins crash mid-stream and resume from their checkpoint (1 worker, 2 workers, and
1 -> 2 on resume); the committed output equals that of a run that never crashed.

Input: JSON-lines files of both join sides (column ``side``), times rising from file to file and
out of order by at most 2 s inside a file (the watermark delay is 3 s, so no record is late
however the workers interleave). A step throws when it meets record ``CRASH_AT`` while a flag
file exists; the test removes the flag and runs the job again with the same checkpoint
directory. Output goes to ``files.sink_jsonl_parts`` (exactly-once).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tideflow as tf
from tideflow import windows
from tideflow._errors import JobError
from tideflow.connectors import files
from tideflow.state import CheckpointStore

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
KEYS = [f"k{i}" for i in range(6)]
FILES, PER_FILE = 12, 60
CRASH_AT = 7 * PER_FILE + 25
STEP = {"window": "pairs", "interval": "pairs", "table": "tiers", "lookup": "names"}


def write_input(d: Path) -> None:
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


def crash_when(flag: Path) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def maybe_crash(batch: pl.DataFrame) -> pl.DataFrame:
        time.sleep(0.003)  # spread the run over several checkpoints
        if flag.exists() and (batch["n"] == CRASH_AT).any():
            raise RuntimeError("crash requested by the test")
        return batch

    return maybe_crash


def fetch_names(version_file: Path) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def fetch(keys: pl.DataFrame) -> pl.DataFrame:
        version = version_file.read_text()
        return keys.with_columns(name=pl.format("{}-v" + version, pl.col("k")))

    return fetch


def build(kind: str, d: Path, out: Path) -> tf.Dataflow:
    flow = tf.Dataflow(f"join_recovery_{kind}")
    schema = {"side": pl.String, "k": pl.String, "ts": pl.String, "n": pl.Int64}
    ev = (
        flow.source(files.scan_jsonl(d / "events", schema=schema), name="events")
        .map_batches(crash_when(d / "crash"), name="maybe_crash")
        .event_time("ts", delay=timedelta(seconds=3))
    )
    result: tf.Stream
    if kind in ("window", "interval"):
        parts = ev.split(left=pl.col("side") == "L", right=pl.col("side") == "R")
        left = parts.left.drop("side").key_by("k")
        right = parts.right.drop("side").key_by("k")
        if kind == "window":
            j = left.join_window(
                right, windows.tumbling(timedelta(seconds=10)), how="full", name="pairs"
            )
        else:
            j = left.join_interval(
                right, lower=timedelta(seconds=-2), upper=timedelta(seconds=3), name="pairs"
            )
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
    rows = []
    for p in sorted(out.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            rows.append(tuple(sorted(json.loads(line).items())))
    return sorted(rows, key=repr)


def run(kind: str, d: Path, out: Path, ck: Path | None, workers: int) -> tf.RunResult:
    kw: dict[str, Any] = {}
    if ck is not None:
        kw = {"checkpoint_dir": ck, "checkpoint_interval": timedelta(milliseconds=20)}
    return tf.run(
        build(kind, d, out),
        workers=workers,
        batch_size=20,
        dead_letter_path=out / "dead.jsonl",
        **kw,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("join_recovery")
    write_input(d)
    return d


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    refs = {}
    for kind in STEP:
        out = tmp_path_factory.mktemp(f"ref_{kind}")
        assert run(kind, data, out, None, 1).completed
        refs[kind] = committed(out / "results")
        assert refs[kind], kind
        assert not committed(out / "late")
    return refs


@pytest.mark.parametrize("kind", list(STEP))
@pytest.mark.parametrize(("before", "after"), [(1, 1), (2, 2), (1, 2)])
def test_join_job_resumes_after_a_crash(
    kind: str,
    before: int,
    after: int,
    data: Path,
    reference: dict[str, list[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The job reads the flag and version files of its own copy of the input directory.
    d = tmp_path / "in"
    d.mkdir()
    for sub in ("events", "tiers"):
        (d / sub).symlink_to(data / sub)
    (d / "version").write_text("1")
    (d / "crash").write_text("")
    out, ck = tmp_path / "out", tmp_path / "ck"
    out.mkdir()
    with pytest.raises(JobError, match="crash requested by the test"):
        run(kind, d, out, ck, before)
    cp = CheckpointStore(ck).latest()
    assert cp is not None, "no checkpoint before the crash"
    step = f"join_recovery_{kind}.{STEP[kind]}"
    state = [p[step] for p in cp.parts if step in p]
    assert state and all(s["version"] == 2 for s in state)
    held = {"window": ("left", "right"), "interval": ("left", "right")}.get(kind, ())
    held += {"table": ("table",), "lookup": ("cache",)}.get(kind, ())
    assert any(s[f] is not None and pl.read_ipc(s[f]).height for s in state for f in held)
    (d / "crash").unlink()
    (d / "version").write_text("2")  # a lookup that fetched again would see new names
    assert run(kind, d, out, ck, after).completed
    assert committed(out / "results") == reference[kind]
    assert not committed(out / "late")
