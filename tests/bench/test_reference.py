"""The DuckDB reference: contract columns for every query, and window semantics by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tideflow import ConfigError
from tideflow.bench.nexmark._reference import QUERIES, QUERY_NAMES, run_reference

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TS = pl.Datetime("ms", "UTC")


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def write_dir(
    tmp: Path,
    *,
    bids: list[tuple[int, int, int, int]],
    persons: list[tuple[int, str, str, int]] = (),  # type: ignore[assignment]
    auctions: list[tuple[int, int, int, int, int]] = (),
) -> Path:  # type: ignore[assignment]
    """bids (auction, bidder, price, ms); persons (id, name, state, ms);
    auctions (id, seller, category, ms, expires_ms)."""
    pl.DataFrame(
        {
            "auction": [b[0] for b in bids],
            "bidder": [b[1] for b in bids],
            "price": [b[2] for b in bids],
            "channel": ["Google"] * len(bids),
            "url": ["https://www.nexmark.com/a/b/c/item.htm?query=1"] * len(bids),
            "date_time": [at(b[3]) for b in bids],
            "extra": [""] * len(bids),
        },
        schema={
            "auction": pl.Int64,
            "bidder": pl.Int64,
            "price": pl.Int64,
            "channel": pl.String,
            "url": pl.String,
            "date_time": TS,
            "extra": pl.String,
        },
    ).write_parquet(tmp / "bid.parquet")
    pl.DataFrame(
        {
            "id": [p[0] for p in persons],
            "name": [p[1] for p in persons],
            "email_address": ["x@y.com"] * len(persons),
            "credit_card": ["0"] * len(persons),
            "city": ["Boise"] * len(persons),
            "state": [p[2] for p in persons],
            "date_time": [at(p[3]) for p in persons],
            "extra": [""] * len(persons),
        },
        schema={
            "id": pl.Int64,
            "name": pl.String,
            "email_address": pl.String,
            "credit_card": pl.String,
            "city": pl.String,
            "state": pl.String,
            "date_time": TS,
            "extra": pl.String,
        },
    ).write_parquet(tmp / "person.parquet")
    pl.DataFrame(
        {
            "id": [a[0] for a in auctions],
            "item_name": ["i"] * len(auctions),
            "description": ["d"] * len(auctions),
            "initial_bid": [1] * len(auctions),
            "reserve": [2] * len(auctions),
            "date_time": [at(a[3]) for a in auctions],
            "expires": [at(a[4]) for a in auctions],
            "seller": [a[1] for a in auctions],
            "category": [a[2] for a in auctions],
            "extra": [""] * len(auctions),
        },
        schema={
            "id": pl.Int64,
            "item_name": pl.String,
            "description": pl.String,
            "initial_bid": pl.Int64,
            "reserve": pl.Int64,
            "date_time": TS,
            "expires": TS,
            "seller": pl.Int64,
            "category": pl.Int64,
            "extra": pl.String,
        },
    ).write_parquet(tmp / "auction.parquet")
    return tmp


@pytest.mark.parametrize("query", QUERY_NAMES)
def test_every_query_gives_its_contract_columns(nexmark_dir: Path, query: str) -> None:
    result = run_reference(query, nexmark_dir)
    expected = ["bidder", "bid_count"] if query == "q12" else list(QUERIES[query].columns)
    assert result.columns == expected
    assert result.height > 0
    for name, dtype in result.schema.items():
        if name.endswith(("date_time", "window_start", "window_end", "expires")):
            assert dtype == TS, (query, name)


def test_contract_columns_of_the_named_queries() -> None:
    assert QUERIES["q1"].columns == ("auction", "bidder", "price", "date_time")
    assert QUERIES["q4"].columns == ("category", "final")
    assert QUERIES["q5"].columns == ("window_start", "window_end", "auction", "num")
    assert QUERIES["q7"].columns == (
        "window_start",
        "window_end",
        "auction",
        "bidder",
        "price",
        "date_time",
    )
    assert QUERIES["q8"].columns == ("id", "name", "window_start")
    assert QUERIES["q11"].columns == ("bidder", "bid_count", "window_start", "window_end")
    assert "q10" not in QUERIES


def test_q1_converts_to_euros(nexmark_dir: Path) -> None:
    bids = pl.read_parquet(nexmark_dir / "bid.parquet")
    q1 = run_reference("q1", nexmark_dir)
    assert q1["price"].sum() == pytest.approx(bids["price"].sum() * 0.908)


def test_q7_windows_are_half_open_and_keep_ties(tmp_path: Path) -> None:
    d = write_dir(
        tmp_path, bids=[(1, 7, 50, 0), (2, 8, 50, 9_999), (3, 9, 10, 5_000), (4, 7, 99, 10_000)]
    )
    q7 = run_reference("q7", d).sort("window_start", "auction")
    assert q7.select("auction", "price").rows() == [(1, 50), (2, 50), (4, 99)]
    assert q7["window_start"].to_list() == [T0, T0, at(10_000)]
    assert q7["window_end"].to_list() == [at(10_000), at(10_000), at(20_000)]


def test_q5_sliding_windows_keep_every_tied_auction(tmp_path: Path) -> None:
    # auction 1 twice at 1 s, auction 2 twice at 3 s
    d = write_dir(
        tmp_path, bids=[(1, 5, 1, 1000), (1, 5, 1, 1500), (2, 5, 1, 3000), (2, 5, 1, 3500)]
    )
    q5 = run_reference("q5", d)
    by_window = {
        (int((r["window_start"] - T0).total_seconds())): sorted(
            q5.filter(pl.col("window_start") == r["window_start"])["auction"].to_list()
        )
        for r in q5.iter_rows(named=True)
    }
    # [-8 s, 2 s) holds only auction 1; [-6, 4) .. [0, 10) hold both (tied); [2, 12) only 2
    assert by_window == {-8: [1], -6: [1, 2], -4: [1, 2], -2: [1, 2], 0: [1, 2], 2: [2]}
    assert set(q5["num"].to_list()) == {2}


def test_q11_sessions_split_at_a_gap_of_10_seconds(tmp_path: Path) -> None:
    d = write_dir(tmp_path, bids=[(1, 5, 1, 0), (1, 5, 1, 9_999), (1, 5, 1, 19_999), (1, 6, 1, 0)])
    q11 = run_reference("q11", d).sort("bidder", "window_start")
    assert q11.rows() == [
        (5, 2, T0, at(19_999)),
        (5, 1, at(19_999), at(29_999)),
        (6, 1, T0, at(10_000)),
    ]


def test_q8_needs_registration_and_auction_in_the_same_window(tmp_path: Path) -> None:
    d = write_dir(
        tmp_path,
        bids=[(1, 1, 1, 0)],
        persons=[(10, "Ann", "OR", 9_000), (11, "Bob", "CA", 1_000)],
        auctions=[(1, 10, 10, 10_500, 20_000), (2, 11, 10, 9_999, 20_000)],
    )
    q8 = run_reference("q8", d)
    assert q8.rows() == [(11, "Bob", T0)]


def test_q4_q9_use_only_bids_within_the_auction_lifetime(tmp_path: Path) -> None:
    d = write_dir(
        tmp_path,
        bids=[
            (1, 5, 900, 500),
            (1, 6, 300, 1_000),
            (1, 7, 300, 2_000),
            (1, 8, 999, 2_001),
            (2, 5, 40, 3_000),
        ],
        auctions=[(1, 10, 10, 1_000, 2_000), (2, 11, 10, 2_500, 4_000)],
    )
    assert run_reference("q4", d).rows() == [(10, (300 + 40) / 2)]
    q9 = run_reference("q9", d).sort("id")
    # auction 1: two bids of 300 -> the earlier wins; 900 came before the start, 999 after
    assert q9.select("id", "bidder", "price").rows() == [(1, 6, 300), (2, 5, 40)]


def test_unknown_query_and_missing_input_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown query 'q10'"):
        run_reference("q10", tmp_path)
    with pytest.raises(ConfigError, match="nexmark generate"):
        run_reference("q0", tmp_path)
