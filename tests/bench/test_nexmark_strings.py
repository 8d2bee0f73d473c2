"""q21 and q22's string work, done once per distinct value, equals the plain expressions."""

from __future__ import annotations

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


def polars_plan(query: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The query's Polars batch plan (the plain expressions on every row) over ``frame``."""
    return POLARS_QUERIES[query](SimpleNamespace(bid=frame.lazy())).collect()  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(bids())
def test_q22_directories_equal_the_split_of_every_row(frame: pl.DataFrame) -> None:
    assert_frame_equal(_directories(frame), polars_plan("q22", frame))


@settings(max_examples=300, deadline=None)
@given(bids())
def test_q21_channel_ids_equal_the_regex_on_every_row(frame: pl.DataFrame) -> None:
    assert_frame_equal(_channel_ids(frame), polars_plan("q21", frame))


@settings(max_examples=200, deadline=None)
@given(bids())
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


def reference_codes(frame: pl.DataFrame) -> list[int]:
    """Each row's number among the distinct rows, in order of first appearance (Python)."""
    seen: dict[tuple[object, ...], int] = {}
    return [seen.setdefault(row, len(seen)) for row in frame.rows()]


@pytest.mark.parametrize("hashes", ["polars", "colliding"])
@settings(max_examples=150, deadline=None)
@given(frame=bids())
def test_distinct_codes_number_the_distinct_rows(frame: pl.DataFrame, hashes: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if hashes == "colliding":  # every pair of rows shares a hash: the exact fallback
            patch.setattr(_tideflow, "_row_hashes", lambda f: np.zeros(f.height, np.uint64))
        keys = frame.select("channel", "url")
        codes, firsts = distinct_codes(keys)
        expected = reference_codes(keys)
        assert codes.tolist() == expected
        assert firsts.tolist() == [expected.index(c) for c in range(len(set(expected)))]
        # and the queries stay exact on the fallback too
        assert_frame_equal(_channel_ids(frame), polars_plan("q21", frame))
        assert_frame_equal(_directories(frame), polars_plan("q22", frame))
