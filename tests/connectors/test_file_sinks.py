from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow import ConfigError, ConnectorError
from tideflow.connectors import files, sqlite
from tideflow.connectors._base import SinkContext


def ctx(worker: int = 0, workers: int = 1, resume: dict[str, object] | None = None) -> SinkContext:
    return SinkContext("job.write", worker, workers, resume or {})


def batches() -> list[pl.DataFrame]:
    ts = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [
        pl.DataFrame(
            {
                "word": [f"w{i}" for i in range(s, s + n)],
                "count": list(range(s, s + n)),
                "ts": [ts + timedelta(seconds=i) for i in range(s, s + n)],
            }
        )
        for s, n in ((0, 3), (3, 0), (3, 5), (8, 2))
    ]


def test_csv_round_trip_with_single_header(tmp_path: Path) -> None:
    p = tmp_path / "out.csv"
    sink = files.sink_csv(p)
    assert sink.single_writer
    w = sink.build(ctx())
    for b in batches():
        w.write(b)
        w.flush()
    w.close()
    back = pl.read_csv(
        p, schema={"word": pl.String, "count": pl.Int64, "ts": pl.Datetime("us", "UTC")}
    )
    assert back.equals(pl.concat(batches()))
    assert p.read_text().count("word,count,ts") == 1


def test_jsonl_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    w = files.sink_jsonl(p).build(ctx())
    for b in batches():
        w.write(b)
    w.close()
    back = pl.read_ndjson(
        p, schema={"word": pl.String, "count": pl.Int64, "ts": pl.Datetime("us", "UTC")}
    )
    assert back.equals(pl.concat(batches()))


def test_csv_resume_truncates_to_the_snapshot(tmp_path: Path) -> None:
    p = tmp_path / "out.csv"
    first, *_ = batches()
    w = files.sink_csv(p).build(ctx())
    w.write(first)
    pos = w.snapshot()
    w.write(pl.DataFrame({"word": ["lost"], "count": [99], "ts": [None]}, schema=first.schema))
    w.flush()  # a crash here: the row after the snapshot must not survive
    w2 = files.sink_csv(p).build(ctx(resume=pos))
    w2.write(batches()[2])
    w2.close()
    w.close()
    back = pl.read_csv(p)
    assert back["word"].to_list() == [f"w{i}" for i in range(8)]


def test_csv_rejects_nested_columns(tmp_path: Path) -> None:
    w = files.sink_csv(tmp_path / "x.csv").build(ctx())
    with pytest.raises(ConnectorError, match=r"nested columns \['l'\]"):
        w.write(pl.DataFrame({"l": [[1, 2]]}))
    w.close()
    with pytest.raises(ConfigError, match="does not exist"):
        files.sink_csv(tmp_path / "no" / "x.csv").validate("w")


