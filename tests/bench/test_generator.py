"""The Nexmark generator: deterministic, the right mix, columns, types and order."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tideflow import ConfigError
from tideflow.bench.nexmark import GeneratorSettings, generate_tables, iter_batches, write_events

TS = pl.Datetime("ms", "UTC")
CONTRACT = {
    "person": {
        "id": pl.Int64,
        "name": pl.String,
        "email_address": pl.String,
        "credit_card": pl.String,
        "city": pl.String,
        "state": pl.String,
        "date_time": TS,
        "extra": pl.String,
    },
    "auction": {
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
    "bid": {
        "auction": pl.Int64,
        "bidder": pl.Int64,
        "price": pl.Int64,
        "channel": pl.String,
        "url": pl.String,
        "date_time": TS,
        "extra": pl.String,
    },
}


def test_files_have_exactly_the_contract_columns_and_types(nexmark_dir: Path) -> None:
    for kind, schema in CONTRACT.items():
        frame = pl.read_parquet(nexmark_dir / f"{kind}.parquet")
        assert list(frame.schema.items()) == list(schema.items()), kind


def test_event_mix_is_1_3_46(nexmark_dir: Path) -> None:
    counts = {
        k: pl.scan_parquet(nexmark_dir / f"{k}.parquet").select(pl.len()).collect().item()
        for k in CONTRACT
    }
    assert counts == {"person": 600, "auction": 1800, "bid": 27600}


def test_files_are_in_event_time_order_at_the_configured_rate(nexmark_dir: Path) -> None:
    for kind in CONTRACT:
        times = pl.read_parquet(nexmark_dir / f"{kind}.parquet")["date_time"]
        assert times.is_sorted(), kind
    people = pl.read_parquet(nexmark_dir / "person.parquet")
    # one person every 50 events, 100 us apart -> 5 ms apart; first event at the base time
    assert people["date_time"][0].isoformat() == "2026-01-01T00:00:00+00:00"
    assert people["date_time"].diff().drop_nulls().dt.total_milliseconds().unique().to_list() == [5]


def test_ids_prices_and_expiry_follow_the_model(nexmark_dir: Path) -> None:
    people = pl.read_parquet(nexmark_dir / "person.parquet")
    auctions = pl.read_parquet(nexmark_dir / "auction.parquet")
    bids = pl.read_parquet(nexmark_dir / "bid.parquet")
    assert people["id"].to_list() == list(range(1000, 1600))
    assert auctions["id"].to_list() == list(range(1000, 2800))
    assert set(auctions["category"].unique().to_list()) == {10, 11, 12, 13, 14}
    assert (auctions["expires"] > auctions["date_time"]).all()
    assert (auctions["reserve"] > auctions["initial_bid"]).all()
    assert bids["price"].min() >= 100 and bids["price"].max() <= 100_000_000
    # bids reference recent auctions and people (a few not created yet, as the model allows)
    assert bids["auction"].min() >= 1000 and bids["auction"].max() < 2800 + 10
    assert bids["bidder"].max() < 1600 + 10
    # hot auctions: the most frequent auction gets far more than a uniform share
    top = bids["auction"].value_counts(sort=True)["count"][0]
    assert top > 20 * bids.height / 1800
    # hot channels carry about half of the bids; ~90 % of other urls carry a channel_id
    hot = bids["channel"].is_in(["Google", "Facebook", "Baidu", "Apple"]).mean()
    assert 0.45 < hot < 0.55  # type: ignore[operator]
    other = bids.filter(pl.col("channel").str.starts_with("channel-"))
    share = other["url"].str.contains("channel_id=").mean()
    assert 0.85 < share < 0.95  # type: ignore[operator]
    # average bid size near 100 bytes
    assert 55 < bids["extra"].str.len_bytes().mean() < 80  # type: ignore[operator]


def test_same_seed_same_events_other_seed_other_events() -> None:
    a = generate_tables(GeneratorSettings(events=5000, seed=3))
    b = generate_tables(GeneratorSettings(events=5000, seed=3))
    c = generate_tables(GeneratorSettings(events=5000, seed=4))
    for kind in a:
        assert a[kind].equals(b[kind]), kind
    assert not a["bid"].equals(c["bid"])


def test_in_process_batches_equal_the_files_whatever_the_batch_size() -> None:
    settings = GeneratorSettings(events=2500, seed=9)
    tables = generate_tables(settings)
    batches = list(iter_batches(settings, batch_events=333, created_at=True))
    assert [b.start for b in batches][:3] == [0, 333, 666]
    for kind in ("person", "auction", "bid"):
        got = pl.concat([getattr(b, kind) for b in batches]).drop("created_at")
        want = pl.from_arrow(tables[kind])
        assert isinstance(want, pl.DataFrame)
        assert got.equals(want), kind
    assert batches[0].bid.schema["created_at"] == pl.Datetime("us", "UTC")


def test_rate_throttles_the_iterator() -> None:
    import time

    settings = GeneratorSettings(events=2000, seed=1)
    t0 = time.monotonic()
    batches = list(iter_batches(settings, batch_events=500, rate=10_000, created_at=True))
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.19  # 2000 events at 10,000/s
    created = pl.concat([b.bid for b in batches])["created_at"]
    span = (created.max() - created.min()).total_seconds()  # type: ignore[operator]
    assert 0.18 < span < 0.21


def test_jsonl_output_has_the_same_rows(tmp_path: Path) -> None:
    settings = GeneratorSettings(events=1000, seed=2)
    write_events(settings, tmp_path / "pq")
    write_events(settings, tmp_path / "js", fmt="jsonl")
    for kind in CONTRACT:
        pq_frame = pl.read_parquet(tmp_path / "pq" / f"{kind}.parquet")
        js_frame = pl.read_ndjson(tmp_path / "js" / f"{kind}.jsonl")
        js_frame = js_frame.with_columns(
            pl.col(c).cast(pl.Datetime("ms", "UTC"))
            for c in ("date_time", "expires")
            if c in js_frame.columns
        )
        assert js_frame.equals(pq_frame), kind
    meta = json.loads((tmp_path / "js" / "nexmark.json").read_text())
    assert meta["rows"] == {"person": 20, "auction": 60, "bid": 920}


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="events must be >= 0"):
        GeneratorSettings(events=-1)
    with pytest.raises(ConfigError, match="event_rate must divide"):
        GeneratorSettings(events=10, event_rate=7)
    with pytest.raises(ConfigError, match="unknown --format"):
        write_events(GeneratorSettings(events=10), tmp_path, fmt="csv")  # type: ignore[arg-type]
