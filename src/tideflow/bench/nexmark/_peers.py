"""Peer implementations that need no bench-only package: a plain-Python loop and Polars.

- ``python``: a per-record loop over the bids (``dict`` per record, as a hand-written consumer
  would do), for q0-q2.
- ``polars``: the queries as Polars lazy batch plans over the whole files (the vectorized limit
  on this machine, next to DuckDB running the reference SQL).

Both follow the conventions in ``_reference`` (windows, valid bids, arrival-order ties).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tideflow._errors import ConfigError

__all__ = ["POLARS_QUERIES", "PYTHON_QUERIES", "run_polars", "run_python"]


_TS = pl.Datetime("ms", "UTC")


# --- plain Python loop ---------------------------------------------------------------------
# Each query reads the bids batch by batch, runs a Python function per record (a dict) and
# writes each batch's results out before reading the next, so memory stays flat.
_TYPES = {
    "auction": pa.int64(),
    "bidder": pa.int64(),
    "price": pa.int64(),
    "date_time": pa.timestamp("ms", tz="UTC"),
    "extra": pa.string(),
}

_PY_QUERIES: dict[str, tuple[list[str], pa.Schema, Callable[[dict[str, Any]], Any]]] = {
    "q0": (
        ["auction", "bidder", "price", "date_time", "extra"],
        pa.schema([(c, _TYPES[c]) for c in ("auction", "bidder", "price", "date_time", "extra")]),
        lambda r: {
            "auction": r["auction"],
            "bidder": r["bidder"],
            "price": r["price"],
            "date_time": r["date_time"],
            "extra": r["extra"],
        },
    ),
    "q1": (
        ["auction", "bidder", "price", "date_time"],
        pa.schema(
            [
                ("auction", pa.int64()),
                ("bidder", pa.int64()),
                ("price", pa.float64()),
                ("date_time", _TYPES["date_time"]),
            ]
        ),
        lambda r: {
            "auction": r["auction"],
            "bidder": r["bidder"],
            "price": r["price"] * 0.908,
            "date_time": r["date_time"],
        },
    ),
    "q2": (
        ["auction", "price"],
        pa.schema([("auction", pa.int64()), ("price", pa.int64())]),
        lambda r: (
            {"auction": r["auction"], "price": r["price"]} if r["auction"] % 123 == 0 else None
        ),
    ),
}
PYTHON_QUERIES = tuple(_PY_QUERIES)


def run_python(query: str, input_dir: Path, output: Path) -> int:
    """Run ``query`` as a plain-Python loop; write the result to ``output``; return its rows."""
    if query not in _PY_QUERIES:
        msg = f"nexmark python peer: no loop for {query}; available: {list(PYTHON_QUERIES)}"
        raise ConfigError(msg)
    columns, schema, fn = _PY_QUERIES[query]
    reader = pq.ParquetFile(Path(input_dir) / "bid.parquet")
    rows = 0
    with pq.ParquetWriter(output, schema) as writer:
        for batch in reader.iter_batches(batch_size=65_536, columns=columns):
            out = []
            for rec in batch.to_pylist():
                res = fn(rec)
                if res is not None:
                    out.append(res)
            writer.write_table(pa.Table.from_pylist(out, schema=schema))
            rows += len(out)
    return rows


# --- Polars lazy batch plans ---------------------------------------------------------------
class _In:
    def __init__(self, d: Path) -> None:
        self.person = pl.scan_parquet(d / "person.parquet")
        self.auction = pl.scan_parquet(d / "auction.parquet")
        self.bid = pl.scan_parquet(d / "bid.parquet").with_row_index("seq")


def _ms(col: str = "date_time") -> pl.Expr:
    return pl.col(col).dt.epoch("ms")


def _ts(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")


def _finals(i: _In) -> pl.LazyFrame:
    return (
        i.auction.join(
            i.bid.select("auction", "price", pl.col("date_time").alias("bt")),
            left_on="id",
            right_on="auction",
        )
        .filter(pl.col("bt").is_between(pl.col("date_time"), pl.col("expires")))
        .group_by("id", "seller", "category", "expires")
        .agg(pl.col("price").max().alias("final"))
    )


def _rank_aggs() -> list[pl.Expr]:
    p = pl.col("price")
    ranks = {"rank1": p < 10_000, "rank2": (p >= 10_000) & (p < 1_000_000), "rank3": p >= 1_000_000}
    out = [pl.len().alias("total_bids")]
    out += [cond.sum().cast(pl.Int64).alias(f"{r}_bids") for r, cond in ranks.items()]
    return out


def _distinct_aggs() -> list[pl.Expr]:
    p = pl.col("price")
    ranks = {"rank1": p < 10_000, "rank2": (p >= 10_000) & (p < 1_000_000), "rank3": p >= 1_000_000}
    out = []
    for col in ("bidder", "auction"):
        out.append(pl.col(col).n_unique().alias(f"total_{col}s"))
        out += [pl.col(col).filter(c).n_unique().alias(f"{r}_{col}s") for r, c in ranks.items()]
    return out


def _day() -> pl.Expr:
    # Grouped on as a date and formatted once per group (_with_day_text), as tideflow's queries.
    return pl.col("date_time").dt.date().alias("day")


def _with_day_text(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(pl.col("day").dt.strftime("%Y-%m-%d"))


def _pq5(i: _In) -> pl.LazyFrame:
    w = i.bid.select(
        "auction",
        pl.concat_list([(_ms() // 2000) * 2000 - k * 2000 for k in range(5)]).alias("ws"),
    ).explode("ws")
    c = w.group_by("ws", "auction").agg(pl.len().cast(pl.Int64).alias("num"))
    return c.filter(pl.col("num") == pl.col("num").max().over("ws")).select(
        _ts(pl.col("ws")).alias("window_start"),
        _ts(pl.col("ws") + 10_000).alias("window_end"),
        "auction",
        "num",
    )


def _pq11(i: _In) -> pl.LazyFrame:
    b = i.bid.select("bidder", _ms().alias("t"), "seq").sort("bidder", "t", "seq")
    b = b.with_columns(
        (
            (pl.col("t").diff().over("bidder").fill_null(10_000) >= 10_000).cum_sum().over("bidder")
        ).alias("sid")
    )
    return (
        b.group_by("bidder", "sid")
        .agg(
            pl.len().cast(pl.Int64).alias("bid_count"),
            _ts(pl.col("t").min()).alias("window_start"),
            _ts(pl.col("t").max() + 10_000).alias("window_end"),
        )
        .drop("sid")
    )


def _pq12(i: _In) -> pl.LazyFrame:
    now = int(datetime.now(tz=UTC).timestamp() * 1000)
    ws = now - now % 10_000
    return (
        i.bid.group_by("bidder")
        .agg(pl.len().cast(pl.Int64).alias("bid_count"))
        .with_columns(
            _ts(pl.lit(ws)).alias("window_start"), _ts(pl.lit(ws + 10_000)).alias("window_end")
        )
    )


_BID_COLS = ["auction", "bidder", "price", "channel", "url", "date_time", "extra"]

POLARS_QUERIES: dict[str, Callable[[_In], pl.LazyFrame]] = {
    "q0": lambda i: i.bid.select("auction", "bidder", "price", "date_time", "extra"),
    "q1": lambda i: i.bid.select(
        "auction", "bidder", (pl.col("price") * 0.908).alias("price"), "date_time"
    ),
    "q2": lambda i: i.bid.filter(pl.col("auction") % 123 == 0).select("auction", "price"),
    "q3": lambda i: (
        i.auction.filter(pl.col("category") == 10)
        .join(
            i.person.filter(pl.col("state").is_in(["OR", "ID", "CA"])),
            left_on="seller",
            right_on="id",
        )
        .select("name", "city", "state", "id")
    ),
    "q4": lambda i: _finals(i).group_by("category").agg(pl.col("final").mean()),
    "q5": _pq5,
    "q6": lambda i: (
        _finals(i)
        .sort("expires", "id", descending=True)
        .group_by("seller", maintain_order=True)
        .head(10)
        .group_by("seller")
        .agg(pl.col("final").mean().alias("avg_price"))
    ),
    "q7": lambda i: (
        i.bid.with_columns(((_ms() // 10_000) * 10_000).alias("ws"))
        .filter(pl.col("price") == pl.col("price").max().over("ws"))
        .select(
            _ts(pl.col("ws")).alias("window_start"),
            _ts(pl.col("ws") + 10_000).alias("window_end"),
            "auction",
            "bidder",
            "price",
            "date_time",
        )
    ),
    "q8": lambda i: (
        i.person.select("id", "name", ((_ms() // 10_000) * 10_000).alias("ws"))
        .join(
            i.auction.select("seller", ((_ms() // 10_000) * 10_000).alias("ws")).unique(),
            left_on=["id", "ws"],
            right_on=["seller", "ws"],
        )
        .unique()
        .select("id", "name", _ts(pl.col("ws")).alias("window_start"))
    ),
    "q9": lambda i: (
        i.auction.join(
            i.bid.select(
                "auction",
                "bidder",
                "price",
                pl.col("date_time").alias("bid_date_time"),
                pl.col("extra").alias("bid_extra"),
                "seq",
            ),
            left_on="id",
            right_on="auction",
            maintain_order="left_right",
        )
        .filter(pl.col("bid_date_time").is_between(pl.col("date_time"), pl.col("expires")))
        .sort(["price", "bid_date_time", "seq"], descending=[True, False, False])
        .unique(subset="id", keep="first")
        .select(
            "id",
            "item_name",
            "description",
            "initial_bid",
            "reserve",
            "date_time",
            "expires",
            "seller",
            "category",
            "extra",
            pl.col("id").alias("auction"),
            "bidder",
            "price",
            "bid_date_time",
            "bid_extra",
        )
    ),
    "q11": _pq11,
    "q12": _pq12,
    "q13": lambda i: i.bid.select(
        "auction",
        "bidder",
        "price",
        "date_time",
        (pl.lit("side-") + (pl.col("auction") % 10_000).cast(pl.String)).alias("value"),
    ),
    "q14": lambda i: i.bid.filter(
        (pl.col("price") * 908 > 1_000_000_000) & (pl.col("price") * 908 < 50_000_000_000)
    ).select(
        "auction",
        "bidder",
        (pl.col("price") * 0.908).alias("price"),
        pl.when(pl.col("date_time").dt.hour().is_between(8, 18))
        .then(pl.lit("dayTime"))
        .when((pl.col("date_time").dt.hour() <= 6) | (pl.col("date_time").dt.hour() >= 20))
        .then(pl.lit("nightTime"))
        .otherwise(pl.lit("otherTime"))
        .alias("bid_time_type"),
        "date_time",
        "extra",
        pl.col("extra").str.count_matches("c", literal=True).cast(pl.Int64).alias("c_counts"),
    ),
    "q15": lambda i: _with_day_text(i.bid.group_by(_day()).agg(*_rank_aggs(), *_distinct_aggs())),
    "q16": lambda i: _with_day_text(
        i.bid.group_by("channel", _day()).agg(
            pl.col("date_time").max().dt.strftime("%H:%M").alias("minute"),
            *_rank_aggs(),
            *_distinct_aggs(),
        )
    ),
    "q17": lambda i: _with_day_text(
        i.bid.group_by("auction", _day()).agg(
            *_rank_aggs(),
            pl.col("price").min().alias("min_price"),
            pl.col("price").max().alias("max_price"),
            pl.col("price").mean().alias("avg_price"),
            pl.col("price").sum().alias("sum_price"),
        )
    ),
    "q18": lambda i: (
        i.bid.sort("date_time", "seq").group_by("bidder", "auction").last().select(_BID_COLS)
    ),
    "q19": lambda i: (
        i.bid.sort(["price", "seq"], descending=[True, False])
        .with_columns(
            (pl.int_range(pl.len()).over("auction") + 1).cast(pl.Int64).alias("rank_number")
        )
        .filter(pl.col("rank_number") <= 10)
        .select(*_BID_COLS, "rank_number")
    ),
    "q20": lambda i: i.bid.select(
        *_BID_COLS[:5],
        pl.col("date_time").alias("bid_date_time"),
        pl.col("extra").alias("bid_extra"),
    ).join(
        i.auction.filter(pl.col("category") == 10).select(
            pl.col("id").alias("auction"),
            "item_name",
            "description",
            "initial_bid",
            "reserve",
            pl.col("date_time").alias("auction_date_time"),
            "expires",
            "seller",
            "category",
            pl.col("extra").alias("auction_extra"),
        ),
        on="auction",
    ),
    "q21": lambda i: (
        i.bid.with_columns(
            pl.col("channel")
            .str.to_lowercase()
            .replace_strict(
                {"apple": "0", "google": "1", "facebook": "2", "baidu": "3"},
                default=pl.col("url").str.extract(r"(&|^)channel_id=([^&]*)", 2),
            )
            .alias("channel_id")
        )
        .filter(pl.col("channel_id").is_not_null())
        .select("auction", "bidder", "price", "channel", "channel_id")
    ),
    "q22": lambda i: i.bid.select(
        "auction",
        "bidder",
        "price",
        "channel",
        *[
            pl.col("url").str.split("/").list.get(k, null_on_oob=True).alias(f"dir{k - 2}")
            for k in (3, 4, 5)
        ],
    ),
}


def run_polars(query: str, input_dir: Path, output: Path) -> int:
    """Run ``query`` as a Polars lazy plan; write the result to ``output``; return its rows."""
    fn = POLARS_QUERIES.get(query)
    if fn is None:
        msg = f"nexmark polars peer: no plan for {query}; available: {sorted(POLARS_QUERIES)}"
        raise ConfigError(msg)
    frame = fn(_In(Path(input_dir))).collect()
    frame.write_parquet(output)
    return frame.height