def visible(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


def test_parquet_rolls_and_renames_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "pq"
    w = files.sink_parquet(out, roll_rows=4).build(ctx())
    for b in batches():
        w.write(b)
    # 10 rows, 4 per part: two parts are complete, the third is still a hidden temp file
    assert visible(out) == ["part-0000-000000.parquet", "part-0000-000001.parquet"]
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [".part-0000-000002.parquet.tmp"]
    w.close()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    parts = visible(out)
    assert len(parts) == 3
    assert [pl.read_parquet(out / p).height for p in parts] == [4, 4, 2]
    back = pl.read_parquet(out / "*.parquet")
    assert back.equals(pl.concat(batches()))


def test_parquet_partitions_and_workers(tmp_path: Path) -> None:
    out = tmp_path / "pq"
    data = pl.DataFrame(
        {"day": ["d1", "d2", "d1", None], "kind": ["a/b", "c", "a/b", "c"], "v": [1, 2, 3, 4]}
    )
    for worker in (0, 1):
        w = files.sink_parquet(out, partition_by=["day", "kind"]).build(ctx(worker, 2))
        w.write(data.filter(pl.col("v") % 2 == worker))
        w.close()
    assert visible(out) == [
        "day=__HIVE_DEFAULT_PARTITION__/kind=c/part-0000-000001.parquet",
        "day=d1/kind=a%2Fb/part-0001-000000.parquet",
        "day=d2/kind=c/part-0000-000000.parquet",
    ]
    back = pl.read_parquet(out / "day=d1" / "kind=a%2Fb" / "*.parquet")
    assert back.columns == ["v"] and back["v"].to_list() == [1, 3]
    w = files.sink_parquet(out, partition_by="day").build(ctx())
    with pytest.raises(ConnectorError, match="partition_by names"):
        w.write(pl.DataFrame({"x": [1]}))
    w.close()


def test_parquet_roll_interval_and_no_overwrite_on_restart(tmp_path: Path) -> None:
    out = tmp_path / "pq"
    w = files.sink_parquet(out, roll_interval=timedelta(milliseconds=20)).build(ctx())
    w.write(batches()[0])
    assert visible(out) == []
    time.sleep(0.03)
    w.flush()
    assert visible(out) == ["part-0000-000000.parquet"]
    w.close()
    (out / ".part-0000-000009.parquet.tmp").write_bytes(b"junk from a crash")
    w = files.sink_parquet(out).build(ctx())
    assert not (out / ".part-0000-000009.parquet.tmp").exists()
    w.write(batches()[2])
    w.close()
    assert visible(out) == ["part-0000-000000.parquet", "part-0000-000001.parquet"]
    with pytest.raises(ConfigError, match="roll_rows must be a positive integer"):
        files.sink_parquet(out, roll_rows=0).validate("w")


def test_sqlite_append_creates_table_and_stores_iso_timestamps(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = sqlite.sink_sqlite(db, "events")
    assert sink.single_writer
    w = sink.build(ctx())
    for b in batches():
        w.write(b)
    w.close()
    con = sqlite3.connect(db)
    got = con.execute("SELECT word, count, ts FROM events ORDER BY count").fetchall()
    types = {r[1]: r[2] for r in con.execute("PRAGMA table_info(events)")}
    con.close()
    assert len(got) == 10
    assert got[0] == ("w0", 0, "2024-05-01T12:00:00.000000+00:00")
    assert types == {"word": "TEXT", "count": "INTEGER", "ts": "TEXT"}


def test_sqlite_upsert_by_key(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    w = sqlite.sink_sqlite(db, "cards", mode="upsert", key=["card", "day"]).build(ctx())
    w.write(pl.DataFrame({"card": ["a", "b", "a"], "day": [1, 1, 2], "spend": [1.0, 2.0, 3.0]}))
    w.write(pl.DataFrame({"card": ["a", "c", "a"], "day": [1, 1, 1], "spend": [10.0, 5.0, 11.0]}))
    w.close()
    con = sqlite3.connect(db)
    got = con.execute("SELECT card, day, spend FROM cards ORDER BY card, day").fetchall()
    con.close()
    assert got == [("a", 1, 11.0), ("a", 2, 3.0), ("b", 1, 2.0), ("c", 1, 5.0)]
    # a second writer on the existing table keeps upserting
    w = sqlite.sink_sqlite(db, "cards", mode="upsert", key=["card", "day"]).build(ctx())
    w.write(pl.DataFrame({"card": ["b"], "day": [1], "spend": [0.5]}))
    w.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT spend FROM cards WHERE card='b'").fetchall() == [(0.5,)]
    con.close()


def test_sqlite_errors(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    with pytest.raises(ConfigError, match="needs key="):
        sqlite.sink_sqlite(db, "t", mode="upsert").validate("w")
    with pytest.raises(ConfigError, match="unknown mode='merge'"):
        sqlite.sink_sqlite(db, "t", mode="merge").validate("w")  # type: ignore[arg-type]
    with pytest.raises(ConnectorError, match="does not exist"):
        sqlite.sink_sqlite(db, "t", create=False).build(ctx())
    w = sqlite.sink_sqlite(db, "t").build(ctx())
    w.write(pl.DataFrame({"a": [1]}))
    with pytest.raises(ConnectorError, match=r"has no columns \['b'\]"):
        w.write(pl.DataFrame({"a": [1], "b": [2]}))
    w.close()
    assert os.path.exists(db)


@pytest.mark.parametrize("first_rows", [10, 2_000])
def test_parquet_dictionary_encodes_only_repeating_columns(tmp_path: Path, first_rows: int) -> None:
    import pyarrow.parquet as pq

    n = 6_000
    frame = pl.DataFrame(
        {
            "id": range(n),
            "kind": ["a", "b", "c"] * (n // 3),
            "text": [f"row {i}" for i in range(n)],
            "tags": [[i % 2] for i in range(n)],
        }
    )
    w = files.sink_parquet(str(tmp_path / "out")).build(SinkContext("write", 0, 1))
    w.write(frame.head(first_rows))  # the first batch decides, for the whole part file
    w.write(frame.slice(first_rows))
    w.close()
    (part,) = (tmp_path / "out").glob("part-*.parquet")
    assert pl.read_parquet(part).equals(frame)
    meta = pq.ParquetFile(part).metadata
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        dictionary = {
            group.column(c).path_in_schema.split(".")[0]
            for c in range(group.num_columns)
            if any("DICTIONARY" in e for e in group.column(c).encodings)
        }
        # Below 1,024 rows the first batch says little: Arrow's default (every column).
        expected = {"id", "kind", "text", "tags"} if first_rows < 1_024 else {"kind"}
        assert dictionary == expected


def test_parquet_layout_drops_dictionaries_and_codecs_that_do_not_pay(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    n = 6_000
    frame = pl.DataFrame(
        {
            # few distinct values, but sorted: plain + Snappy is smaller than a dictionary
            "ts": np.sort(rng.integers(0, n // 8, n)) * 1_000 + 1_700_000_000_000,
            "kind": rng.choice(["a", "b", "c"], n),  # a dictionary pays
            "noise": rng.integers(0, 2**62, n),  # Snappy cannot shrink it
        }
    )
    assert frame.n_unique(subset="ts") * 2 <= n  # proposed for a dictionary by the sample
    w = files.sink_parquet(str(tmp_path / "out")).build(SinkContext("write", 0, 1))
    w.write(frame.head(2_000))
    w.write(frame.slice(2_000))
    w.close()
    (part,) = (tmp_path / "out").glob("part-*.parquet")
    assert pl.read_parquet(part).equals(frame)
    meta = pq.ParquetFile(part).metadata
    for g in range(meta.num_row_groups):
        cols = {
            meta.row_group(g).column(c).path_in_schema: meta.row_group(g).column(c)
            for c in range(3)
        }
        dictionary = {k for k, c in cols.items() if any("DICTIONARY" in e for e in c.encodings)}
        assert dictionary == {"kind"}
        assert cols["ts"].compression == "SNAPPY"
        assert cols["noise"].compression == "UNCOMPRESSED"
        # what was dropped really did not pay on this data: written with it, it is no smaller
        # than three quarters (dictionary) or 90 % (codec) of what the layout wrote
    alt = tmp_path / "alt.parquet"
    pq.write_table(frame.to_arrow(), alt, use_dictionary=["ts", "kind"], compression="snappy")
    alt_meta = pq.ParquetFile(alt).metadata.row_group(0)
    ours = pq.ParquetFile(part).metadata
    ts_ours = sum(
        ours.row_group(g).column(0).total_compressed_size for g in range(ours.num_row_groups)
    )
    assert alt_meta.column(0).total_compressed_size > 0.75 * ts_ours
    noise = alt_meta.column(2)
    assert noise.total_compressed_size > 0.9 * noise.total_uncompressed_size


def _one_part(directory: Path) -> Path:
    (part,) = directory.glob("part-*.parquet")
    return part


def test_parquet_delta_encodes_integer_and_time_columns_where_it_is_as_small(
    tmp_path: Path,
) -> None:
    import duckdb
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    n = 20_000
    frame = pl.DataFrame(
        {
            "id": np.arange(n) * 3 + 10**12,  # steady steps: delta packs them into a few bits
            "price": rng.integers(100, 10**6, n),  # Snappy barely helps plain
            "ts": pl.Series(np.cumsum(rng.integers(0, 50, n)) + 1_700_000_000_000).cast(
                pl.Datetime("ms", "UTC")
            ),
            "noise": rng.integers(0, 2**62, n),  # nothing shrinks it: stays plain
            "name": rng.choice(["ann", "bob", None], n),
        }
    )
    w = files.sink_parquet(str(tmp_path / "out")).build(ctx())
    w.write(frame.head(8_000))
    w.write(frame.slice(8_000))
    w.close()
    part = _one_part(tmp_path / "out")
    # readable, with the same schema and rows, by Polars, pyarrow and DuckDB
    assert pl.read_parquet(part).equals(frame)
    assert pl.from_arrow(pq.read_table(part)).equals(frame)  # type: ignore[union-attr]
    got = pl.from_arrow(duckdb.sql(f"SELECT * FROM '{part}'").arrow())
    assert isinstance(got, pl.DataFrame)
    assert got.with_columns(pl.col("ts").dt.convert_time_zone("UTC")).equals(frame)
    meta = pq.ParquetFile(part).metadata
    for g in range(meta.num_row_groups):
        cols = {
            meta.row_group(g).column(c).path_in_schema: meta.row_group(g).column(c)
            for c in range(5)
        }
        encoded = {k for k, c in cols.items() if "DELTA_BINARY_PACKED" in c.encodings}
        assert encoded == {"id", "price", "ts"}
        assert all(cols[k].compression == "UNCOMPRESSED" for k in encoded)
        assert "DELTA_BINARY_PACKED" not in cols["noise"].encodings
    # each delta column really is about as small as plain + Snappy (the alternative it beat)
    ours = {c: 0 for c in ("id", "price", "ts")}
    for g in range(meta.num_row_groups):
        for c in range(3):
            col = meta.row_group(g).column(c)
            ours[col.path_in_schema] += col.total_compressed_size
    alt = tmp_path / "alt.parquet"
    table = frame.to_arrow()
    for start, rows in ((0, 8_000), (8_000, n - 8_000)):
        pq.write_table(table.slice(start, rows), alt, use_dictionary=False, compression="snappy")
        alt_group = pq.ParquetFile(alt).metadata.row_group(0)
        for c in range(3):
            ours[alt_group.column(c).path_in_schema] -= int(
                alt_group.column(c).total_compressed_size * 1.1
            )
    assert all(v <= 0 for v in ours.values()), ours


@pytest.mark.parametrize(
    ("statistics", "expected"),
    [("numeric", {"id", "ts"}), ("all", {"id", "ts", "name"}), ("none", set())],
)
def test_parquet_statistics_setting(tmp_path: Path, statistics: str, expected: set[str]) -> None:
    import pyarrow.parquet as pq

    ts = datetime(2024, 5, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "id": [5, 3, 9] * 1_000,
            "name": ["b", "a", "c"] * 1_000,
            "ts": [ts + timedelta(seconds=i) for i in range(3_000)],
        }
    )
    sink = files.sink_parquet(str(tmp_path / "out"), statistics=statistics)  # type: ignore[arg-type]
    w = sink.build(ctx())
    w.write(frame)
    w.close()
    part = _one_part(tmp_path / "out")
    assert pl.read_parquet(part).equals(frame)
    group = pq.ParquetFile(part).metadata.row_group(0)
    with_stats = {}
    for c in range(group.num_columns):
        col = group.column(c)
        if col.is_stats_set and col.statistics.has_min_max:
            with_stats[col.path_in_schema] = (col.statistics.min, col.statistics.max)
    assert set(with_stats) == expected
    # the statistics written are the columns' true min and max
    for name, (lo, hi) in with_stats.items():
        assert (lo, hi) == (frame[name].min(), frame[name].max())


def test_parquet_statistics_unknown_choice_is_a_config_error(tmp_path: Path) -> None:
    sink = files.sink_parquet(str(tmp_path / "out"), statistics="min-max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"step 'w': unknown statistics='min-max'; choose one of"):
        sink.validate("w")
    with pytest.raises(ConfigError, match="unknown statistics='min-max'"):
        sink.build(ctx())


def test_parquet_writes_categorical_enum_and_nested_text_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    n = 3_000
    frame = pl.DataFrame(
        {
            "cat": pl.Series(["a", "b", None] * (n // 3), dtype=pl.Categorical),
            "enum": pl.Series(["x", "y", "x"] * (n // 3), dtype=pl.Enum(["x", "y"])),
            "tags": [["p", "q"], [], None] * (n // 3),
            "pair": [{"k": i, "s": f"s{i % 7}"} for i in range(n)],
            "text": [f"t{i}" for i in range(n)],
        }
    )
    w = files.sink_parquet(str(tmp_path / "out")).build(ctx())
    w.write(frame)
    w.write(frame.head(10))
    w.close()
    part = _one_part(tmp_path / "out")
    back = pl.read_parquet(part)
    expected = pl.concat([frame, frame.head(10)])
    assert back.equals(expected.with_columns(pl.col("enum").cast(back.schema["enum"])))
    assert back.schema["cat"] == pl.Categorical
    # "numeric" statistics: none for the text, categorical or nested columns
    group = pq.ParquetFile(part).metadata.row_group(0)
    assert not any(group.column(c).is_stats_set for c in range(group.num_columns))


# -- dictionary columns handed to the Parquet writer ------------------------------------------


def _write_coded(path: Path, tables: list[object], schema: str = "values") -> None:
    """Write Arrow tables with dictionary columns through ``open_parquet_writer``."""
    import pyarrow as pa

    from tideflow.connectors._filesinks import open_parquet_writer

    first = tables[0]
    assert isinstance(first, pa.Table)
    sample = pl.from_arrow(first)
    assert isinstance(sample, pl.DataFrame)
    writer = open_parquet_writer(
        str(path),
        first.schema,
        sample,
        dictionary_schema=schema,  # type: ignore[arg-type]
    )
    for table in tables:
        writer.write_table(table)
    writer.close()


def _decoded(column: object) -> list[str | None]:
    """A dictionary column's values row by row, decoded in Python (the reference)."""
    import pyarrow as pa

    assert isinstance(column, pa.ChunkedArray | pa.DictionaryArray)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[str | None] = []
    for chunk in chunks:
        values = chunk.dictionary.to_pylist()
        out.extend(None if i is None else values[i] for i in chunk.indices.to_pylist())
    return out


@st.composite
def coded_batches(draw: st.DrawFn) -> list[object]:
    """Batches of an id column and a dictionary text column: dictionaries with unused and
    repeated values or empty, null indices, chunks with their own dictionaries."""
    import pyarrow as pa

    text = st.text(alphabet="ab/é中", max_size=14)  # some views inline, some not
    value_type = draw(st.sampled_from([pa.string(), pa.large_string()]))
    batches: list[object] = []
    start = 0
    for _ in range(draw(st.integers(1, 3))):
        chunks = []
        for _ in range(draw(st.integers(1, 3))):
            values = draw(st.lists(text, max_size=6))
            n = draw(st.integers(0, 30))
            pick = st.integers(0, len(values) - 1) if values else st.nothing()
            indices = draw(st.lists(st.one_of(st.none(), pick), min_size=n, max_size=n))
            chunks.append(
                pa.DictionaryArray.from_arrays(
                    pa.array(indices, pa.int32()), pa.array(values, value_type)
                )
            )
        column = pa.chunked_array(chunks, pa.dictionary(pa.int32(), value_type))
        rows = len(column)
        ids = pa.array(range(start, start + rows), pa.int64())
        batches.append(pa.table({"id": ids, "s": column}))
        start += rows
    return batches


@settings(max_examples=150, deadline=None)
@given(batches=coded_batches())
def test_parquet_writes_dictionary_columns_as_their_values(batches: list[object]) -> None:
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coded.parquet"
        _write_coded(path, batches)
        expected = [v for t in batches for v in _decoded(t.column("s"))]  # type: ignore[attr-defined]
        back = pl.read_parquet(path)
        assert back.schema == pl.Schema({"id": pl.Int64, "s": pl.String})
        assert back.get_column("s").to_list() == expected
        assert back.get_column("id").to_list() == list(range(len(expected)))
        schema = pq.read_schema(path)
        value_type = batches[0].schema.field("s").type.value_type  # type: ignore[attr-defined]
        assert schema.field("s").type == value_type
        assert pq.read_table(path).column("s").to_pylist() == expected
        assert not pa.types.is_dictionary(pq.read_table(path).schema.field("s").type)


def test_parquet_writes_given_dictionaries_as_they_are(tmp_path: Path) -> None:
    """The dictionary pages are the given dictionaries (unused values included), read back
    as text by pyarrow, Polars and DuckDB; nulls and an empty dictionary too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 4_000
    values = pa.array([f"https://example.com/{k}/item" for k in range(50)] + ["unused"])
    indices = pa.array([None if i % 7 == 0 else (i * 13) % 50 for i in range(n)], pa.int32())
    empty = pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), pa.array([], pa.string()))
    table = pa.table(
        {
            "id": pa.array(range(n)),
            "url": pa.DictionaryArray.from_arrays(indices, values),
            "none": empty,
        }
    )
    path = tmp_path / "coded.parquet"
    _write_coded(path, [table, table.slice(0, 100)])
    expected = _decoded(table.column("url")) + _decoded(table.column("url"))[:100]
    meta = pq.ParquetFile(path).metadata
    for g in range(meta.num_row_groups):
        column = meta.row_group(g).column(1)
        assert column.has_dictionary_page
        assert "RLE_DICTIONARY" in column.encodings
    assert str(pq.read_schema(path).field("url").type) == "string"
    back = pl.read_parquet(path)
    assert back.get_column("url").to_list() == expected
    assert back.get_column("none").null_count() == n + 100
    assert back.schema["url"] == pl.String and back.schema["none"] == pl.String
    duckdb = pytest.importorskip("duckdb")
    types = duckdb.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()
    assert [(name, kind) for name, kind, *_ in types] == [
        ("id", "BIGINT"),
        ("url", "VARCHAR"),
        ("none", "VARCHAR"),
    ]
    rows = duckdb.sql(f"SELECT url FROM '{path}' ORDER BY id").fetchall()
    assert sorted((r[0] for r in rows), key=str) == sorted(expected, key=str)


def test_parquet_dictionary_schema_setting(tmp_path: Path) -> None:
    """``"dictionary"`` keeps the columns categorical; an unknown choice is a ConfigError."""
    import pyarrow as pa

    coded = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 0]), pa.array(["a", "b"]))
    table = pa.table({"s": coded})
    _write_coded(tmp_path / "kept.parquet", [table], schema="dictionary")
    assert pl.read_parquet(tmp_path / "kept.parquet").schema["s"] == pl.Categorical
    with pytest.raises(ConfigError, match="unknown dictionary_schema='plain'; choose one of"):
        _write_coded(tmp_path / "bad.parquet", [table], schema="plain")


def test_parquet_dictionary_columns_keep_the_codec_only_where_it_shrinks_them_a_fifth(
    tmp_path: Path,
) -> None:
    """A dictionary column's codec mostly meets bit-packed indices: it is kept at 80 %."""
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 20_000
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, 7)) for _ in range(4_000)]
    frame = pl.DataFrame(
        {
            "word": rng.choice(words, n),  # random letters: the codec saves about a tenth
            "channel": [f"channel-{k}" for k in rng.integers(0, 2_000, n)],  # it saves more
        }
    )
    w = files.sink_parquet(str(tmp_path / "out")).build(SinkContext("write", 0, 1))
    w.write(frame)
    w.close()
    part = _one_part(tmp_path / "out")
    assert pl.read_parquet(part).equals(frame)
    group = pq.ParquetFile(part).metadata.row_group(0)
    assert [group.column(c).compression for c in range(2)] == ["UNCOMPRESSED", "SNAPPY"]
    # the ratios the rule saw, measured apart: 80-90 % for the words, below 80 % for channels
    alt = tmp_path / "alt.parquet"
    pq.write_table(frame.to_arrow(), alt, use_dictionary=True, compression="snappy")
    sizes = pq.ParquetFile(alt).metadata.row_group(0)
    ratios = [
        sizes.column(c).total_compressed_size / sizes.column(c).total_uncompressed_size
        for c in range(2)
    ]
    assert 0.8 < ratios[0] <= 0.9 and ratios[1] <= 0.8
