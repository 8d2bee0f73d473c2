"""The Nexmark queries as tideflow pipelines (the engine slot of the harness).

Every query of the reference (q0-q9, q11-q22) has a pipeline here, checked against DuckDB.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tideflow._errors import ConfigError, StateError
from tideflow.bench.nexmark._reference import spec
from tideflow.connectors._base import (
    Sink,
    SinkContext,
    SinkWriter,
    Source,
    SourceBatch,
    SourceContext,
    SourceReader,
)
from tideflow.connectors._filesinks import open_parquet_writer, parquet_table

__all__ = [
    "NexmarkSource",
    "ParquetResultSink",
    "build_flow",
    "distinct_codes",
    "per_distinct",
    "row_group_blocks",
    "run_tideflow",
]


@dataclasses.dataclass(frozen=True)
class NexmarkSource(Source):
    """Events of one kind from a generated Nexmark directory, in file (event-time) order.

    Consecutive row groups are read together, up to the run's batch size (a person or auction
    row group holds 2,000 or 6,000 rows: one Parquet read per group costs more than the
    decoding), and these blocks are dealt round-robin to the workers; a worker's position is
    the first row group of its next block. With ``seq=True`` a ``seq`` column carries the
    row's position in the file (arrival order). ``columns`` reads only those columns (None:
    all).
    """

    directory: Path
    kind: str
    seq: bool = False
    columns: tuple[str, ...] | None = None
    #: The kinds the flow reads (filled while it is built, shared by its sources): blocks hold
    #: the same number of row groups in every file the flow reads.
    companions: list[str] = dataclasses.field(default_factory=list, compare=False, hash=False)

    def project(self, columns: frozenset[str]) -> NexmarkSource:
        """The same events, reading only ``columns`` (``seq`` is made, not read)."""
        return dataclasses.replace(self, columns=tuple(sorted(columns - {"seq"})))

    @property
    def bounded(self) -> bool:
        """Generated files end."""
        return True

    @property
    def fixed(self) -> bool:
        """Generated files never grow."""
        return True

    def validate(self, step_id: str) -> None:
        """Check the file exists."""
        path = Path(self.directory) / f"{self.kind}.parquet"
        if not path.exists():
            msg = (
                f"step {step_id!r}: nexmark input {str(path)!r} not found; create it with "
                f"`tideflow bench nexmark generate --out {self.directory}`"
            )
            raise ConfigError(msg)

    def build(self, ctx: SourceContext) -> SourceReader:
        """Open the file for this worker's row groups."""
        return _NexmarkReader(self, ctx)


def row_group_blocks(sizes: list[int], batch_size: int) -> list[tuple[int, int]]:
    """Runs ``(first, end)`` of consecutive row groups holding at most ``batch_size`` rows
    together (a larger group is a run of its own).

    Examples
    --------
    >>> row_group_blocks([2, 2, 2, 5, 1], 4)
    [(0, 2), (2, 3), (3, 4), (4, 5)]
    """
    blocks: list[tuple[int, int]] = []
    first, rows = 0, 0
    for g, n in enumerate(sizes):
        if g > first and rows + n > batch_size:
            blocks.append((first, g))
            first, rows = g, 0
        rows += n
    if sizes:
        blocks.append((first, len(sizes)))
    return blocks


def _widest_group(directory: Path, kind: str) -> int:
    meta = pq.ParquetFile(directory / f"{kind}.parquet").metadata
    return max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)), default=1)


class _NexmarkReader(SourceReader):
    def __init__(self, src: NexmarkSource, ctx: SourceContext) -> None:
        self._path = Path(src.directory) / f"{src.kind}.parquet"
        self._file = pq.ParquetFile(self._path)
        meta = self._file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._starts = [0]
        for n in sizes:
            self._starts.append(self._starts[-1] + n)
        # Row group i of every file holds the events i * n .. (i + 1) * n - 1 of the generator:
        # blocks of one common number of groups keep the sources of a flow aligned in event
        # time. Sized by the rows of each file's widest group (a block of ten auction groups
        # would run 900 k events ahead of a bid group, and a join would hold all of it).
        widest = max(_widest_group(Path(src.directory), k) for k in {src.kind, *src.companions})
        blocks = row_group_blocks([widest] * len(sizes), ctx.batch_size)
        self._blocks = blocks[ctx.worker_index :: ctx.worker_count]
        self._end = meta.num_row_groups
        self._key = f"{src.kind}.parquet:group"
        if f"{src.kind}.parquet" in ctx.resume:
            msg = (
                f"step {ctx.step_id!r}: the checkpoint holds a nexmark position of an older "
                "version (row groups read one by one); start the run without it"
            )
            raise StateError(msg)
        at = int(ctx.resume.get(self._key, 0))
        firsts = [b[0] for b in self._blocks]
        if at != self._end and at not in firsts and at != 0:
            msg = (
                f"step {ctx.step_id!r}: resuming at row group {at} of {str(self._path)!r}, "
                f"which does not start a block of worker {ctx.worker_index}; resume with the "
                "batch size and worker count of the checkpointed run"
            )
            raise StateError(msg)
        self._next = len(firsts) if at == self._end else firsts.index(at) if at else 0
        self._seq = src.seq
        self._columns = None
        if src.columns is not None:  # in the file's order
            self._columns = [c for c in self._file.schema_arrow.names if c in src.columns]

    def poll(self) -> SourceBatch | None:
        if self._next >= len(self._blocks):
            return None
        first, end = self._blocks[self._next]
        self._next += 1
        # Polars' own reader, sliced to the block: no Arrow -> Polars conversion.
        start, rows = self._starts[first], self._starts[end] - self._starts[first]
        scan = pl.scan_parquet(self._path, hive_partitioning=False)
        if self._columns is not None:
            scan = scan.select(self._columns)
        frame = scan.slice(start, rows).collect()
        if self._seq:
            frame = frame.with_row_index("seq", offset=start)
        return SourceBatch(frame)

    @property
    def finished(self) -> bool:
        return self._next >= len(self._blocks)

    def snapshot(self) -> dict[str, Any]:
        at = self._blocks[self._next][0] if self._next < len(self._blocks) else self._end
        return {self._key: at}


