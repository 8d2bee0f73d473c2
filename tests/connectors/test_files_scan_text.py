from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from files_helpers import build, concat, drain, read_all, read_workers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideflow import ConfigError
from tideflow.connectors import files


def expected_lines(*paths: Path) -> list[str]:
    out: list[str] = []
    for p in paths:
        raw = p.read_bytes()
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw:
            continue
        parts = raw.split(b"\n")
        if raw.endswith(b"\n"):
            parts.pop()
        for part in parts:
            text = part.decode("utf-8", errors="replace")
            out.append(text[:-1] if text.endswith("\r") else text)
    return out


def test_full_read_equals_file_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(
        b"\xef\xbb\xbfhello world\r\n\nbad \xff\xfe byte\nunicode \xc3\xa9t\xc3\xa9\nlast"
    )
    data, dead = read_all(files.scan_text(p))
    assert dead is None
    assert data is not None and data.columns == ["line"]
    assert data["line"].to_list() == [
        "hello world",
        "",
        "bad \ufffd\ufffd byte",
        "unicode été",
        "last",
    ]


def test_directory_reads_every_visible_file_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("b1\nb2\n")
    (tmp_path / "a.log").write_text("a1\n")
    (tmp_path / ".hidden").write_text("no\n")
    (tmp_path / "empty.txt").write_text("")
    data, _ = read_all(files.scan_text(tmp_path, column="text"))
    assert data is not None and data["text"].to_list() == ["a1", "b1", "b2"]


def test_glob_and_list_of_paths(tmp_path: Path) -> None:
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name + "\n")
    data, _ = read_all(files.scan_text(str(tmp_path / "x*.txt")))
    assert data is not None and data["line"].to_list() == ["x1.txt", "x2.txt"]
    data, _ = read_all(files.scan_text([tmp_path / "y.txt", tmp_path / "x1.txt"]))
    assert data is not None and data["line"].to_list() == ["y.txt", "x1.txt"]


def test_settings_errors_name_the_step(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"step 'wc\.read'.*does not exist"):
        files.scan_text(tmp_path / "missing.txt").validate("wc.read")
    with pytest.raises(ConfigError, match=r"step 'wc\.read'.*matches no file"):
        files.scan_text(str(tmp_path / "*.nothing")).validate("wc.read")
    with pytest.raises(ConfigError, match="holds no input file"):
        files.scan_csv(tmp_path).validate("wc.read")
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(ConfigError, match="split_bytes must be a positive integer"):
        files.scan_text(tmp_path / "a.txt", split_bytes=0).validate("wc.read")


def make_lines(n: int, width: int = 30, tag: str = "") -> list[str]:
    return [f"{tag}{i:06d} " + "x" * (i * 7 % width) for i in range(n)]


def test_three_workers_union_equals_single_read(tmp_path: Path) -> None:
    paths = []
    for k in range(4):
        p = tmp_path / f"f{k}.txt"
        p.write_text("\n".join(make_lines(500 + 100 * k, tag=f"f{k}:")) + "\n")
        paths.append(p)
    src = files.scan_text(tmp_path, split_bytes=3000, chunk_bytes=700)
    single, _ = read_all(src, batch_size=97)
    union, _ = read_workers(src, 3, batch_size=97)
    assert single is not None and union is not None
    assert single["line"].to_list() == expected_lines(*paths)
    assert sorted(union["line"].to_list()) == sorted(single["line"].to_list())
    assert union["line"].n_unique() == union.height


def test_snapshot_and_resume_reads_exactly_the_rest(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("\n".join(make_lines(2000)) + "\n")
    src = files.scan_text(p, split_bytes=10_000, chunk_bytes=3000)
    reader = build(src, batch_size=50)
    first, _, _ = drain(reader, max_polls=7)
    pos = reader.snapshot()
    assert any("skip" in v for v in pos.values()), "expected a resume point inside a chunk"
    rest, _ = read_all(src, batch_size=50, resume=pos)
    both = concat([first, rest])
    assert both is not None and both["line"].to_list() == expected_lines(p)


line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
    max_size=12,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    contents=st.lists(st.lists(line_text, max_size=40), min_size=1, max_size=3),
    trailing=st.booleans(),
    split_bytes=st.integers(1, 200),
    chunk_bytes=st.integers(1, 64),
    batch_size=st.integers(1, 9),
    workers=st.integers(1, 4),
    new_workers=st.integers(1, 4),
    stop=st.integers(0, 30),
)
def test_property_chunks_workers_and_resume(
    tmp_path_factory: pytest.TempPathFactory,
    contents: list[list[str]],
    trailing: bool,
    split_bytes: int,
    chunk_bytes: int,
    batch_size: int,
    workers: int,
    new_workers: int,
    stop: int,
) -> None:
    d = tmp_path_factory.mktemp("prop")
    paths = []
    for k, lines in enumerate(contents):
        p = d / f"f{k}.txt"
        body = "\n".join(f"{k}.{i}|{t}" for i, t in enumerate(lines))
        p.write_text(body + ("\n" if trailing and lines else ""), encoding="utf-8")
        paths.append(p)
    expected = expected_lines(*paths)
    src = files.scan_text(d, split_bytes=split_bytes, chunk_bytes=chunk_bytes)
    single, _ = read_all(src, batch_size=batch_size)
    got = [] if single is None else single["line"].to_list()
    assert got == expected
    # stop every worker after `stop` batches, merge their positions, resume with another count
    first: list[pl.DataFrame | None] = []
    merged: dict[str, object] = {}
    for w in range(workers):
        reader = build(src, worker=w, workers=workers, batch_size=batch_size)
        part, _, _ = drain(reader, max_polls=stop)
        first.append(part)
        merged.update(reader.snapshot())
        reader.close()
    rest = [
        read_all(src, worker=w, workers=new_workers, batch_size=batch_size, resume=merged)[0]
        for w in range(new_workers)
    ]
    union = concat(first + rest)
    lines = [] if union is None else union["line"].to_list()
    assert sorted(lines) == sorted(expected)


def test_reader_is_finished_with_its_last_batch(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("a\nb\nc\n")
    reader = build(files.scan_text(p), batch_size=2)
    first = reader.poll()
    assert first is not None and first.data.height == 2 and not reader.finished
    last = reader.poll()
    assert last is not None and last.data["line"].to_list() == ["c"]
    assert reader.finished
    assert reader.snapshot() == {f"{p}:0-6": {"done": True}}


def test_automatic_range_size_depends_on_the_input_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tideflow.connectors import _lines

    monkeypatch.setattr(_lines, "AUTO_SPLIT_MIN", 1000)
    monkeypatch.setattr(_lines, "AUTO_SPLIT_RANGES", 8)
    big = tmp_path / "big.txt"
    big.write_text("".join(f"{i:04d}\n" for i in range(4000)))  # 20,000 bytes
    small = tmp_path / "small.txt"
    small.write_text("s\n")
    parts = _lines.plan_ranges([str(big), str(small)], None)
    # 20,002 bytes / 8 ranges -> 2,501 bytes per range (above the minimum of 1,000)
    assert [p.end - p.start for p in parts] == [2501] * 7 + [20000 - 7 * 2501, 2]
    assert parts[-1].key == f"{small}:0-2"
    union, _ = read_workers(files.scan_text([big, small]), 3, batch_size=300)
    assert union is not None and sorted(union["line"].to_list()) == sorted(
        [f"{i:04d}" for i in range(4000)] + ["s"]
    )
