"""The file connectors under the engine: 1 worker and 2 worker processes give the same output."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

import tideflow as tf
from tideflow.connectors import files, generator


def test_jsonl_to_parquet_and_dead_letters_end_to_end(tmp_path: Path, workers: int) -> None:
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    for k in range(3):
        lines = [
            json.dumps({"id": k * 1000 + i, "level": ["info", "warn"][i % 2]}) for i in range(300)
        ]
        lines.insert(7, '{"id": "oops", "level": "info"}')
        (src_dir / f"part{k}.jsonl").write_text("\n".join(lines) + "\n")
    flow = tf.Dataflow("e2e")
    rows = flow.source(
        files.scan_jsonl(src_dir, schema={"id": pl.Int64, "level": pl.String}, split_bytes=4096),
        name="read",
    )
    rows.sink(files.sink_parquet(tmp_path / "out", partition_by="level"), name="write")
    flow.dead_letters.sink(files.sink_jsonl(tmp_path / "dead.jsonl"), name="dead")
    tf.run(flow, workers=workers, batch_size=128)
    back = pl.read_parquet(tmp_path / "out" / "**" / "*.parquet", hive_partitioning=True)
    assert sorted(back["id"].to_list()) == [k * 1000 + i for k in range(3) for i in range(300)]
    assert back.filter(pl.col("level") == "warn").height == 450
    dead = pl.read_ndjson(tmp_path / "dead.jsonl")
    assert sorted(dead["origin"].to_list()) == [
        str(src_dir / f"part{k}.jsonl") + ":8" for k in range(3)
    ]


def test_generator_to_csv_end_to_end(tmp_path: Path, workers: int) -> None:
    flow = tf.Dataflow("gen")
    nums = flow.source(
        generator.generate(lambda s, n: {"i": list(range(s, s + n))}, count=5000, block_rows=700),
        name="gen",
    )
    nums.sink(files.sink_csv(tmp_path / "out.csv"), name="write")
    tf.run(flow, workers=workers, batch_size=1000)
    assert sorted(pl.read_csv(tmp_path / "out.csv")["i"].to_list()) == list(range(5000))