@dataclasses.dataclass(frozen=True)
class ParquetResultSink(Sink):
    """Write every batch into one Parquet file (a row group per batch; memory stays flat);
    categorical columns are written with their dictionaries and read back as text."""

    path: Path
    single_writer = True

    def build(self, ctx: SinkContext) -> SinkWriter:
        """A writer that streams batches into the file."""
        return _ParquetResultWriter(Path(self.path))


class _ParquetResultWriter(SinkWriter):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: pq.ParquetWriter | None = None
        self._schema: Any = None
        self.rows = 0

    def write(self, batch: pl.DataFrame) -> None:
        if not batch.height:
            return
        table = parquet_table(batch)  # no string copy
        if self._writer is None:
            self._schema = table.schema
            self._writer = open_parquet_writer(
                str(self._path), self._schema, batch, dictionary_schema="values"
            )
        elif not table.schema.equals(self._schema):
            table = table.cast(self._schema)
        self._writer.write_table(table)
        self.rows += batch.height

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _engine() -> Any:
    import tideflow as tf

    if not hasattr(tf, "Dataflow") or not hasattr(tf, "run"):
        msg = (
            "nexmark: the tideflow engine (tideflow.Dataflow, tideflow.run) is not in this "
            "checkout yet; use --engine duckdb|polars|python|bytewax"
        )
        raise ConfigError(msg)
    return tf


# --- pipelines -------------------------------------------------------------------------------
_TS = pl.Datetime("ms", "UTC")
_HOT = {"apple": "0", "google": "1", "facebook": "2", "baidu": "3"}


def _ms(col: str = "date_time") -> pl.Expr:
    return pl.col(col).dt.epoch("ms")


