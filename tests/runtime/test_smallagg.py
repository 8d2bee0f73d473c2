"""The combiner's small-batch partials (NumPy) against Polars' group-by of the same batch: same
columns, dtypes and rows for every aggregation and dtype the path takes, and no answer (the
caller runs Polars) where it would not be exact."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow.api._aggs import AggSpec
from tideflow.runtime._smallagg import SmallPartials
from tideflow.runtime._windowing import partial_exprs

INTS = [pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64]
TIMES = [pl.Datetime("us", "UTC"), pl.Datetime("ms"), pl.Duration("us"), pl.Date]
SPECS = [
    AggSpec("count", None, "n"),
    AggSpec("count_non_null", "v", "c"),
    AggSpec("sum", "v", "s"),
    AggSpec("mean", "v", "m"),
    AggSpec("min", "v", "lo"),
    AggSpec("max", "v", "hi"),
]


def _column(values: list[int], dtype: Any) -> pl.Series:
    if dtype in INTS:
        info = np.iinfo(pl.Series([], dtype=dtype).to_numpy().dtype)
        return pl.Series("v", [min(max(v, info.min), info.max) for v in values], dtype=dtype)
    if dtype == pl.Date:
        return pl.Series("v", [v % 100_000 for v in values], dtype=pl.Int32).cast(pl.Date)
    return pl.Series("v", values, dtype=pl.Int64).cast(dtype)


def _polars(rows: pl.DataFrame, pane: np.ndarray, keys: list[str], exprs: list[pl.Expr]) -> Any:
    by = [*keys, "__pane"]
    return rows.with_columns(pl.Series("__pane", pane)).group_by(by).agg(exprs).sort(by)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 40),
    two_keys=st.booleans(),
    key_dtype=st.sampled_from(INTS),
    dtype=st.sampled_from(INTS + TIMES),
    specs=st.lists(st.sampled_from(SPECS), min_size=1, max_size=4, unique=True),
)
def test_partials_equal_polars_group_by(
    data: st.DataObject,
    n: int,
    two_keys: bool,
    key_dtype: Any,
    dtype: Any,
    specs: list[AggSpec],
) -> None:
    big = st.integers(-(2**62), 2**62)
    values = data.draw(st.lists(big | st.integers(-3, 3), min_size=n, max_size=n))
    keys = {"k": data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))}
    if two_keys:
        keys["j"] = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    pane = np.array(data.draw(st.lists(st.sampled_from([0, 10, 20]), min_size=n, max_size=n)))
    frame = pl.DataFrame({k: pl.Series(k, v).cast(key_dtype) for k, v in keys.items()})
    rows = frame.with_columns(_column(values, dtype))
    exprs = partial_exprs(specs)
    small = SmallPartials(list(keys), tuple(specs), exprs)
    got = small.partials(rows, pane)
    taken = all(s.kind in ("count", "count_non_null", "min", "max") or dtype in INTS for s in specs)
    if not taken:
        assert got is None
        return
    assert got is not None
    want = _polars(rows, pane, list(keys), exprs)
    assert got.schema == want.schema
    assert got.sort([*keys, "__pane"]).equals(want)


def test_nulls_and_other_keys_go_to_polars() -> None:
    specs = (AggSpec("count", None, "n"), AggSpec("sum", "v", "s"))
    small = SmallPartials(["k"], specs, partial_exprs(specs))
    pane = np.zeros(2, dtype=np.int64)
    assert small.partials(pl.DataFrame({"k": [1, 2], "v": [1, None]}), pane) is None
    assert small.partials(pl.DataFrame({"k": [1, None], "v": [1, 2]}), pane) is None
    assert small.partials(pl.DataFrame({"k": ["a", "b"], "v": [1, 2]}), pane) is None
    assert small.partials(pl.DataFrame({"k": [1, 2], "v": [1.5, 2.0]}), pane) is None
    assert small.partials(pl.DataFrame({"k": [1, 2]}), pane) is None  # Polars names the column
    ok = small.partials(pl.DataFrame({"k": [2, 1, 2], "v": [1, 2, 3]}), np.zeros(3, np.int64))
    assert ok is not None and ok.rows() == [(1, 0, 1, 2), (2, 0, 2, 4)]


def test_other_aggregations_are_not_taken() -> None:
    specs = (AggSpec("n_unique", "v", "u"),)
    small = SmallPartials(["k"], specs, partial_exprs(specs))
    rows = pl.DataFrame({"k": [1], "v": [datetime(2026, 1, 1, tzinfo=UTC)]})
    assert small.partials(rows, np.zeros(1, np.int64)) is None


ACC_SPECS = [s for s in SPECS if s.kind != "mean"]


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    two_keys=st.booleans(),
    dtype=st.sampled_from([pl.Int32, pl.Int64, pl.UInt16, pl.Datetime("us", "UTC")]),
    specs=st.lists(st.sampled_from(ACC_SPECS), min_size=1, max_size=3, unique=True),
    select=st.booleans(),
)
def test_accumulator_equals_polars_merge_and_finals(
    data: st.DataObject, two_keys: bool, dtype: Any, specs: list[AggSpec], select: bool
) -> None:
    """Partial frames merged into a WindowAccumulator one by one give the frame Polars' merge
    of all of them gives, and the finals (with a selection of the largest) of the window's
    columnar firing."""
    from tideflow.runtime._smallagg import WindowAccumulator, partial_columns
    from tideflow.runtime._windowing import _largest, final_exprs, merge_exprs

    if dtype.is_temporal():  # no sums of times
        specs = [s for s in specs if s.kind != "sum"] or [SPECS[0]]
    keys = ["k", "j"] if two_keys else ["k"]
    small = SmallPartials(keys, tuple(specs), partial_exprs(specs))
    frames = []
    for _ in range(data.draw(st.integers(1, 6))):
        n = data.draw(st.integers(1, 12))
        cols = {c: data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)) for c in keys}
        values = data.draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n))
        rows = pl.DataFrame(cols).with_columns(_column(values, dtype))
        part = small.partials(rows, np.zeros(n, dtype=np.int64))
        assert part is not None
        frames.append(part.drop("__pane"))
    acc = WindowAccumulator(keys, partial_columns(tuple(specs)), list(frames[0].schema.values()))
    for f in frames:
        acc.add(*acc.rows(f, acc.keys, acc.columns))
    merged = pl.concat(frames).group_by(keys).agg(merge_exprs(specs))
    assert acc.frame().sort(keys).equals(merged.sort(keys))
    top = specs[0].name if select else None
    want = merged.select(*keys, *final_exprs(specs))
    if top is not None:
        want = _largest(want, top)
    got_keys, got_values = acc.finals(tuple(specs), top)
    got = pl.DataFrame([*got_keys, *got_values])
    assert got.schema == want.schema
    assert got.sort(keys).equals(want.sort(keys))
