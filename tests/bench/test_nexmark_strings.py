"""q21 and q22's string work, done once per distinct value, equals the plain expressions."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tideflow.bench.nexmark import _tideflow
from tideflow.bench.nexmark._peers import POLARS_QUERIES
from tideflow.bench.nexmark._tideflow import (
    _channel_ids,
    _directories,
    distinct_codes,
    per_distinct,
)

# Pieces of urls: separators, the parameter at the start, middle or end, repeated, empty
# values, non-ASCII text.
PIECES = [
    "/", "//", "&", "=", "?", "channel_id=", "channel_id=7", "&channel_id=", "xchannel_id=9",
    "https://www.nexmark.com", "query=1", "a", "bc", "é", "中文", "🙂", "", "item.htm",
]  # fmt: skip
CHANNELS = ["Google", "google", "APPLE", "Baidu", "facebook", "FaceBook", "channel-1", "", "İ"]

urls = st.one_of(st.none(), st.lists(st.sampled_from(PIECES), max_size=8).map("".join))
channels = st.one_of(st.none(), st.sampled_from(CHANNELS), st.text(max_size=6))


@st.composite
def bids(draw: st.DrawFn) -> pl.DataFrame:
    """Bid rows whose urls and channels repeat (drawn from small pools) or not."""
    pool_urls = draw(st.lists(urls, min_size=1, max_size=6))
    pool_channels = draw(st.lists(channels, min_size=1, max_size=4))
    n = draw(st.integers(0, 40))
    rows = draw(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(pool_urls), urls),
                st.one_of(st.sampled_from(pool_channels), channels),
            ),
            min_size=n,
            max_size=n,
        )
    )
    ids = pl.Series("auction", range(n), dtype=pl.Int64)
    return pl.DataFrame(
        [
            ids,
            (ids * 7).alias("bidder"),
            (ids * 100).alias("price"),
            pl.Series("channel", [c for _, c in rows], dtype=pl.String),
            pl.Series("url", [u for u, _ in rows], dtype=pl.String),
        ]
    )


def laid_out(frame: pl.DataFrame, layout: str, order: list[int]) -> pl.DataFrame:
    """``frame`` with its text held as a pipeline may hold it: built from Python values
    (a view per row), gathered (rows of one value share a view), read back from Parquet
    with dictionaries (rows share their dictionary entry's view), or in two chunks (view
    buffers numbered per chunk)."""
    if layout == "gathered":
        return frame[order] if frame.height else frame
    if layout == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer, use_pyarrow=True, pyarrow_options={"use_dictionary": True})
        buffer.seek(0)
        return pl.read_parquet(buffer)
    if layout == "chunked":
        half = frame.height // 2
        return pl.concat([frame.head(half), frame.tail(frame.height - half)], rechunk=False)
    return frame


layouts = st.sampled_from(["built", "gathered", "parquet", "chunked"])


@st.composite
def laid_out_bids(draw: st.DrawFn) -> pl.DataFrame:
    """:func:`bids` in one of the layouts of :func:`laid_out`."""
    frame = draw(bids())
    n = frame.height
    order = draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=n, max_size=n))
    return laid_out(frame, draw(layouts), order)


def polars_plan(query: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The query's Polars batch plan (the plain expressions on every row) over ``frame``."""
    return POLARS_QUERIES[query](SimpleNamespace(bid=frame.lazy())).collect()  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(laid_out_bids())
def test_q22_directories_equal_the_split_of_every_row(frame: pl.DataFrame) -> None:
    assert_frame_equal(_directories(frame), polars_plan("q22", frame))


@settings(max_examples=300, deadline=None)
@given(laid_out_bids())
def test_q21_channel_ids_equal_the_regex_on_every_row(frame: pl.DataFrame) -> None:
    assert_frame_equal(_channel_ids(frame), polars_plan("q21", frame))


@settings(max_examples=200, deadline=None)
@given(laid_out_bids())
def test_per_distinct_equals_the_expressions_on_every_row(frame: pl.DataFrame) -> None:
    exprs = [
        pl.col("url").str.len_bytes().alias("bytes"),
        pl.col("url").fill_null("(none)").alias("filled"),  # not null on null input
        pl.col("url").is_null().alias("missing"),
        pl.col("url").str.to_uppercase().alias("upper"),
    ]
    assert_frame_equal(per_distinct(frame, "url", *exprs), frame.select(exprs))


