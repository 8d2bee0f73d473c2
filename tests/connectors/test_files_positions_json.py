"""Every reader's position is plain JSON and survives a JSON round trip as a resume point."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from files_helpers import build, concat, drain, read_all

from tideflow.connectors import files, generator, stdio
from tideflow.connectors._base import Source


def sources(tmp: Path) -> dict[str, Source]:
    (tmp / "t.txt").write_text("".join(f"line {i}\n" for i in range(300)))
    (tmp / "c.csv").write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(300)))
    (tmp / "j.jsonl").write_text("".join(json.dumps({"a": i}) + "\n" for i in range(300)))
    pl.DataFrame({"a": list(range(300))}).write_parquet(tmp / "p.parquet", row_group_size=64)
    return {
        "text": files.scan_text(tmp / "t.txt", chunk_bytes=500),
        "csv": files.scan_csv(tmp / "c.csv", chunk_bytes=500),
        "jsonl": files.scan_jsonl(tmp / "j.jsonl", chunk_bytes=500),
        "parquet": files.scan_parquet(tmp / "p.parquet"),
        "generator": generator.generate(lambda s, n: {"a": list(range(s, s + n))}, count=300),
    }


@pytest.mark.parametrize("kind", ["text", "csv", "jsonl", "parquet", "generator"])
def test_positions_are_json_and_resume_after_a_round_trip(tmp_path: Path, kind: str) -> None:
    src = sources(tmp_path)[kind]
    full, _ = read_all(src, batch_size=23)
    reader = build(src, batch_size=23)
    first, _, _ = drain(reader, max_polls=3)
    pos = json.loads(json.dumps(reader.snapshot()))
    rest, _ = read_all(src, batch_size=23, resume=pos)
    both = concat([first, rest])
    assert full is not None and both is not None and both.equals(full)


def test_follow_and_stdin_positions_are_json(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("x\n")
    reader = build(files.follow_text(tmp_path))
    assert reader.poll() is not None
    assert json.loads(json.dumps(reader.snapshot())) == {
        str(tmp_path / "a.log"): {"offset": 2, "line": 1}
    }
    stdin = build(stdio.scan_stdin(stream=io.BytesIO(b"")))
    assert json.loads(json.dumps(stdin.snapshot())) == {"stdin": {"offset": 0, "line": 0}}
