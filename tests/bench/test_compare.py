"""compare(): multiset equality with a float tolerance, loud diffs."""

from __future__ import annotations

import polars as pl
import pytest

from tideflow.bench.nexmark._compare import ResultMismatchError, check, compare

REF = pl.DataFrame(
    {"auction": [1, 2, 2, 3], "price": [1.5, 2.0, 2.0, 3.25], "who": ["a", "b", "b", "c"]}
)


def test_equal_multisets_in_any_order_pass() -> None:
    compare(REF.reverse(), REF)
    compare(REF.with_columns(pl.col("auction").cast(pl.Int32)), REF)


def test_floats_within_tolerance_pass_and_beyond_fail() -> None:
    compare(REF.with_columns(pl.col("price") * (1 + 1e-12)), REF)
    with pytest.raises(ResultMismatchError, match="1 distinct rows in excess, 1 missing"):
        compare(
            REF.with_columns(
                pl.when(pl.col("auction") == 3).then(3.26).otherwise(pl.col("price")).alias("price")
            ),
            REF,
        )


def test_a_changed_row_is_detected_with_a_diff_summary() -> None:
    changed = REF.with_columns(
        pl.when(pl.col("auction") == 1).then(pl.lit("z")).otherwise(pl.col("who")).alias("who")
    )
    with pytest.raises(ResultMismatchError) as info:
        compare(changed, REF, label="q9 on test")
    text = str(info.value)
    assert text.startswith("q9 on test differs from the reference: 4 rows, expected 4")
    assert "in excess" in text and "missing" in text
    assert "┆ z " in text and "┆ a " in text  # the changed row and the one it replaced


def test_duplicates_count() -> None:
    with pytest.raises(ResultMismatchError, match="3 rows, expected 4"):
        compare(REF.unique(), REF)


def test_column_names_must_match() -> None:
    with pytest.raises(ResultMismatchError, match="columns"):
        compare(REF.rename({"who": "name"}), REF)


def test_q12_is_compared_on_totals_per_bidder() -> None:
    windows = pl.DataFrame(
        {
            "bidder": [1, 1, 2],
            "bid_count": [2, 3, 4],
            "window_start": [0, 10, 0],
            "window_end": [10, 20, 10],
        }
    )
    check("q12", windows, pl.DataFrame({"bidder": [1, 2], "bid_count": [5, 4]}), label="q12")
    with pytest.raises(ResultMismatchError):
        check("q12", windows, pl.DataFrame({"bidder": [1, 2], "bid_count": [4, 4]}), label="q12")
