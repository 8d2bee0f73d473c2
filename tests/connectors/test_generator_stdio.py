from __future__ import annotations

import io
import time

import polars as pl
import pytest
from files_helpers import build, concat, drain, read_all
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow import ConfigError, ConnectorError
from tideflow.connectors import generator, stdio


def rows(start: int, n: int) -> pl.DataFrame:
    return pl.DataFrame({"i": pl.int_range(start, start + n, eager=True), "sq": [0] * n})


def test_generate_count_single_and_workers() -> None:
    src = generator.generate(rows, count=1000, block_rows=64)
    assert src.bounded
    data, _ = read_all(src, batch_size=100)
    assert data is not None and data["i"].to_list() == list(range(1000))
    union = concat([read_all(src, worker=w, workers=3, batch_size=100)[0] for w in range(3)])
    assert union is not None and sorted(union["i"].to_list()) == list(range(1000))


def test_generate_accepts_dict_and_checks_row_count() -> None:
    src = generator.generate(lambda s, n: {"x": list(range(s, s + n))}, count=3)
    data, _ = read_all(src)
    assert data is not None and data["x"].to_list() == [0, 1, 2]
    wrong = generator.generate(lambda s, n: {"x": [1]}, count=3)
    with pytest.raises(ConnectorError, match=r"asked for 3 rows .* returned 1"):
        read_all(wrong)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(0, 400),
    block=st.integers(1, 50),
    batch=st.integers(1, 60),
    old_workers=st.integers(1, 4),
    new_workers=st.integers(1, 4),
    stops=st.lists(st.integers(0, 6), min_size=4, max_size=4),
)
def test_property_resume_with_other_worker_count_is_exact(
    count: int, block: int, batch: int, old_workers: int, new_workers: int, stops: list[int]
) -> None:
    src = generator.generate(rows, count=count, block_rows=block)
    made: list[int] = []
    merged: dict[str, object] = {}
    for w in range(old_workers):
        reader = build(src, worker=w, workers=old_workers, batch_size=batch)
        d, _, _ = drain(reader, max_polls=stops[w])
        made += [] if d is None else d["i"].to_list()
        merged.update(reader.snapshot())
    # a second rescale on top of the first, to exercise the carried prior layers
    merged2: dict[str, object] = {}
    for w in range(new_workers):
        reader = build(src, worker=w, workers=new_workers, batch_size=batch, resume=merged)
        d, _, _ = drain(reader, max_polls=stops[w] // 2)
        made += [] if d is None else d["i"].to_list()
        merged2.update(reader.snapshot())
    for w in range(2):
        d, _ = read_all(src, worker=w, workers=2, batch_size=batch, resume=merged2)
        made += [] if d is None else d["i"].to_list()
    assert sorted(made) == list(range(count))


def test_unbounded_rate_limited_generator() -> None:
    src = generator.generate(rows, rate=2000)
    assert not src.bounded
    reader = build(src, batch_size=10_000)
    t0 = time.monotonic()
    got = 0
    while time.monotonic() - t0 < 0.25:
        b = reader.poll()
        if b is not None:
            got += b.data.height
        else:
            time.sleep(0.002)
    assert not reader.finished
    elapsed = time.monotonic() - t0
    assert 0 < got <= 2000 * elapsed + 10
    assert got >= 2000 * 0.25 * 0.5


def test_generator_settings_errors() -> None:
    with pytest.raises(ConfigError, match=r"step 'g'.*rate must be a positive number"):
        generator.generate(rows, rate=0).validate("g")
    with pytest.raises(ConfigError, match="count must be a non-negative integer"):
        generator.generate(rows, count=-1).validate("g")


def drain_stdin(
    src: stdio.ScanStdin, batch_size: int = 1000
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    reader = build(src, batch_size=batch_size)
    data, dead = [], []
    deadline = time.monotonic() + 5
    while not reader.finished and time.monotonic() < deadline:
        b = reader.poll()
        if b is None:
            time.sleep(0.001)
            continue
        data.append(b.data)
        if b.dead is not None:
            dead.append(b.dead)
    assert reader.finished
    return concat(data), concat(dead)


def test_stdin_text_jsonl_csv() -> None:
    data, _ = drain_stdin(stdio.scan_stdin(stream=io.BytesIO(b"a\nb b\nlast")), batch_size=2)
    assert data is not None and data["line"].to_list() == ["a", "b b", "last"]
    data, dead = drain_stdin(stdio.scan_stdin("jsonl", stream=io.BytesIO(b'{"a": 1}\nnope\n')))
    assert data is not None and data["a"].to_list() == [1]
    assert dead is not None and dead["origin"].to_list() == ["stdin:2"]
    data, dead = drain_stdin(
        stdio.scan_stdin("csv", schema={"n": pl.Int64}, stream=io.BytesIO(b"n,s\n1,a\nx,b\n"))
    )
    assert data is not None and data.rows() == [(1, "a")]
    assert dead is not None and dead["origin"].to_list() == ["stdin:3"]


def test_stdin_only_on_worker_zero() -> None:
    src = stdio.scan_stdin(stream=io.BytesIO(b"a\n"))
    reader = build(src, worker=1, workers=2)
    assert reader.finished and reader.poll() is None
    with pytest.raises(ConfigError, match="unknown stdin format 'xml'"):
        stdio.scan_stdin("xml").validate("in")  # type: ignore[arg-type]


def test_stdout_sink_jsonl_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    from tideflow.connectors._base import SinkContext

    sink = stdio.sink_stdout()
    assert sink.single_writer
    w = sink.build(SinkContext("print", 0, 1))
    w.write(pl.DataFrame({"a": [1, 2]}))
    w.close()
    assert capsys.readouterr().out == '{"a":1}\n{"a":2}\n'
    w = stdio.sink_stdout("table").build(SinkContext("print", 0, 1))
    w.write(pl.DataFrame({"word": ["x"] * 30}))
    w.close()
    out = capsys.readouterr().out
    assert out.count("│ x    │") == 30
    with pytest.raises(ConfigError, match="unknown stdout format"):
        stdio.sink_stdout("html").validate("p")  # type: ignore[arg-type]
