"""The key index of regular joins (``KeyedRows``) against a brute-force list of rows.

Random sequences of appends (of random sizes, so segments merge in every pattern), probes and
removals, with one integer key (exact codes: a compact range indexed by direct address, a
sparse one by sorted segments, and a range that turns sparse midway; short and long chains of
rows per key), one string key and two keys (hashed codes,
matches confirmed), two integer keys (packed codes; values that do not fit a packing, negative
or above 2**31, are hashed and confirmed), nulls included: every probe must return exactly the pairs a nested loop
over the live rows finds, and ``live()`` the live rows in arrival order.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow.runtime import _keyindex
from tideflow.runtime._keyindex import (
    KeyedRows,
    codes_exact,
    key_codes,
    stable_argsort,
    stable_lexsort,
)

key_value = st.one_of(st.none(), st.integers(0, 6))
step = st.one_of(
    st.tuples(st.just("append"), st.lists(st.tuples(key_value, key_value), max_size=9)),
    st.tuples(st.just("probe"), st.lists(st.tuples(key_value, key_value), max_size=6)),
    st.tuples(st.just("remove"), st.lists(st.tuples(key_value, key_value), max_size=4)),
)
LAYOUTS = {
    "int": (["a"], {"a": pl.Int64}),
    "int32": (["a"], {"a": pl.Int32}),
    "int_far": (["a"], {"a": pl.Int64}),
    "int_jump": (["a"], {"a": pl.Int64}),
    "str": (["a"], {"a": pl.String}),
    "two": (["a", "b"], {"a": pl.Int64, "b": pl.String}),
    "ints": (["a", "b"], {"a": pl.Int32, "b": pl.Int64}),
}
#: Second key values of the "ints" layout: packed, and not (negative, too large for 31 bits).
INT_B = [0, 5, -2, 2**31, 2**31 - 1, 2**33 + 5, 2**20 + 5]


def int_key(a: int, layout: str) -> int:
    """The "a" value of a layout: 0-6 (compact), spread 2**40 apart (sparse from the start),
    or compact but for 6, far above (the range turns sparse when a 6 arrives), negative
    values included."""
    if layout == "int_far":
        return (a - 3) * 2**40
    if layout == "int_jump":
        return a - 2 if a < 6 else 2**45
    return a


def frame(pairs: list[tuple[Any, Any]], layout: str, first_id: int = 0) -> pl.DataFrame:
    keys, schema = LAYOUTS[layout]
    cols: dict[str, list[Any]] = {
        "a": [
            None if a is None else f"k{a}" if schema["a"] == pl.String else int_key(a, layout)
            for a, _ in pairs
        ]
    }
    if "b" in keys and schema["b"] == pl.String:
        cols["b"] = [None if b is None else f"v{b % 3}" for _, b in pairs]
    elif "b" in keys:
        cols["b"] = [None if b is None else INT_B[b] for _, b in pairs]
    cols["id"] = list(range(first_id, first_id + len(pairs)))
    return pl.DataFrame(cols, schema={**schema, "id": pl.Int64})


def key_of(
    row: dict[str, Any], keys: list[str], nulls_equal: bool = False
) -> tuple[Any, ...] | None:
    values = tuple(row[k] for k in keys)
    return None if not nulls_equal and any(v is None for v in values) else values


@pytest.mark.parametrize("nulls_equal", [False, True])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(step, min_size=1, max_size=25),
    since=st.integers(0, 40),
    contiguous=st.booleans(),
    chains=st.sampled_from([2, 32]),
)
def test_keyed_rows_equal_a_nested_loop(
    layout: str, nulls_equal: bool, steps: list[Any], since: int, contiguous: bool, chains: int
) -> None:
    # chains: the longest chain of rows per key the direct index follows (2: a store with a
    # key of three rows goes to the sorted segments).
    with mock.patch.object(_keyindex, "_MOST_PER_KEY", chains):
        check_against_nested_loop(layout, nulls_equal, steps, since, contiguous)


def check_against_nested_loop(
    layout: str, nulls_equal: bool, steps: list[Any], since: int, contiguous: bool
) -> None:
    # With nulls_equal (top_n's grouping) a null is a key value; without (joins) it never
    # matches. Probes gather every column, or only "id" (with the keys) when nulls are equal.
    # With contiguous keys only, merged segments keep the other columns in pieces.
    keys, _ = LAYOUTS[layout]
    index = KeyedRows(keys, nulls_equal=nulls_equal, contiguous=keys if contiguous else None)
    live: list[dict[str, Any]] = []  # the reference: rows in arrival order
    next_id = 0
    for kind, pairs in steps:
        batch = frame(pairs, layout, first_id=10_000)
        want = Counter(
            (i, row["id"])
            for i, probe in enumerate(batch.iter_rows(named=True))
            for row in live
            if key_of(probe, keys, nulls_equal) is not None
            and key_of(probe, keys, nulls_equal) == key_of(row, keys, nulls_equal)
        )
        columns = ["id"] if nulls_equal else None
        probe_rows, found, positions = index.probe(batch, columns)
        assert len(probe_rows) == found.height == len(positions)
        if columns and found.width:
            assert found.columns == [*keys, "id"]
        ids = found["id"].to_list() if found.height else []
        got = Counter(zip(probe_rows.tolist(), ids, strict=True))
        assert got == want
        if kind == "append":
            rows = frame(pairs, layout, first_id=next_id)
            next_id += len(pairs)
            index.append(rows)
            live.extend(rows.iter_rows(named=True))
        elif kind == "remove":
            index.remove(positions)
            gone = {i for _, i in want}
            live = [r for r in live if r["id"] not in gone]
        assert index.height == len(live)
        got_live = index.live()["id"].to_list() if index.segments else []
        assert got_live == [r["id"] for r in live]
        # Rows from a position on, and how a compaction moves that position.
        cut = min(since, index.size)
        later = index.live_since(cut)
        later_ids = later["id"].to_list() if later.width else []
        assert later_ids == got_live[index.live_before(cut) :]
    moved = index.live_before(cut)
    index.compact()
    after = index.live_since(moved)
    assert (after["id"].to_list() if after.width else []) == later_ids


def test_probes_touch_few_segments_as_the_buffer_grows() -> None:
    index = KeyedRows(["a"])
    for i in range(200):
        index.append(pl.DataFrame({"a": np.arange(i * 50, (i + 1) * 50)}))
    assert len(index.segments) <= 2 * int(np.log2(200)) + 1  # merged like an LSM tree
    probe_rows, found, _ = index.probe(pl.DataFrame({"a": [7, 9_999, 10_000]}))
    assert sorted(found["a"].to_list()) == [7, 9_999] and sorted(probe_rows.tolist()) == [0, 1]


def test_restore_indexes_the_rows_again() -> None:
    index = KeyedRows(["a"])
    index.append(pl.DataFrame({"a": [1, 2, 3], "v": ["x", "y", "z"]}))
    index.remove(index.probe(pl.DataFrame({"a": [2]}))[2])
    again = KeyedRows(["a"])
    again.restore(index.live())
    assert again.live()["v"].to_list() == ["x", "z"]
    assert again.probe(pl.DataFrame({"a": [3]}))[1]["v"].to_list() == ["z"]


def test_a_null_key_and_the_smallest_integer_are_different_keys() -> None:
    # With nulls_equal a null integer key has the code of the smallest int64: confirmed.
    low = int(np.iinfo(np.int64).min)
    index = KeyedRows(["a"], nulls_equal=True)
    index.append(pl.DataFrame({"a": [None, low, 3], "v": ["null", "low", "three"]}))
    for key, want in ((None, ["null"]), (low, ["low"]), (3, ["three"])):
        found = index.probe(pl.DataFrame({"a": [key]}, schema={"a": pl.Int64}))[1]
        assert found["v"].to_list() == want


def test_packed_keys_are_exact_and_others_never_equal_them() -> None:
    # Two integer keys: packed codes (no confirmation) for values that fit, and the rows that
    # do not fit get hashed codes with the sign bit, never equal to a packed one.
    frame = pl.DataFrame(
        {"a": [1, 1, 2**31, -1, None, 3], "b": [2, 2, 0, 5, 1, 2**31 - 1]},
        schema={"a": pl.Int64, "b": pl.UInt32},
    )
    codes, valid, kind = key_codes(frame, ["a", "b"])
    assert kind == "packed" and valid.tolist() == [True, True, True, True, False, True]
    assert codes[0] == codes[1] == (1 << 31) | 2 and codes[5] == (3 << 31) | (2**31 - 1)
    assert (codes[[2, 3]] < 0).all() and codes_exact(codes[[0, 1, 5]], kind)
    assert not codes_exact(codes[valid], kind)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3), max_size=60), st.sampled_from([1, 2**14, 2**40, 2**60]))
def test_stable_argsort_equals_numpy_s(values: list[int], scale: int) -> None:
    # Ranges below 2**16 take the 16-bit radix sort, larger ones the packed (value, position)
    # sort, 2**60 apart the two quick sorts.
    array = np.asarray(values, np.int64) * scale
    assert stable_argsort(array).tolist() == np.argsort(array, kind="stable").tolist()


def test_compact_integer_keys_are_indexed_by_direct_address() -> None:
    # Auction-like ids: direct; a far key makes the range sparse (sorted segments, same
    # answers).
    index = KeyedRows(["a"])
    for i in range(20):
        index.append(pl.DataFrame({"a": np.arange(i * 50, (i + 1) * 50), "v": i}))
    assert index.direct is not None and index.direct.depth == 1
    index.append(pl.DataFrame({"a": [3, 3], "v": [20, 21]}))  # a chain of three rows for 3
    assert index.direct is not None and index.direct.depth == 3
    probe_rows, found, _ = index.probe(pl.DataFrame({"a": [999, 3, -1]}))
    pairs = sorted(zip(probe_rows.tolist(), found["v"].to_list(), strict=True))
    assert pairs == [(0, 19), (1, 0), (1, 20), (1, 21)]
    index.append(pl.DataFrame({"a": [2**50], "v": [22]}))
    assert index.direct is None and not index.direct_ok
    probe_rows, found, _ = index.probe(pl.DataFrame({"a": [999, 3, 2**50]}))
    assert sorted(zip(probe_rows.tolist(), found["v"].to_list(), strict=True)) == [
        (0, 19),
        (1, 0),
        (1, 20),
        (1, 21),
        (2, 22),
    ]
    # It stays with the sorted segments (its rows would leave again); a new store is direct.
    index.restore(index.live().filter(pl.col("a") < 2**50))
    assert index.direct is None
    again = KeyedRows(["a"])
    again.restore(index.live())
    assert again.direct is not None
    assert again.probe(pl.DataFrame({"a": [3]}))[1]["v"].to_list() == [0, 20, 21]


@pytest.mark.parametrize("nulls_equal", [False, True])
def test_direct_and_sorted_probes_return_the_same_pairs_in_the_same_order(
    nulls_equal: bool,
) -> None:
    # The same rows, compact keys (direct) and the same keys spread out (sorted segments):
    # equal pairs, in the same order (by segment, then probe row, then position).
    rng = np.random.default_rng(7)
    direct, spread = (
        KeyedRows(["a"], nulls_equal=nulls_equal),
        KeyedRows(["a"], nulls_equal=nulls_equal),
    )
    for size in rng.integers(1, 200, 30):
        keys = rng.integers(0, 300, size)
        direct.append(pl.DataFrame({"a": keys, "v": np.arange(size)}))
        spread.append(pl.DataFrame({"a": keys * 2**40, "v": np.arange(size)}))
        probe = rng.integers(0, 320, 100)
        one = direct.probe(pl.DataFrame({"a": probe}))
        two = spread.probe(pl.DataFrame({"a": probe * 2**40}))
        assert one[0].tolist() == two[0].tolist() and one[2].tolist() == two[2].tolist()
        assert one[1]["v"].to_list() == two[1]["v"].to_list()
        gone = one[2][rng.random(one[2].size) < 0.3]
        direct.remove(gone)
        spread.remove(gone)
    assert direct.direct is not None and spread.direct is None


#: Column kinds of stable_lexsort's property test: dtype and value scale. Small ranges pack,
#: 2**40 apart two columns pack and a third does not, 2**61 apart none do; unsigned 64-bit
#: columns are never packed; "rising" columns are in order along the rows (dropped),
#: "falling" ones in reverse order (lexsort as it is when the first column is one).
LEX_KINDS = {
    "small": (np.int64, 1),
    "wide": (np.int64, 2**40),
    "huge": (np.int64, 2**61),
    "int32": (np.int32, 1000),
    "uint8": (np.uint8, 1),
    "uint64": (np.uint64, 2**62),
}


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 40).flatmap(
        lambda n: st.lists(
            st.tuples(
                st.sampled_from([*LEX_KINDS, "rising", "falling"]),
                st.lists(st.integers(0, 3), min_size=n, max_size=n),
            ),
            min_size=1,
            max_size=4,
        )
    )
)
def test_stable_lexsort_equals_numpy_s_lexsort(columns: list[tuple[str, list[int]]]) -> None:
    arrays = []
    for kind, values in columns:
        if kind in ("rising", "falling"):  # in order along the rows (a tie breaker), or reversed
            rising = np.cumsum(np.asarray(values, np.int64)) - 5
            arrays.append(rising if kind == "rising" else ~rising)
            continue
        dtype, scale = LEX_KINDS[kind]
        signed = np.dtype(dtype).kind == "i"
        base = np.asarray(values, np.int64) - (1 if signed else 0)
        arrays.append((base.astype(dtype) * dtype(scale)).astype(dtype))
    want = np.lexsort(arrays[::-1]).tolist()
    assert stable_lexsort(arrays).tolist() == want
