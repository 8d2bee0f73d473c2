from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from files_helpers import build, concat, drain, read_all, read_workers

from tideflow import ConfigError
from tideflow.connectors import files
from tideflow.connectors._base import SourceBatch, SourceReader


def write_parquet(path: Path, n: int, start: int, group: int) -> pl.DataFrame:
    df = pl.DataFrame({"id": list(range(start, start + n)), "v": [i % 7 for i in range(n)]})
    pq.write_table(df.to_arrow(), path, row_group_size=group)
    return df


def test_parquet_full_read_workers_and_resume(tmp_path: Path) -> None:
    frames = [write_parquet(tmp_path / f"p{k}.parquet", 1000, 10_000 * k, 150) for k in range(3)]
    expected = pl.concat(frames)
    src = files.scan_parquet(tmp_path)
    single, _ = read_all(src, batch_size=64)
    assert single is not None and single.equals(expected)
    union, _ = read_workers(src, 3, batch_size=64)
    assert union is not None and union.sort("id").equals(expected)
    reader = build(src, batch_size=64)
    first, _, _ = drain(reader, max_polls=9)
    rest, _ = read_all(src, batch_size=64, resume=reader.snapshot())
    both = concat([first, rest])
    assert both is not None and both.equals(expected)


def test_parquet_reads_hive_directories_recursively(tmp_path: Path) -> None:
    (tmp_path / "k=a").mkdir()
    write_parquet(tmp_path / "k=a" / "x.parquet", 5, 0, 10)
    data, _ = read_all(files.scan_parquet(tmp_path))
    assert data is not None and data.height == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no input file"):
        files.scan_parquet(tmp_path / "empty").validate("s")


def poll_until(reader: SourceReader, pred, timeout: float = 5.0) -> list[SourceBatch]:
    got: list[SourceBatch] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = reader.poll()
        if b is not None:
            got.append(b)
            if pred(got):
                return got
        else:
            time.sleep(0.005)
    return got


def lines_of(batches: list[SourceBatch], col: str = "line") -> list[object]:
    out: list[object] = []
    for b in batches:
        out.extend(b.data[col].to_list())
    return out


FAST = timedelta(milliseconds=10)


def test_follow_appended_lines_new_files_and_partial_line(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("one\ntwo\nthr")
    reader = build(files.follow_text(tmp_path, poll_interval=FAST), batch_size=100)
    assert not reader.finished
    got = poll_until(reader, lambda g: len(lines_of(g)) >= 2)
    assert lines_of(got) == ["one", "two"]
    time.sleep(0.03)
    assert reader.poll() is None, "a partial last line must wait for its newline"
    with log.open("a") as f:
        f.write("ee\nfour\n")
    (tmp_path / "b.log").write_text("b1\n")
    got = poll_until(reader, lambda g: len(lines_of(g)) >= 3)
    assert sorted(lines_of(got)) == ["b1", "four", "three"]
    pos = reader.snapshot()
    assert pos[str(log)] == {"offset": len("one\ntwo\nthree\nfour\n"), "line": 4}
    reader.close()
    # resume: only what is appended after the snapshot comes out
    with log.open("a") as f:
        f.write("five\n")
    again = build(files.follow_text(tmp_path, poll_interval=FAST), resume=pos)
    got = poll_until(again, lambda g: len(lines_of(g)) >= 1)
    time.sleep(0.03)
    rest = lines_of(got) + lines_of([b for b in [again.poll()] if b is not None])
    assert rest == ["five"]
    again.close()


def test_follow_splits_files_over_workers_by_name(tmp_path: Path) -> None:
    for k in range(12):
        (tmp_path / f"f{k:02d}.log").write_text(f"{k}-a\n{k}-b\n")
    seen: list[object] = []
    for w in range(3):
        reader = build(files.follow_text(tmp_path, poll_interval=FAST), worker=w, workers=3)
        # the first poll lists the directory; polls return data until every owned file is drained
        while (batch := reader.poll()) is not None:
            seen.extend(batch.data["line"].to_list())
        reader.close()
    assert sorted(seen) == sorted(f"{k}-{s}" for k in range(12) for s in "ab")


def test_follow_jsonl_dead_letters_and_follow_csv_header(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"level": "info", "n": 1}) + "\n{oops\n")
    src = files.follow_jsonl(d, schema={"level": pl.String, "n": pl.Int64}, poll_interval=FAST)
    reader = build(src)
    got = poll_until(reader, lambda g: any(b.dead is not None for b in g))
    assert lines_of(got, "level") == ["info"]
    dead = concat([b.dead for b in got if b.dead is not None])
    assert dead is not None and dead["origin"].to_list() == [f"{d / 'a.jsonl'}:2"]
    c = tmp_path / "c"
    c.mkdir()
    (c / "x.csv").write_text("k,v\na,1\n")
    reader = build(files.follow_csv(c, poll_interval=FAST))
    got = poll_until(reader, lambda g: len(g) >= 1)
    with (c / "x.csv").open("a") as f:
        f.write("b,2\nc,zz\n")
    got += poll_until(reader, lambda g: len(lines_of(g, "k")) >= 1)
    rows = concat([b.data for b in got])
    assert rows is not None and rows.rows() == [("a", 1), ("b", 2)]
    dead = concat([b.dead for b in got if b.dead is not None])
    assert dead is not None and dead["origin"].to_list() == [f"{c / 'x.csv'}:4"]


