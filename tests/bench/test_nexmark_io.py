"""The Nexmark source's blocks of row groups and its positions; the result sink's encoding."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow._errors import StateError
from tideflow.bench.nexmark._tideflow import NexmarkSource, ParquetResultSink, row_group_blocks
from tideflow.connectors._base import SinkContext, SourceContext


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=40), st.integers(1, 120))
def test_blocks_are_the_greedy_runs_of_consecutive_groups(sizes: list[int], batch: int) -> None:
    # Brute force: walk the groups, close the run when the next group would overflow it.
    expected: list[tuple[int, int]] = []
    run: list[int] = []
    for g, n in enumerate(sizes):
        if run and sum(sizes[i] for i in run) + n > batch:
            expected.append((run[0], run[-1] + 1))
            run = []
        run.append(g)
    if run:
        expected.append((run[0], run[-1] + 1))
    assert row_group_blocks(sizes, batch) == expected


@pytest.fixture(scope="module")
def grouped(nexmark_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small data set with 37-row bid groups (uneven against the batch sizes below)."""
    out = tmp_path_factory.mktemp("nexmark-37")
    table = pq.read_table(nexmark_dir / "bid.parquet")
    pq.write_table(table, out / "bid.parquet", row_group_size=37)
    return out


def _ctx(
    worker: int, workers: int, batch: int, resume: dict[str, int] | None = None
) -> SourceContext:
    return SourceContext("bids", worker, workers, batch, dict(resume or {}))


def _read_all(src: NexmarkSource, ctx: SourceContext) -> list[pl.DataFrame]:
    reader = src.build(ctx)
    out = []
    while not reader.finished:
        got = reader.poll()
        assert got is not None
        out.append(got.data)
    assert reader.poll() is None
    return out


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch", [1, 100, 1_000, 65_536])
def test_workers_read_every_row_once_in_blocks(grouped: Path, workers: int, batch: int) -> None:
    src = NexmarkSource(grouped, "bid", seq=True, columns=("auction", "price"))
    whole = pl.read_parquet(grouped / "bid.parquet", columns=["auction", "price"])
    parts = [_read_all(src, _ctx(w, workers, batch)) for w in range(workers)]
    got = pl.concat([f for part in parts for f in part]).sort("seq")
    assert got["seq"].to_list() == list(range(whole.height))
    assert got.drop("seq").equals(whole)
    for part in parts:  # a block holds at most `batch` rows unless it is one row group
        assert all(f.height <= max(batch, 37) for f in part)
        seqs = [f["seq"].to_list() for f in part]
        assert all(s == list(range(s[0], s[0] + len(s))) for s in seqs)  # consecutive rows
    if workers == 2 and batch < whole.height // 2:
        assert all(parts)  # both workers got blocks


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch", [1, 100, 1_000])
@pytest.mark.parametrize("stop", [0, 1, 3, 1_000])
def test_a_resumed_reader_reads_what_an_uninterrupted_one_does(
    grouped: Path, workers: int, batch: int, stop: int
) -> None:
    src = NexmarkSource(grouped, "bid", seq=True, columns=("auction",))
    for w in range(workers):
        uninterrupted = pl.concat(_read_all(src, _ctx(w, workers, batch)))
        reader = src.build(_ctx(w, workers, batch))
        first = []
        for _ in range(stop):  # then abort: only the snapshot survives
            got = reader.poll()
            if got is None:
                break
            first.append(got.data)
        position = reader.snapshot()
        rest = _read_all(src, _ctx(w, workers, batch, position))
        assert pl.concat(first + rest).equals(uninterrupted)


def test_a_position_from_another_batch_size_is_refused(grouped: Path) -> None:
    src = NexmarkSource(grouped, "bid", columns=("auction",))
    reader = src.build(_ctx(0, 1, 100))
    reader.poll()
    position = reader.snapshot()  # row group 2: blocks of 3 groups (111 rows) do not start there
    assert position == {"bid.parquet:group": 2}
    with pytest.raises(StateError, match=r"'bids'.*batch size and worker count"):
        src.build(_ctx(0, 1, 111, position))
    with pytest.raises(StateError, match="older version"):
        src.build(_ctx(0, 1, 100, {"bid.parquet": 2}))


def _timed_groups(path: Path, per_group: int, groups: int) -> None:
    """A file whose row group ``g`` holds ``per_group`` rows of times ``g * 100 ..``."""
    times = [g * 100 + i * 100 // per_group for g in range(groups) for i in range(per_group)]
    frame = pl.DataFrame({"date_time": times}, schema={"date_time": pl.Int64})
    pq.write_table(frame.to_arrow(), path, row_group_size=per_group)


@pytest.mark.parametrize("workers", [1, 2])
def test_sources_of_one_flow_read_blocks_aligned_in_event_time(
    tmp_path: Path, workers: int
) -> None:
    # As the generator writes them: group g of every file holds the same span of events.
    _timed_groups(tmp_path / "auction.parquet", 6, 10)
    _timed_groups(tmp_path / "bid.parquet", 92, 10)
    kinds = ["auction", "bid"]
    spans = {}
    for kind in kinds:
        src = NexmarkSource(tmp_path, kind, columns=("date_time",), companions=kinds)
        spans[kind] = [
            [
                (f["date_time"].min() // 100, f["date_time"].max() // 100)
                for f in _read_all(src, _ctx(w, workers, 200))
            ]
            for w in range(workers)
        ]
    # Blocks of two groups (two bid groups fill a batch of 200) in both files.
    assert spans["auction"] == spans["bid"]
    assert {g for part in spans["bid"] for g in part} == {(g, g + 1) for g in range(0, 10, 2)}
    alone = NexmarkSource(tmp_path, "auction", columns=("date_time",))
    assert [f.height for f in _read_all(alone, _ctx(0, 1, 200))] == [60]  # one file: by rows


def test_result_sink_writes_plain_columns_of_distinct_values(tmp_path: Path) -> None:
    n = 5_000
    frame = pl.DataFrame(
        {
            "id": range(n),
            "kind": ["a", "b", "c", "d"] * (n // 4),
            "text": [f"t{i}" for i in range(n)],
        }
    )
    writer = ParquetResultSink(tmp_path / "out.parquet").build(SinkContext("write", 0, 1))
    for i in range(0, n, 2_500):  # the first batch decides (at least 1,024 rows)
        writer.write(frame.slice(i, 2_500))
    writer.close()
    assert pl.read_parquet(tmp_path / "out.parquet").equals(frame)
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata
    for g in range(meta.num_row_groups):
        encodings = {
            meta.schema.column(c).name: meta.row_group(g).column(c).encodings for c in range(3)
        }
        assert any("DICTIONARY" in e for e in encodings["kind"])
        assert not any("DICTIONARY" in e for e in encodings["id"] + encodings["text"])