def _to_ts(*cols: str) -> list[pl.Expr]:
    return [pl.col(c).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC") for c in cols]


class _Inputs:
    """The flow's sources, created on first use (only what the query reads)."""

    def __init__(self, flow: Any, directory: Path) -> None:
        self.flow = flow
        self.directory = directory
        self._streams: dict[str, Any] = {}
        self._kinds: list[str] = []  # shared by the sources: see NexmarkSource.companions

    def __getattr__(self, kind: str) -> Any:
        if kind.startswith("_"):
            raise AttributeError(kind)
        if kind not in self._streams:
            seq = kind == "bid_seq"
            events = "bid" if seq else kind
            self._note(events)
            source = NexmarkSource(self.directory, events, seq=seq, companions=self._kinds)
            self._streams[kind] = self.flow.source(source, name=kind)
        return self._streams[kind]

    def _note(self, kind: str) -> None:
        if kind not in self._kinds:
            self._kinds.append(kind)

    def read(self, kind: str, *columns: str, seq: bool = False) -> Any:
        """Events of ``kind`` with only ``columns`` read from the file (and ``seq``)."""
        name = kind + ("_seq" if seq else "")
        if name not in self._streams:
            self._note(kind)
            source = NexmarkSource(
                self.directory, kind, seq=seq, columns=columns, companions=self._kinds
            )
            self._streams[name] = self.flow.source(source, name=name)
        return self._streams[name]


def _q0(i: _Inputs) -> Any:
    return i.read("bid", "auction", "bidder", "price", "date_time", "extra")


def _q1(i: _Inputs) -> Any:
    bids = i.read("bid", "auction", "bidder", "price", "date_time")
    return bids.select("auction", "bidder", (pl.col("price") * 0.908).alias("price"), "date_time")


def _q2(i: _Inputs) -> Any:
    return i.read("bid", "auction", "price").filter(pl.col("auction") % 123 == 0)


def _q3(i: _Inputs) -> Any:
    # A regular join of every person (ids are unique: an auction whose seller is there is
    # never buffered) with the category-10 auctions; persons outside OR/ID/CA are kept by id
    # only (a later auction may name them) and dropped from the result.
    local = pl.col("state").is_in(["OR", "ID", "CA"])
    people = _timed(
        i.read("person", "id", "name", "city", "state", "date_time").map_batches(
            _blank_unless(local, ("name", "city", "state")), name="local_names"
        )
    )
    auctions = _timed(i.read("auction", "id", "seller", "category", "date_time")).filter(
        pl.col("category") == 10
    )
    auctions = auctions.select(pl.col("id").alias("aid"), "seller", "date_time")
    joined = (
        people.key_by("id")
        .join_interval(
            auctions.key_by("seller"), lower=None, upper=None, left_unique=True, name="join"
        )
        .results
    )
    return joined.filter(local).select("name", "city", "state", pl.col("aid").alias("id"))


def _blank_unless(cond: pl.Expr, columns: tuple[str, ...]) -> Any:
    """A frame function: rows where ``cond`` fails get null ``columns`` (literal nulls).

    A filter copies the kept rows' strings into fresh buffers; nulling with ``pl.when`` would
    keep pointing into the whole batch's string buffers (Polars string views), and a join
    buffer holding such rows would keep, and checkpoint, every text of the input.
    """
    cond = cond.fill_null(False)

    def blank(df: pl.DataFrame) -> pl.DataFrame:
        other = df.filter(~cond).with_columns(
            [pl.lit(None, df.schema[c]).alias(c) for c in columns]
        )
        return pl.concat([df.filter(cond), other])

    return blank


def _timed(stream: Any) -> Any:
    """``stream`` with ``date_time`` as its event time (files in time order: no delay, and
    never idle: a slow batch elsewhere must not let the watermark run ahead of this input)."""
    return stream.event_time("date_time", idle=None)


def _winners(i: _Inputs, auction: tuple[str, ...], bid: tuple[str, ...]) -> Any:
    """Every auction with a valid bid (time within [date_time, expires]) and its winning bid:
    highest price, then earliest time, then earliest arrival (``seq``).

    A columnar interval join with each auction's own end (``expires``) that keeps only the
    best bid of each open auction (``BestMatch``) and emits it once the watermark passes the
    auction's end. Bid columns that clash with auction columns get the suffix ``_right``.
    """
    import tideflow as tf

    auctions = _timed(i.read("auction", "id", "date_time", "expires", *auction)).key_by("id")
    bids = _timed(i.read("bid", "auction", "date_time", "price", *bid, seq=True))
    joined = auctions.join_interval(
        bids.key_by("auction"),
        lower=timedelta(0),
        upper="expires",
        emit="close",
        best=tf.BestMatch(["price", "date_time", "seq"], descending=[True, False, False]),
        name="winner",
    )
    return joined.results


def _q4(i: _Inputs) -> Any:
    return (
        _winners(i, ("category",), ())
        .key_by("category")
        .agg(pl.col("price").mean().alias("final"), name="average")
    )


def _q6(i: _Inputs) -> Any:
    return (
        _winners(i, ("seller",), ())
        .key_by("seller")
        .top_n(10, by=["expires", "id"], descending=True, emit="final", name="last10")
        .key_by("seller")
        .agg(pl.col("price").mean().alias("avg_price"), name="average")
    )


_AUCTION_COLS = ("item_name", "description", "initial_bid", "reserve", "seller", "category")


def _q9(i: _Inputs) -> Any:
    return _winners(i, (*_AUCTION_COLS, "extra"), ("bidder", "extra")).select(
        "id",
        *_AUCTION_COLS[:4],
        "date_time",
        "expires",
        *_AUCTION_COLS[4:],
        "extra",
        pl.col("id").alias("auction"),
        "bidder",
        "price",
        pl.col("date_time_right").alias("bid_date_time"),
        pl.col("extra_right").alias("bid_extra"),
    )


_SECOND = timedelta(seconds=1)


def _bid_time(i: _Inputs, *columns: str) -> Any:
    """Bids (only ``columns``) with event time; the generator writes them in time order."""
    return i.read("bid", *columns).event_time("date_time", idle=None, name="bid_time")


def _q5(i: _Inputs) -> Any:
    return hot_items(_bid_time(i, "auction", "date_time"))


def hot_items(bids: Any) -> Any:
    """q5 over a stream of bids with event time: per 10 s window sliding by 2 s, the auctions
    tied for the most bids (columns ``window_start``, ``window_end``, ``auction``, ``num``)."""
    from tideflow import windows

    # Bids per auction and window, of which each window's firing keeps the auctions with the
    # most (a top-per-window selection in the same firing; with several workers, one step
    # after it merges their selections).
    return (
        bids.key_by("auction")
        .window(windows.sliding(10 * _SECOND, 2 * _SECOND))
        .agg(pl.len().alias("num"), max_per_window="num", name="hot_items")
        .results.select("window_start", "window_end", "auction", "num", name="columns")
    )


def _q7(i: _Inputs) -> Any:
    from tideflow import windows

    return (
        _bid_time(i, "auction", "bidder", "price", "date_time")
        .key_by(pl.lit(0).alias("all"))
        .window(windows.tumbling(10 * _SECOND))
        .max_by("price", name="highest_bid")
        .results
    )


def _q8(i: _Inputs) -> Any:
    from tideflow import windows

    people = i.read("person", "id", "name", "date_time").event_time(
        "date_time", idle=None, name="person_time"
    )
    sellers = i.read("auction", "seller", "date_time").event_time(
        "date_time", idle=None, name="auction_time"
    )
    # A semi join: each person once per window in which they also opened an auction.
    return (
        people.key_by("id")
        .join_window(sellers.key_by("seller"), windows.tumbling(10 * _SECOND), how="semi")
        .results
    )


def _q11(i: _Inputs) -> Any:
    from tideflow import windows

    return (
        _bid_time(i, "bidder", "date_time")
        .key_by("bidder")
        .window(windows.session(10 * _SECOND))
        .agg(pl.len().alias("bid_count"), name="sessions")
        .results
    )


def _q12(i: _Inputs) -> Any:
    from tideflow import windows

    return (
        i.read("bid", "bidder")
        .key_by("bidder")
        .window(windows.tumbling(10 * _SECOND), clock="processing")
        .agg(pl.len().alias("bid_count"), name="bids_per_bidder")
        .results
    )


def _q13(i: _Inputs) -> Any:
    side = pl.DataFrame({"key": range(10_000)}, schema={"key": pl.Int64}).with_columns(
        value=pl.lit("side-") + pl.col("key").cast(pl.String)
    )

    def enrich(df: pl.DataFrame) -> pl.DataFrame:
        return (
            df.with_columns(key=pl.col("auction") % 10_000)
            .join(side, on="key", how="inner", maintain_order="left")
            .select("auction", "bidder", "price", "date_time", "value")
        )

    return i.bid.map_batches(
        enrich, reads=("auction", "bidder", "price", "date_time"), name="side_input"
    )


def _q14(i: _Inputs) -> Any:
    hour = pl.col("date_time").dt.hour()
    return i.bid.filter(
        (pl.col("price") * 908 > 1_000_000_000) & (pl.col("price") * 908 < 50_000_000_000)
    ).select(
        "auction",
        "bidder",
        (pl.col("price") * 0.908).alias("price"),
        pl.when(hour.is_between(8, 18))
        .then(pl.lit("dayTime"))
        .when((hour <= 6) | (hour >= 20))
        .then(pl.lit("nightTime"))
        .otherwise(pl.lit("otherTime"))
        .alias("bid_time_type"),
        "date_time",
        "extra",
        pl.col("extra").str.count_matches("c", literal=True).cast(pl.Int64).alias("c_counts"),
    )


_RANKS = {
    "rank1": pl.col("price") < 10_000,
    "rank2": (pl.col("price") >= 10_000) & (pl.col("price") < 1_000_000),
    "rank3": pl.col("price") >= 1_000_000,
}


def _rank_columns(distinct: bool) -> list[pl.Expr]:
    out = [cond.cast(pl.Int64).alias(f"{r}_bids") for r, cond in _RANKS.items()]
    if distinct:
        for r, cond in _RANKS.items():
            for col in ("bidder", "auction"):
                out.append(pl.when(cond).then(pl.col(col)).alias(f"{r}_{col}s"))
            out.append((~cond).cast(pl.Int64).alias(f"{r}_miss"))
    return out


def _rank_aggs(distinct: bool) -> list[pl.Expr]:
    out = [pl.len().alias("total_bids")]
    out += [pl.col(f"{r}_bids").sum() for r in _RANKS]
    if distinct:
        out += [
            pl.col("bidder").n_unique().alias("total_bidders"),
            pl.col("auction").n_unique().alias("total_auctions"),
        ]
        for r in _RANKS:
            out += [
                pl.col(f"{r}_bidders").n_unique(),
                pl.col(f"{r}_auctions").n_unique(),
                pl.col(f"{r}_miss").max(),
            ]
    return out


def _distinct_fix() -> list[pl.Expr]:
    # n_unique counts the null that stands for "not in this rank"; take it out again.
    return [
        (pl.col(f"{r}_{c}s") - pl.col(f"{r}_miss").fill_null(0)).alias(f"{r}_{c}s")
        for r in _RANKS
        for c in ("bidder", "auction")
    ]


def _day() -> pl.Expr:
    # The UTC calendar day as a date: grouped on, then formatted once per group (_day_text);
    # formatting every bid's time as text first cost a quarter of q15's CPU.
    return pl.col("date_time").dt.date().alias("day")


def _day_text() -> pl.Expr:
    return pl.col("day").dt.strftime("%Y-%m-%d")


def _q15(i: _Inputs) -> Any:
    return (
        i.bid.with_columns(_day(), *_rank_columns(True))
        .key_by("day")
        .agg(*_rank_aggs(True), name="stats")
        .with_columns(_day_text(), *_distinct_fix())
    )


def _q16(i: _Inputs) -> Any:
    return (
        i.bid.with_columns(_day(), *_rank_columns(True))
        .key_by("channel", "day")
        .agg(pl.col("date_time").max().alias("last_time"), *_rank_aggs(True), name="stats")
        .with_columns(
            _day_text(), pl.col("last_time").dt.strftime("%H:%M").alias("minute"), *_distinct_fix()
        )
    )


def _q17(i: _Inputs) -> Any:
    return (
        i.bid.with_columns(_day(), *_rank_columns(False))
        .key_by("auction", "day")
        .agg(
            *_rank_aggs(False),
            pl.col("price").min().alias("min_price"),
            pl.col("price").max().alias("max_price"),
            pl.col("price").mean().alias("avg_price"),
            pl.col("price").sum().alias("sum_price"),
            name="stats",
        )
        .with_columns(_day_text())
    )


_BID_COLS = ("auction", "bidder", "price", "channel", "url", "date_time", "extra")


def _q18(i: _Inputs) -> Any:
    return i.bid_seq.key_by("bidder", "auction").top_n(
        1, by=["date_time", "seq"], descending=True, name="latest"
    )


def _q19(i: _Inputs) -> Any:
    return i.bid_seq.key_by("auction").top_n(
        10, by=["price", "seq"], descending=[True, False], rank="rank_number", name="top10"
    )


def _q20(i: _Inputs) -> Any:
    # A regular join (no time bound either way): a bid meets its auction whichever came
    # first. Auction ids are unique, so a bid whose auction is there is never buffered; every
    # auction is kept (a later bid may name it), with its text columns dropped unless it is in
    # category 10, the only ones the result keeps; only those make pairs (``left_where``).
    cat10 = pl.col("category") == 10
    text = ("item_name", "description", "extra")
    auctions = _timed(i.auction.map_batches(_blank_unless(cat10, text), name="cat10_text"))
    auctions = auctions.key_by("id")
    bids = _timed(i.bid).key_by("auction")
    joined = auctions.join_interval(
        bids, lower=None, upper=None, left_unique=True, left_where=cat10, name="join"
    ).results
    return joined.select(
        pl.col("id").alias("auction"),
        "bidder",
        "price",
        "channel",
        "url",
        pl.col("date_time_right").alias("bid_date_time"),
        pl.col("extra_right").alias("bid_extra"),
        *_AUCTION_COLS[:4],
        pl.col("date_time").alias("auction_date_time"),
        "expires",
        "seller",
        "category",
        pl.col("extra").alias("auction_extra"),
    )


def _row_hashes(frame: pl.DataFrame) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """A 64-bit hash of each row of ``frame`` (equal rows, equal hashes)."""
    return frame.hash_rows().to_numpy()


def _first_rows(codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The row where each code first appears, for codes numbered in order of first
    appearance (0, 1, 2, ... as rows bring new ones)."""
    first = np.ones(len(codes), dtype=bool)
    if len(codes):
        first[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
    return np.flatnonzero(first)


#: Integer types that fit a 64-bit word (UInt64 through int64, wrapping: a bijection).
_WORD_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
#: The word a null row's string view gets: a length of 2**32 - 1, which no view has.
_NULL_VIEW = np.uint64(0xFFFFFFFF)


def _view_words(column: pl.Series) -> np.ndarray[Any, np.dtype[np.uint64]] | None:
    """The 16-byte Arrow string (or binary) view of each row of ``column`` as two words
    (``None`` if Polars hands the column to Arrow in another layout).

    Equal views mean equal values: a short value (12 bytes or less) is inside its view, a
    longer one is named by its length, first bytes and place in the array's buffers. Nulls
    get a view no value has. Polars' Parquet reader gives the rows of a dictionary page the
    views of their dictionary entries, and a gather copies views, so repeated values
    usually have equal views.
    """
    array = column.to_arrow(compat_level=pl.CompatLevel.newest())  # one chunk
    if not (pa.types.is_string_view(array.type) or pa.types.is_binary_view(array.type)):
        return None
    views = np.frombuffer(array.buffers()[1], dtype=np.uint64)
    words = views[2 * array.offset : 2 * (array.offset + len(array))].reshape(-1, 2)
    if column.null_count():
        words = words.copy()
        nulls = column.is_null().to_numpy()
        words[nulls, 0] = _NULL_VIEW
        words[nulls, 1] = 0
    return words


def _row_words(frame: pl.DataFrame) -> np.ndarray[Any, np.dtype[np.uint64]] | None:
    """Fixed-width words per row that are equal only for equal rows (not always the other
    way round): string and binary views, categorical ids, integers with a null flag.
    ``None`` when a column has another type."""
    parts: list[np.ndarray[Any, Any]] = []
    for column in frame.get_columns():
        dtype = column.dtype
        if dtype in (pl.String, pl.Binary):
            views = _view_words(column)
            if views is None:
                return None
            parts.append(views)
            continue
        if isinstance(dtype, (pl.Categorical, pl.Enum)):  # ids name values exactly
            column = column.to_physical()
        elif dtype not in _WORD_INTEGERS:
            return None
        values = column.fill_null(0).to_numpy().astype(np.int64, copy=False).view(np.uint64)
        parts.append(values[:, None])
        if column.null_count():
            parts.append(column.is_null().to_numpy().astype(np.uint64)[:, None])
    if not parts:
        return None
    return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.hstack(parts))


def _word_codes(words: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
    """Each row's number among the distinct rows of ``words`` (rows of fixed-width words),
    in order of first appearance: Arrow's hash table of fixed-size binary values (exact)."""
    rows, width = words.shape
    keys = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(8 * width), rows, [None, pa.py_buffer(words)]
    )
    codes: np.ndarray[Any, Any] = pc.dictionary_encode(keys).indices.to_numpy()
    return codes


def _hashed_codes(frame: pl.DataFrame) -> np.ndarray[Any, Any]:
    """:func:`distinct_codes`' numbering by 64-bit row hashes, checked against the rows."""
    hashed = pc.dictionary_encode(pa.array(_row_hashes(frame)))
    codes: np.ndarray[Any, Any] = hashed.indices.to_numpy()
    firsts = _first_rows(codes)
    if frame[firsts][codes].equals(frame):
        return codes
    name = "__code" + "_" * max((len(c) for c in frame.columns), default=0)  # a new name
    distinct = frame.unique(maintain_order=True).with_row_index(name)
    coded = frame.join(
        distinct, on=frame.columns, how="left", nulls_equal=True, maintain_order="left"
    )
    return coded.get_column(name).to_numpy()


def _row_groups(frame: pl.DataFrame) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """``(groups, heads)``: the rows of ``frame`` numbered by their words (see
    ``_row_words``; in order of first appearance) and each group's first row. Rows of one
    group are equal; equal rows are usually, not always, in one group. ``None`` when a
    column's type has no words."""
    words = _row_words(frame) if frame.height else None
    if words is None:
        return None
    groups = _word_codes(words)
    return groups, _first_rows(groups)


def _merged_codes(
    frame: pl.DataFrame, grouped: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """:func:`distinct_codes` from the word groups of ``frame`` (or none): the groups' first
    rows numbered by their values, which merges groups of equal rows."""
    if grouped is None or len(grouped[1]) == frame.height:
        codes = _hashed_codes(frame)
        return codes, _first_rows(codes)
    groups, heads = grouped
    # The heads are in order of first appearance, and so are their numbers.
    head_codes = _hashed_codes(frame[heads])
    return head_codes[groups], heads[_first_rows(head_codes)]


def distinct_codes(frame: pl.DataFrame) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``(codes, firsts)``: each row's number among the distinct rows of ``frame``, in order
    of first appearance (nulls equal), and the row where each distinct row first appears.

    First the rows are grouped by fixed-width words that are equal only for equal rows
    (Arrow's string views, categorical ids, integers): repeated text read from a Parquet
    dictionary page, or gathered, has equal views, so no text is read for it. Then the
    first row of each group is numbered by its values: a 64-bit hash of each (one pass over
    the columns together), checked against the rows; a hash shared by different rows (which
    no test has seen at random) makes that numbering fall back to Polars' exact ``unique``
    and a join.

    Examples
    --------
    >>> import polars as pl
    >>> codes, firsts = distinct_codes(pl.DataFrame({"a": ["x", "y", "x", None, None]}))
    >>> codes.tolist(), firsts.tolist()
    ([0, 1, 0, 2, 2], [0, 1, 3])
    """
    return _merged_codes(frame, _row_groups(frame))


def per_distinct(frame: pl.DataFrame, columns: str | list[str], *exprs: pl.Expr) -> pl.DataFrame:
    """``exprs``, which read only ``columns``, evaluated once per distinct row of
    ``columns`` (nulls included) and gathered back to the rows of ``frame``.

    A Nexmark bid batch of 92 k rows holds about 10 k distinct urls and channels. The rows
    are grouped by their Arrow string views (and the other columns' fixed-width words): as
    Polars reads a Parquet dictionary page, the rows of one value share a view, so the
    groups are the distinct values without hashing any text. Where the views repeat little
    (text not from a dictionary), the rows are numbered by :func:`distinct_codes`. A value
    split over several groups is only evaluated more than once. The result is the same as
    ``frame.select(*exprs)`` for expressions that map each row on its own (no aggregation,
    no look at other rows).

    Examples
    --------
    >>> import polars as pl
    >>> frame = pl.DataFrame({"url": ["a/b", "c/d", "a/b", None]})
    >>> per_distinct(frame, "url", pl.col("url").str.split("/").list.first().alias("head"))
    shape: (4, 1)
    ┌──────┐
    │ head │
    │ ---  │
    │ str  │
    ╞══════╡
    │ a    │
    │ c    │
    │ a    │
    │ null │
    └──────┘
    """
    keys = frame.select(columns)
    grouped = _row_groups(keys)
    if grouped is not None and len(grouped[1]) <= keys.height // 2:
        codes, firsts = grouped
    else:
        codes, firsts = _merged_codes(keys, grouped)
    out = keys[firsts].lazy().select(*exprs).collect()
    return out[codes]


#: The url's ``channel_id`` parameter with what precedes it (the query's regular expression
#: ``(&|^)channel_id=([^&]*)``, group 2, without a capture group: Rust's regex finds a match
#: faster than its groups; the two prefixes are stripped as literals).
_CHANNEL_ID = r"(?:^|&)channel_id=[^&]*"
#: The bid columns q21 and q22 read.
_URL_BIDS = ("auction", "bidder", "price", "channel", "url")


_HOT_NAME = pl.col("channel").str.to_lowercase().replace_strict(_HOT, default=None).alias("hot")
_FROM_URL = (
    pl.col("url")
    .str.extract(_CHANNEL_ID, 0)
    .str.strip_prefix("&")
    .str.strip_prefix("channel_id=")
    .alias("from_url")
)
_DIRS = [
    pl.col("url").str.split("/").list.get(k, null_on_oob=True).alias(f"dir{k - 2}")
    for k in (3, 4, 5)
]


def _channel_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """q21: the bids with a channel id (a hot channel's number, else the url's
    ``channel_id`` parameter), looked up once per distinct (channel, url) of the batch (a
    channel's bids mostly carry one url)."""
    channel_id = pl.coalesce(_HOT_NAME, _FROM_URL).alias("channel_id")
    return (
        frame.select("auction", "bidder", "price", "channel")
        .hstack(per_distinct(frame, ["channel", "url"], channel_id))
        .filter(pl.col("channel_id").is_not_null())
    )


def _directories(frame: pl.DataFrame) -> pl.DataFrame:
    """q22: the url's first three directories, split once per distinct url of the batch."""
    return frame.drop("url").hstack(per_distinct(frame, "url", *_DIRS))


def _q21(i: _Inputs) -> Any:
    bids = i.read("bid", *_URL_BIDS)
    return bids.map_batches(_channel_ids, reads=_URL_BIDS, name="channel_id")


def _q22(i: _Inputs) -> Any:
    bids = i.read("bid", *_URL_BIDS)
    return bids.map_batches(_directories, reads=_URL_BIDS, name="directories")


PIPELINES: dict[str, Any] = {
    "q0": _q0,
    "q1": _q1,
    "q2": _q2,
    "q3": _q3,
    "q4": _q4,
    "q5": _q5,
    "q6": _q6,
    "q7": _q7,
    "q8": _q8,
    "q9": _q9,
    "q11": _q11,
    "q12": _q12,
    "q13": _q13,
    "q14": _q14,
    "q15": _q15,
    "q16": _q16,
    "q17": _q17,
    "q18": _q18,
    "q19": _q19,
    "q20": _q20,
    "q21": _q21,
    "q22": _q22,
}


def build_flow(query: str, input_dir: Path, output: Path) -> Any:
    """Build the tideflow dataflow of ``query`` (without running it)."""
    q = spec(query)
    tf = _engine()
    flow = tf.Dataflow(f"nexmark_{query}")
    result = PIPELINES[query](_Inputs(flow, Path(input_dir)))
    result.select(list(q.columns), name="result").sink(
        ParquetResultSink(Path(output)), name="write"
    )
    return flow


def run_tideflow(
    query: str,
    input_dir: Path,
    output: Path,
    *,
    checkpoint_interval: float = 0.0,
    batch_size: int = 65_536,
) -> int:
    """Run ``query`` on tideflow over ``input_dir``; write the final results to ``output``.

    The number of worker processes comes from ``TIDEFLOW_NEXMARK_WORKERS`` (default 1). With
    ``checkpoint_interval`` > 0 (seconds) the run takes consistent checkpoints that often (and
    a last one when the input ends) into a temporary directory, removed afterwards.
    ``batch_size`` is the run's micro-batch size (the sources read blocks of row groups up to
    it; tests pass small ones for many batches).
    """
    import os
    import tempfile

    tf = _engine()
    flow = build_flow(query, Path(input_dir), Path(output))
    workers = int(os.environ.get("TIDEFLOW_NEXMARK_WORKERS", "1"))
    if checkpoint_interval > 0:
        with tempfile.TemporaryDirectory(prefix="nexmark-checkpoints-") as cp:
            interval = timedelta(seconds=checkpoint_interval)
            tf.run(
                flow,
                workers=workers,
                batch_size=batch_size,
                checkpoint_dir=cp,
                checkpoint_interval=interval,
            )
    else:
        tf.run(flow, workers=workers, batch_size=batch_size)
    out = Path(output)
    if not out.exists():  # an empty result
        pl.DataFrame(schema=dict.fromkeys(spec(query).columns, pl.Int64)).write_parquet(out)
    rows: int = pq.ParquetFile(out).metadata.num_rows
    return rows


class _Clock:
    """Wall-clock origin shared by the throttled source and the timing sink (one process)."""

    t0: float = 0.0


@dataclasses.dataclass(frozen=True)
class _ThrottledBids(Source):
    """Bids released at their due time ``t0 + event_number / rate`` (column ``_due``, s)."""

    frame: pl.DataFrame
    due: Any
    clock: _Clock

    @property
    def bounded(self) -> bool:
        return True

    def build(self, ctx: SourceContext) -> SourceReader:
        return _ThrottledReader(self)


class _ThrottledReader(SourceReader):
    def __init__(self, src: _ThrottledBids) -> None:
        import time

        self._src = src
        self._pos = 0
        self._time = time.perf_counter
        src.clock.t0 = self._time()

    def poll(self) -> SourceBatch | None:
        import numpy as np

        now = self._time() - self._src.clock.t0
        end = int(np.searchsorted(self._src.due, now, side="right"))
        if end <= self._pos:
            return None
        batch = self._src.frame.slice(self._pos, end - self._pos)
        self._pos = end
        return SourceBatch(batch)

    @property
    def finished(self) -> bool:
        return self._pos >= self._src.frame.height

    def snapshot(self) -> dict[str, Any]:
        return {"pos": self._pos}


@dataclasses.dataclass(frozen=True)
class _TimingSink(Sink):
    """Notes when result rows arrive (wall seconds after ``t0``).

    ``arrivals`` keeps each result batch with its arrival time (q5's window rows);
    ``latencies`` gets, per batch, its rows' latencies (arrival minus ``_due``) as a NumPy
    array, like the Bytewax sink's list of floats: a run of q0-q2 then holds no Python object
    per batch for the garbage collector to walk (tens of thousands of frames made its full
    collections take milliseconds, inside the measured run).
    """

    clock: _Clock
    arrivals: list[tuple[float, pl.DataFrame]] | None
    latencies: list[Any] | None = None

    def build(self, ctx: SinkContext) -> SinkWriter:
        return _TimingWriter(self)


class _TimingWriter(SinkWriter):
    def __init__(self, sink: _TimingSink) -> None:
        import time

        self._sink = sink
        self._time = time.perf_counter

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height:
            now = self._time() - self._sink.clock.t0
            if self._sink.latencies is not None:
                self._sink.latencies.append(now - batch.get_column("_due").to_numpy())
            if self._sink.arrivals is not None:
                self._sink.arrivals.append((now, batch))

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class LatencyRun:
    """What a throttled run gives back (every engine).

    Attributes
    ----------
    latencies_s
        q0-q2: one latency per result row (arrival at the sink minus the row's event's due
        time). q5: empty (window latencies are derived from ``results``).
    results
        q5: the result rows with ``_arrived`` (seconds after the start); None for q0-q2.
    elapsed_s
        Wall seconds from the first due event to the end of the run.
    """

    latencies_s: Any
    results: pl.DataFrame | None
    elapsed_s: float


def run_latency(query: str, bids: Any, rate: float, *, max_delay_ms: float = 0.0) -> LatencyRun:
    """Throttled run of q0-q2 or q5 on tideflow: bids released at ``rate`` events/s.

    One worker, no checkpoints; ``max_delay_ms`` is the latency setting of the batching knob
    (the longest a source holds rows back to fill a batch).
    """
    import time

    import numpy as np

    tf = _engine()
    frame = pl.from_arrow(bids)
    assert isinstance(frame, pl.DataFrame)
    due = frame["event_number"].to_numpy() / rate
    frame = frame.drop("event_number").with_columns(pl.Series("_due", due))
    clock = _Clock()
    arrivals: list[tuple[float, pl.DataFrame]] = []
    flow = tf.Dataflow(f"nexmark_latency_{query}")
    src = flow.source(_ThrottledBids(frame, due, clock), name="bids")
    if query == "q0":
        out = src.select("auction", "bidder", "price", "date_time", "extra", "_due")
    elif query == "q1":
        out = src.select(
            "auction", "bidder", (pl.col("price") * 0.908).alias("price"), "date_time", "_due"
        )
    elif query == "q2":
        out = src.filter(pl.col("auction") % 123 == 0).select("auction", "price", "_due")
    elif query == "q5":
        out = hot_items(src.event_time("date_time", idle=None, name="bid_time"))
    else:
        msg = f"nexmark latency: no tideflow throttled pipeline for {query}; use q0-q2 or q5"
        raise ConfigError(msg)
    windows = query == "q5"
    latencies: list[Any] = []
    out.sink(
        _TimingSink(clock, arrivals if windows else None, None if windows else latencies),
        name="timing",
    )
    tf.run(flow, workers=1, max_delay=timedelta(milliseconds=max_delay_ms))
    elapsed = time.perf_counter() - clock.t0
    if windows:
        parts = [b.with_columns(pl.lit(t).alias("_arrived")) for t, b in arrivals]
        results = pl.concat(parts) if parts else None
        return LatencyRun(np.zeros(0), results, elapsed)
    return LatencyRun(np.concatenate(latencies) if latencies else np.zeros(0), None, elapsed)