def test_follow_a_single_file_that_appears_later(tmp_path: Path) -> None:
    target = tmp_path / "later.log"
    reader = build(files.follow_text(target, poll_interval=FAST))
    assert reader.poll() is None
    target.write_text("hello\n")
    assert lines_of(poll_until(reader, lambda g: len(g) >= 1)) == ["hello"]


def test_follow_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"step 'f'.*does not exist"):
        files.follow_text(tmp_path / "no" / "such.log").validate("f")
    with pytest.raises(ConfigError, match="poll_interval must be a positive timedelta"):
        files.follow_text(tmp_path, poll_interval=timedelta(0)).validate("f")
    bad = files.Follow(str(tmp_path), "xml")
    with pytest.raises(ConfigError, match=r"unknown follow format 'xml'"):
        bad.validate("f")


def test_follow_rereads_a_truncated_or_replaced_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("old-1\nold-2\n")
    reader = build(files.follow_text(tmp_path, poll_interval=FAST))
    assert lines_of(poll_until(reader, lambda g: len(lines_of(g)) >= 2)) == ["old-1", "old-2"]
    log.write_text("new\n")  # truncated and rewritten (copytruncate rotation)
    assert lines_of(poll_until(reader, lambda g: len(g) >= 1)) == ["new"]
    replacement = tmp_path / ".next"
    replacement.write_text("fresh-1\nfresh-2\nfresh-3\n")
    os.replace(replacement, log)  # a new file under the same name
    got = lines_of(poll_until(reader, lambda g: len(lines_of(g)) >= 3))
    assert got == ["fresh-1", "fresh-2", "fresh-3"]
    reader.close()


def test_parquet_round_trip_restores_hive_partition_columns(tmp_path: Path) -> None:
    from tideflow.connectors._base import SinkContext

    out = tmp_path / "pq"
    data = pl.DataFrame({"day": ["d1", "d/2", None, "d1"], "v": [1, 2, 3, 4]})
    w = files.sink_parquet(out, partition_by="day").build(SinkContext("w", 0, 1))
    w.write(data)
    w.close()
    src = files.scan_parquet(out)
    assert src.schema() == {"v": pl.Int64, "day": pl.String}
    back, _ = read_workers(src, 2)
    assert back is not None
    assert sorted(back.select("day", "v").rows(), key=lambda r: r[1]) == data.rows()