def test_per_distinct_keeps_empty_strings_apart_from_nulls() -> None:
    frame = pl.DataFrame({"s": ["", None, "", "x", None]})
    got = per_distinct(frame, "s", pl.col("s").is_null().alias("null"), pl.col("s"))
    assert got["null"].to_list() == [False, True, False, False, True]
    assert got["s"].to_list() == ["", None, "", "x", None]


@settings(max_examples=200, deadline=None)
@given(laid_out_bids(), st.sampled_from(["categorical", "binary", "integer"]))
def test_per_distinct_on_other_key_types(frame: pl.DataFrame, kind: str) -> None:
    """Categorical ids, binary views and integers (with nulls) group the rows too."""
    if kind == "categorical":
        keys = frame.with_columns(pl.col("url").cast(pl.Categorical))
        text = pl.col("url").cast(pl.String)
    elif kind == "binary":
        keys = frame.with_columns(pl.col("url").cast(pl.Binary))
        text = pl.col("url").cast(pl.String)
    else:
        keys = frame.with_columns(
            pl.col("url").str.len_bytes().cast(pl.UInt64).alias("auction"),
            (pl.col("channel").str.len_bytes().cast(pl.Int8) - 3).alias("bidder"),
        )
        text = pl.format("{}/{}", "auction", "bidder")
    exprs = [text.alias("text"), text.is_null().alias("missing")]
    columns = ["url", "channel"] if kind != "integer" else ["auction", "bidder"]
    assert_frame_equal(per_distinct(keys, columns, *exprs), keys.select(exprs))
    codes, firsts = distinct_codes(keys.select(columns))
    expected = reference_codes(keys.select(columns))
    assert codes.tolist() == expected
    assert firsts.tolist() == [expected.index(c) for c in range(len(set(expected)))]


def test_null_views_stay_apart_from_equal_views() -> None:
    """A gathered null keeps the view of the row it came from; it is still null."""
    long = "https://example.com/a/long/url"
    column = pl.Series("s", [long, "", None, long]).gather([0, 1, 2, 3, 0, 2, 1])
    column = pl.select(pl.when(pl.int_range(7) != 4).then(column)).to_series().alias("s")
    frame = column.to_frame()
    got = per_distinct(frame, "s", pl.col("s").is_null().alias("null"), pl.col("s"))
    assert_frame_equal(got, frame.select(pl.col("s").is_null().alias("null"), pl.col("s")))
    codes, _ = distinct_codes(frame)
    assert codes.tolist() == reference_codes(frame)


def reference_codes(frame: pl.DataFrame) -> list[int]:
    """Each row's number among the distinct rows, in order of first appearance (Python)."""
    seen: dict[tuple[object, ...], int] = {}
    return [seen.setdefault(row, len(seen)) for row in frame.rows()]


@pytest.mark.parametrize("hashes", ["polars", "colliding", "no words", "no views"])
@settings(max_examples=150, deadline=None)
@given(frame=laid_out_bids())
def test_distinct_codes_number_the_distinct_rows(frame: pl.DataFrame, hashes: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if hashes == "colliding":  # every pair of rows shares a hash: the exact fallback
            patch.setattr(_tideflow, "_row_hashes", lambda f: np.zeros(f.height, np.uint64))
        if hashes == "no words":  # the rows hashed without grouping them by their views
            patch.setattr(_tideflow, "_row_words", lambda f: None)
        if hashes == "no views":  # text handed to Arrow as offsets and bytes, not views
            patch.setattr(pl.CompatLevel, "newest", staticmethod(pl.CompatLevel.oldest))
        keys = frame.select("channel", "url")
        codes, firsts = distinct_codes(keys)
        expected = reference_codes(keys)
        assert codes.tolist() == expected
        assert firsts.tolist() == [expected.index(c) for c in range(len(set(expected)))]
        # and the queries stay exact on the fallback too
        assert_frame_equal(_channel_ids(frame), polars_plan("q21", frame))
        assert_frame_equal(_directories(frame), polars_plan("q22", frame))
