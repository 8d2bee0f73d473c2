from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from files_helpers import build, concat, drain, read_all, read_workers

from tideflow import ConfigError, ConnectorError
from tideflow.connectors import files
from tideflow.connectors._base import DEAD_LETTER_SCHEMA


def write_csv(path: Path, n: int, *, start: int = 0) -> pl.DataFrame:
    df = pl.DataFrame(
        {
            "id": list(range(start, start + n)),
            "name": [f"n{i}" for i in range(start, start + n)],
            "amount": [i * 0.5 for i in range(start, start + n)],
        }
    )
    df.write_csv(path)
    return df


def test_full_read_equals_file_contents(tmp_path: Path) -> None:
    expected = write_csv(tmp_path / "a.csv", 300)
    data, dead = read_all(files.scan_csv(tmp_path / "a.csv"), batch_size=64)
    assert dead is None
    assert data is not None
    assert data.schema == expected.schema
    assert data.equals(expected)


def test_schema_types_quotes_and_no_header(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_text('1;"a;b";true\n2;"say ""hi""";false\n')
    src = files.scan_csv(
        p,
        has_header=False,
        separator=";",
        schema={"k": pl.Int32, "text": pl.String, "flag": pl.Boolean},
    )
    data, dead = read_all(src)
    assert dead is None and data is not None
    assert data.schema == pl.Schema({"k": pl.Int32, "text": pl.String, "flag": pl.Boolean})
    assert data.rows() == [(1, "a;b", True), (2, 'say "hi"', False)]


def test_three_workers_union_equals_single_read(tmp_path: Path) -> None:
    parts = [write_csv(tmp_path / f"p{k}.csv", 400 + 50 * k, start=1000 * k) for k in range(3)]
    src = files.scan_csv(tmp_path, split_bytes=2048, chunk_bytes=500)
    single, _ = read_all(src, batch_size=77)
    union, _ = read_workers(src, 3, batch_size=77)
    assert single is not None and union is not None
    assert single.equals(pl.concat(parts))
    assert union.sort("id").equals(single.sort("id"))
    assert union["id"].n_unique() == union.height


def test_files_with_reordered_header_are_aligned(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,a\n")
    (tmp_path / "b.csv").write_text("y,x\nb,2\n")
    data, _ = read_all(files.scan_csv(tmp_path))
    assert data is not None and data.rows() == [(1, "a"), (2, "b")]
    (tmp_path / "c.csv").write_text("x,z\n3,c\n")
    with pytest.raises(ConnectorError, match="same columns"):
        read_all(files.scan_csv(tmp_path))


def test_resume_from_snapshot_reads_exactly_the_rest(tmp_path: Path) -> None:
    expected = write_csv(tmp_path / "a.csv", 1000)
    src = files.scan_csv(tmp_path / "a.csv", split_bytes=4000, chunk_bytes=1500)
    reader = build(src, batch_size=40)
    first, _, _ = drain(reader, max_polls=5)
    pos = reader.snapshot()
    rest, _ = read_all(src, batch_size=40, resume=pos)
    both = concat([first, rest])
    assert both is not None and both.equals(expected)


BAD = (
    "id,name,amount\n"  # line 1
    "1,a,1.5\n"  # 2
    "2,b\n"  # 3: too few fields
    "3,c,2.5,extra\n"  # 4: too many fields
    "x4,d,3.5\n"  # 5: id is not an int
    "5,e,4.5\n"  # 6
    "\n"  # 7: blank, skipped
    "6,f,oops\n"  # 8: amount is not a float
    '7,"g,h",6.5\n'  # 9: quoted separator, fine
)


def test_dead_letters_carry_origin_line_and_reason(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(BAD)
    src = files.scan_csv(p, schema={"id": pl.Int64, "amount": pl.Float64})
    data, dead = read_all(src, step="job.read")
    assert data is not None and dead is not None
    assert data.rows() == [(1, "a", 1.5), (5, "e", 4.5), (7, "g,h", 6.5)]
    assert dead.schema == pl.Schema(DEAD_LETTER_SCHEMA)
    assert dead["step"].unique().to_list() == ["job.read"]
    assert dead["origin"].to_list() == [f"{p}:{n}" for n in (3, 4, 5, 8)]
    reasons = dead["reason"].to_list()
    assert reasons[0] == "expected 3 fields, got 2"
    assert reasons[1] == "expected 3 fields, got 4"
    assert reasons[2].startswith("column 'id': cannot parse 'x4' as Int64")
    assert reasons[3].startswith("column 'amount': cannot parse 'oops' as Float64")
    assert dead["raw"].to_list() == ["2,b", "3,c,2.5,extra", "x4,d,3.5", "6,f,oops"]


def test_dead_letter_lines_are_absolute_across_ranges_and_workers(tmp_path: Path) -> None:
    p = tmp_path / "big.csv"
    rows = ["id,v"] + [f"{i},{i}" if i % 97 else f"{i},bad{i}" for i in range(1, 2001)]
    p.write_text("\n".join(rows) + "\n")
    src = files.scan_csv(
        p, schema={"id": pl.Int64, "v": pl.Int64}, split_bytes=3000, chunk_bytes=1000
    )
    data, dead = read_workers(src, 3, batch_size=100)
    assert data is not None and dead is not None
    bad_ids = [i for i in range(1, 2001) if i % 97 == 0]
    # record i is on line i + 1 (line 1 is the header)
    assert sorted(dead["origin"].to_list(), key=lambda o: int(o.rsplit(":", 1)[1])) == [
        f"{p}:{i + 1}" for i in bad_ids
    ]
    assert sorted(data["id"].to_list()) == [i for i in range(1, 2001) if i % 97]


def test_schema_naming_an_unknown_column_is_a_config_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", 3)
    with pytest.raises(ConfigError, match=r"step 's'.*\['nope'\].*header"):
        files.scan_csv(tmp_path / "a.csv", schema={"nope": pl.Int64}).validate("s")
    with pytest.raises(ConfigError, match="separator"):
        files.scan_csv(tmp_path / "a.csv", separator="ab").validate("s")


def test_inferred_schema_is_reported_before_reading(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", 3)
    src = files.scan_csv(tmp_path / "a.csv", schema={"id": pl.Int16})
    assert src.schema() == {"id": pl.Int16, "name": pl.String, "amount": pl.Float64}


def test_empty_files_do_not_decide_the_schema(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("")
    (tmp_path / "b.csv").write_text("x,y\n")
    (tmp_path / "c.csv").write_text("y,x\n2,1\n")
    data, dead = read_all(files.scan_csv(tmp_path))
    assert dead is None and data is not None
    assert data.schema == pl.Schema({"x": pl.Int64, "y": pl.Int64})
    assert data.rows() == [(1, 2)]


def test_timestamps_convert_and_bad_ones_are_dead(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    p = tmp_path / "t.csv"
    p.write_text("id,ts\n1,2024-01-01T01:00:00+01:00\n2,soon\n3,\n4,2024-01-01T00:00:04Z\n")
    src = files.scan_csv(p, schema={"ts": pl.Datetime("us", "UTC")})
    data, dead = read_all(src)
    assert data is not None and dead is not None
    assert data.rows() == [
        (1, datetime(2024, 1, 1, tzinfo=UTC)),
        (3, None),
        (4, datetime(2024, 1, 1, 0, 0, 4, tzinfo=UTC)),
    ]
    assert dead["origin"].to_list() == [f"{p}:3"]
    assert dead["reason"][0].startswith("column 'ts': cannot parse 'soon' as Datetime")
