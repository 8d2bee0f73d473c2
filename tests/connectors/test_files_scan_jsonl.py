from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from files_helpers import build, concat, drain, read_all, read_workers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideflow import ConfigError
from tideflow.connectors import files

SCHEMA = {"id": pl.Int64, "level": pl.String, "ts": pl.Datetime("us", "UTC")}


def write_jsonl(path: Path, n: int, start: int = 0) -> list[dict[str, object]]:
    rows = [
        {
            "id": i,
            "level": ["info", "warn", "error"][i % 3],
            "ts": f"2024-01-01T00:00:{i % 60:02d}Z",
        }
        for i in range(start, start + n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_full_read_with_schema(tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "a.jsonl", 250)
    data, dead = read_all(files.scan_jsonl(tmp_path / "a.jsonl", schema=SCHEMA), batch_size=60)
    assert dead is None and data is not None
    assert data.schema == pl.Schema(SCHEMA)
    assert data["id"].to_list() == [r["id"] for r in rows]
    assert data["ts"][1] == datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)


def test_inferred_schema(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": null, "c": [1]}\n')
    src = files.scan_jsonl(tmp_path / "a.jsonl")
    assert src.schema() == {"a": pl.Int64, "b": pl.String, "c": pl.List(pl.Int64)}
    data, dead = read_all(src)
    assert dead is None and data is not None
    assert data.rows() == [(1, "x", None), (2, None, [1])]


def test_three_workers_union_equals_single_read(tmp_path: Path) -> None:
    for k in range(3):
        write_jsonl(tmp_path / f"f{k}.jsonl", 300, start=1000 * k)
    src = files.scan_jsonl(tmp_path, schema=SCHEMA, split_bytes=5000, chunk_bytes=900)
    single, _ = read_all(src, batch_size=50)
    union, _ = read_workers(src, 3, batch_size=50)
    assert single is not None and union is not None and single.height == 900
    assert union.sort("id").equals(single.sort("id"))
    assert union["id"].n_unique() == 900


def test_resume_from_snapshot(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", 500)
    src = files.scan_jsonl(tmp_path / "a.jsonl", schema=SCHEMA, chunk_bytes=2000)
    full, _ = read_all(src, batch_size=30)
    reader = build(src, batch_size=30)
    first, _, _ = drain(reader, max_polls=4)
    rest, _ = read_all(src, batch_size=30, resume=reader.snapshot())
    both = concat([first, rest])
    assert both is not None and full is not None and both.equals(full)


def test_dead_letters_carry_origin_line_and_reason(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"id": 1, "level": "info"}\n'  # 1
        '{"id": 2, "level": \n'  # 2: invalid JSON
        "[1, 2]\n"  # 3: not an object
        '{"level": "warn"}\n'  # 4: missing id
        '{"id": "x", "level": "warn"}\n'  # 5: id is not an int
        "\n"  # 6: blank
        '{"id": 6, "level": null}\n'  # 7: explicit null is fine
        '{"id": 7, "level": "error", "extra": true}\n'  # 8: extra field ignored
    )
    src = files.scan_jsonl(p, schema={"id": pl.Int64, "level": pl.String})
    data, dead = read_all(src)
    assert data is not None and dead is not None
    assert data.rows() == [(1, "info"), (6, None), (7, "error")]
    assert dead["origin"].to_list() == [f"{p}:{n}" for n in (2, 3, 4, 5)]
    reasons = dead["reason"].to_list()
    assert reasons[0].startswith("invalid JSON: ")
    assert reasons[1] == "expected a JSON object, got list"
    assert reasons[2] == "missing required field 'id'"
    assert reasons[3] == "field 'id': cannot convert \"x\" to Int64"
    assert dead["raw"][3] == '{"id": "x", "level": "warn"}'


def test_timestamps_parse_vectorized_and_bad_ones_are_dead(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(
        '{"id": 1, "ts": "2024-01-01T01:00:00+01:00"}\n'
        '{"id": 2, "ts": "yesterday"}\n'
        '{"id": 3, "ts": null}\n'
        '{"id": 4, "ts": "2024-01-01T00:00:04+00:00"}\n'
    )
    src = files.scan_jsonl(p, schema={"id": pl.Int64, "ts": pl.Datetime("ms", "UTC")})
    data, dead = read_all(src)
    assert data is not None and dead is not None
    assert data.schema["ts"] == pl.Datetime("ms", "UTC")
    assert data.rows() == [
        (1, datetime(2024, 1, 1, tzinfo=UTC)),
        (3, None),
        (4, datetime(2024, 1, 1, 0, 0, 4, tzinfo=UTC)),
    ]
    assert dead["origin"].to_list() == [f"{p}:2"]
    assert dead["reason"].to_list() == [
        "field 'ts': cannot convert \"yesterday\" to Datetime(time_unit='ms', time_zone='UTC')"
    ]


def test_required_can_be_narrowed(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"id": 1}\n{"level": "x"}\n')
    src = files.scan_jsonl(p, schema={"id": pl.Int64, "level": pl.String}, required=["level"])
    data, dead = read_all(src)
    assert data is not None and data.rows() == [(None, "x")]
    assert dead is not None and dead["reason"].to_list() == ["missing required field 'level'"]
    with pytest.raises(ConfigError, match="required fields"):
        files.scan_jsonl(p, schema={"id": pl.Int64}, required=["nope"]).validate("s")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(
        st.sampled_from(["ok", "ok", "ok", "invalid", "missing", "type", "blank"]),
        min_size=1,
        max_size=60,
    ),
    split_bytes=st.integers(1, 400),
    chunk_bytes=st.integers(1, 300),
    batch_size=st.integers(1, 7),
    workers=st.integers(1, 3),
    stop=st.integers(0, 10),
)
def test_property_dead_letters_workers_and_resume(
    tmp_path_factory: pytest.TempPathFactory,
    kinds: list[str],
    split_bytes: int,
    chunk_bytes: int,
    batch_size: int,
    workers: int,
    stop: int,
) -> None:
    p = tmp_path_factory.mktemp("prop") / "a.jsonl"
    lines = []
    for i, kind in enumerate(kinds):
        lines.append(
            {
                "ok": json.dumps({"id": i, "s": f"v{i}"}),
                "invalid": '{"id": ' + str(i),
                "missing": json.dumps({"s": f"v{i}"}),
                "type": json.dumps({"id": f"i{i}", "s": "t"}),
                "blank": "",
            }[kind]
        )
    p.write_text("\n".join(lines) + "\n")
    src = files.scan_jsonl(
        p, schema={"id": pl.Int64, "s": pl.String}, split_bytes=split_bytes, chunk_bytes=chunk_bytes
    )
    good = [i for i, k in enumerate(kinds) if k == "ok"]
    bad = [f"{p}:{i + 1}" for i, k in enumerate(kinds) if k in ("invalid", "missing", "type")]
    first, first_dead, merged = [], [], {}
    for w in range(workers):
        reader = build(src, worker=w, workers=workers, batch_size=batch_size)
        d, x, _ = drain(reader, max_polls=stop)
        first.append(d)
        first_dead.append(x)
        merged.update(reader.snapshot())
    rest = [
        read_all(src, worker=w, workers=2, batch_size=batch_size, resume=merged) for w in range(2)
    ]
    data = concat(first + [r[0] for r in rest])
    dead = concat(first_dead + [r[1] for r in rest])
    assert sorted([] if data is None else data["id"].to_list()) == good
    assert sorted([] if dead is None else dead["origin"].to_list()) == sorted(bad)


def test_schema_is_inferred_from_the_first_file_with_data(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("\n")
    (tmp_path / "b.jsonl").write_text('{"n": 1}\n')
    data, _ = read_all(files.scan_jsonl(tmp_path))
    assert data is not None and data.rows() == [(1,)]
