"""The small-batch path of filter/select/with_columns gives exactly Polars' results."""

import dataclasses
import math
import sys
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import tideflow as tf
from tideflow.api._smallbatch import SMALL_BATCH_ROWS, compile_filter, compile_select
from tideflow.testing import CollectSink, TestingSource

INTS = [pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64]
FLOATS = [pl.Float32, pl.Float64]


def _int_values(dtype):
    info = np.iinfo(_np(dtype))
    edge = st.sampled_from([int(info.min), int(info.max), 0, 1, -1 if info.min < 0 else 2])
    return st.one_of(st.integers(int(info.min), int(info.max)), st.integers(-5, 5), edge).filter(
        lambda v: info.min <= v <= info.max
    )


def _np(dtype):
    return pl.Series([], dtype=dtype).to_numpy().dtype


FLOAT_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.1, 2.5, 1e300, float("nan")]),
    st.integers(-10, 10).map(float),
)


@st.composite
def frames(draw):
    """A frame with two integer, two float and one Boolean column (random dtypes, some nulls)."""
    n = draw(st.integers(1, 12))
    cols = {}
    for name in ("a", "b"):
        dtype = draw(st.sampled_from(INTS))
        vals = draw(st.lists(_int_values(dtype), min_size=n, max_size=n))
        cols[name] = pl.Series(name, vals, dtype=dtype)
    for name in ("f", "g"):
        dtype = draw(st.sampled_from(FLOATS))
        vals = draw(st.lists(FLOAT_VALUES, min_size=n, max_size=n))
        cols[name] = pl.Series(name, vals, dtype=pl.Float64).cast(dtype)
    cols["p"] = pl.Series("p", draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    cols["s"] = pl.Series("s", [f"r{i}" for i in range(n)])
    if draw(st.booleans()) and n > 1:  # nulls: the batch goes to Polars
        name = draw(st.sampled_from(["a", "f", "p"]))
        vals = cols[name].to_list()
        vals[draw(st.integers(0, n - 1))] = None
        cols[name] = pl.Series(name, vals, dtype=cols[name].dtype)
    return pl.DataFrame(list(cols.values()))


def _col(name):
    return pl.col(name)


def _lit(value):
    return pl.lit(value)


NUM_LEAVES = st.one_of(
    st.sampled_from(["a", "b", "f", "g"]).map(_col),
    st.integers(-300, 300).map(_lit),
    st.sampled_from([0.5, -2.0, 0.908, 1e10, 0.0]).map(_lit),
)
ARITH = ["__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__", "__mod__"]
COMPARE = ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"]
CASTS = [*INTS, *FLOATS]


def _apply(parts):
    left, method, right = parts
    return getattr(left, method)(right)


def _cast(parts):
    expr, dtype = parts
    return expr.cast(dtype)


def _negate(expr):
    return -expr


def _invert(expr):
    return ~expr


def _numeric(depth):
    """Numeric expressions of the subset, up to ``depth`` operators deep."""
    if depth == 0:
        return NUM_LEAVES
    sub = _numeric(depth - 1)
    return st.one_of(
        NUM_LEAVES,
        st.tuples(sub, st.sampled_from(ARITH), sub).map(_apply),
        sub.map(_negate),
        st.tuples(sub, st.sampled_from(CASTS)).map(_cast),
    )


NUMERIC = _numeric(3)


def _boolean(depth):
    """Boolean expressions: comparisons of numeric ones, combined by & | ^ ~."""
    leaves = st.one_of(
        st.just(pl.col("p")),
        st.booleans().map(_lit),
        st.tuples(NUMERIC, st.sampled_from(COMPARE), NUMERIC).map(_apply),
    )
    if depth == 0:
        return leaves
    sub = _boolean(depth - 1)
    return st.one_of(
        leaves,
        st.tuples(sub, st.sampled_from(["__and__", "__or__", "__xor__"]), sub).map(_apply),
        sub.map(_invert),
    )


BOOLEAN = _boolean(2)
ANY_EXPR = st.one_of(NUMERIC, BOOLEAN)


def _polars(fn):
    try:
        return fn()
    except pl.exceptions.PolarsError:
        return None


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(frames(), ANY_EXPR)
def test_select_matches_polars(df, expr):
    expr = expr.alias("out")
    step = compile_select([expr, "s"], {}, replace=False)
    expected = _polars(lambda: df.select(expr, "s"))
    got = step(df) if step is not None else None
    if got is not None:
        assert expected is not None
        assert_frame_equal(got, expected, check_exact=True)


@SETTINGS
@given(frames(), BOOLEAN)
def test_filter_matches_polars(df, pred):
    step = compile_filter(pred)
    expected = _polars(lambda: df.filter(pred))
    got = step(df) if step is not None else None
    if got is not None:
        assert expected is not None
        assert_frame_equal(got, expected, check_exact=True)


@SETTINGS
@given(frames(), NUMERIC, BOOLEAN)
def test_with_columns_matches_polars(df, num, flag):
    named = {"a": num, "new": flag}
    step = compile_select([], named, replace=True)
    expected = _polars(lambda: df.with_columns(**named))
    got = step(df) if step is not None else None
    if got is not None:
        assert expected is not None
        assert_frame_equal(got, expected, check_exact=True)


EXAMPLE = pl.DataFrame(
    {
        "a": pl.Series([5, -7, 246, 123], dtype=pl.Int64),
        "b": pl.Series([2, 3, -4, 5], dtype=pl.Int32),
        "f": [0.5, -1.5, 2.0, 1e9],
        "p": [True, False, True, True],
        "s": ["w", "x", "y", "z"],
    }
)

# Each operator of the subset, on values where NumPy takes it (no fallback).
COVERED = [
    pl.col("a") + pl.col("b"),
    pl.col("a") - 3,
    pl.col("b") * 0.908,
    pl.col("a") / pl.col("b"),
    pl.col("a") // pl.col("b"),
    pl.col("a") % 123,
    pl.col("f") // 0.3,
    pl.col("f") % 0.3,
    -pl.col("f"),
    pl.col("b").cast(pl.Int64),
    pl.col("b").cast(pl.Float64, strict=False),
    (pl.col("a") % 123 == 0) & pl.col("p"),
    (pl.col("a") >= pl.col("f")) | ~pl.col("p"),
    (pl.col("b") < 3) ^ (pl.col("f") != 2.0),
    pl.col("p") == pl.lit(True),
    pl.col("s"),
]


@pytest.mark.parametrize("expr", COVERED, ids=str)
def test_the_subset_takes_the_small_path(expr):
    step = compile_select([expr.alias("out")], {}, replace=False)
    assert step is not None
    got = step(EXAMPLE)
    assert got is not None
    assert_frame_equal(got, EXAMPLE.select(expr.alias("out")), check_exact=True)


def test_the_nexmark_expressions_take_the_small_path():
    """q1's and q2's steps (a Polars upgrade that changes the expression format fails here)."""
    bids = EXAMPLE.rename({"a": "auction", "b": "bidder", "f": "price"})
    q2 = compile_filter(pl.col("auction") % 123 == 0)
    assert q2 is not None
    assert_frame_equal(q2(bids), bids.filter(pl.col("auction") % 123 == 0))
    q1 = [pl.col("auction"), "bidder", (pl.col("price") * 0.908).alias("price")]
    step = compile_select(q1, {}, replace=False)
    assert step is not None
    assert_frame_equal(step(bids), bids.select(q1), check_exact=True)


@pytest.mark.parametrize(
    "expr",
    [
        pl.col("a").is_in([5]),
        pl.col("s").str.len_chars(),
        pl.col("a").abs(),
        pl.col("a") + pl.lit(1, dtype=pl.Int8),
        pl.lit(3),
        pl.all(),
        pl.col("^a$"),
        pl.col("a").sum(),
        pl.col("a").cast(pl.String),
        pl.when(pl.col("p")).then(1).otherwise(2),
    ],
    ids=str,
)
def test_expressions_outside_the_subset_compile_to_nothing(expr):
    assert compile_select([expr], {}, replace=False) is None


@pytest.mark.parametrize(
    ("frame", "expr"),
    [
        (EXAMPLE.with_columns(a=pl.Series([1, None, 3, 4])), pl.col("a") + 1),  # nulls
        (
            EXAMPLE.with_columns(b=pl.Series([1, 0, 1, 1], dtype=pl.Int32)),
            pl.col("a") % pl.col("b"),
        ),
        (
            EXAMPLE.with_columns(b=pl.Series([1, 0, 1, 1], dtype=pl.Int32)),
            pl.col("a") // pl.col("b"),
        ),
        (EXAMPLE.with_columns(f=pl.Series([1.0, math.nan, 0.0, 2.0])), pl.col("f") > 1.0),
        (
            EXAMPLE.with_columns(
                b=pl.Series([-1, 1, 1, 1], dtype=pl.Int64), a=pl.Series([-(2**63), 1, 2, 3])
            ),
            pl.col("a") // pl.col("b"),
        ),
        (EXAMPLE.with_columns(s=pl.lit("text")), pl.col("s") == "text"),
        (EXAMPLE.with_columns(b=pl.col("b").cast(pl.Int8)), pl.col("b").cast(pl.UInt8)),  # lossy
    ],
)
def test_values_numpy_treats_differently_go_to_polars(frame, expr):
    step = compile_select([expr.alias("out")], {}, replace=False)
    assert step is None or step(frame) is None


def test_duplicate_output_names_stay_polars_errors():
    assert compile_select(["a", pl.col("b").alias("a")], {}, replace=False) is None


def _bids(n, seed):
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "auction": rng.integers(0, 2000, n),
            "bidder": rng.integers(-50, 50, n).astype(np.int32),
            "price": rng.uniform(0, 1e4, n),
            "channel": [f"c{i % 7}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("batch_size", [3, SMALL_BATCH_ROWS + 1])
def test_a_flow_of_small_and_large_batches_equals_polars(workers, batch_size):
    bids = _bids(3000, 1)
    flow = tf.Dataflow("small")
    out = CollectSink()
    (
        flow.source(TestingSource(list(bids.iter_slices(batch_size)), schema=dict(bids.schema)))
        .filter((pl.col("auction") % 7 == 0) | (pl.col("bidder") < -40))
        .with_columns(eur=pl.col("price") * 0.908, half=pl.col("bidder") // 2)
        .select("auction", "eur", "half", "channel", odd=pl.col("auction") % 2 == 1)
        .sink(out)
    )
    assert tf.run(flow, workers=workers).completed
    expected = (
        bids.filter((pl.col("auction") % 7 == 0) | (pl.col("bidder") < -40))
        .with_columns(eur=pl.col("price") * 0.908, half=pl.col("bidder") // 2)
        .select("auction", "eur", "half", "channel", odd=pl.col("auction") % 2 == 1)
    )
    got = out.frame()
    assert got.schema == expected.schema
    assert sorted(got.rows()) == sorted(expected.rows())


def _timer_slack() -> int:
    import ctypes

    return int(ctypes.CDLL(None).prctl(30, 0, 0, 0, 0))  # PR_GET_TIMERSLACK


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timer slack is Linux's")
@pytest.mark.parametrize(("max_delay_ms", "fine"), [(0, True), (100, False)])
def test_the_latency_setting_wakes_the_worker_on_time(workers, max_delay_ms, fine):
    before = _timer_slack()
    flow = tf.Dataflow("slack")
    out = CollectSink()
    (
        flow.source(TestingSource([{"a": 1}, {"a": 2}]))
        .map_batches(lambda df: df.with_columns(slack=pl.lit(_timer_slack())), reads=["a"])
        .sink(out)
    )
    assert tf.run(flow, workers=workers, max_delay=timedelta(milliseconds=max_delay_ms)).completed
    slack = set(out.frame()["slack"].to_list())
    assert slack == ({1000} if fine else {before})
    assert _timer_slack() == before


class _Broken:
    """A small-batch path with a bug."""

    def __call__(self, frame):
        msg = "bug"
        raise IndexError(msg)


def test_a_failing_small_path_falls_back_to_polars(workers, caplog):
    bids = _bids(200, 2)
    flow = tf.Dataflow("broken")
    out = CollectSink()
    step = flow.source(TestingSource(list(bids.iter_slices(7)), schema=dict(bids.schema)))
    step = step.filter(pl.col("auction") % 3 == 0)
    step.node.spec = dataclasses.replace(step.node.spec, small=_Broken())
    step.sink(out)
    assert tf.run(flow, workers=workers).completed
    expected = bids.filter(pl.col("auction") % 3 == 0)
    assert sorted(out.frame().rows()) == sorted(expected.rows())
    if workers == 1:
        assert "the small-batch path failed" in caplog.text


@pytest.mark.parametrize(
    "expr",
    [
        pl.col("a") == -pl.lit(1),  # -1 is no u8: Polars compares to null
        pl.col("a") + (-pl.lit(1)),
        pl.col("a") < -pl.lit(300),
    ],
)
def test_a_constant_outside_the_column_type_gives_polars_result(expr):
    df = pl.DataFrame({"a": [0, 7]}, schema={"a": pl.UInt8})
    step = compile_select([expr.alias("new")], {}, replace=True)
    got = step(df) if step is not None else None
    expected = df.select(expr.alias("new"))
    assert got is None or got.equals(expected)


@pytest.mark.parametrize(
    "expr",
    [
        pl.col("a") + pl.lit(-1),  # computed in Int64: 2**63 does not fit, null in Polars
        pl.col("a") - pl.col("b"),
        pl.col("a") > pl.col("b"),
    ],
)
def test_a_column_outside_the_type_it_is_computed_in_gives_polars_result(expr):
    df = pl.DataFrame({"a": [0, 2**63], "b": [1, -1]}, schema={"a": pl.UInt64, "b": pl.Int64})
    step = compile_select([expr.alias("new")], {}, replace=True)
    got = step(df) if step is not None else None
    expected = df.select(expr.alias("new"))
    assert got is None or got.equals(expected)
