import random

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow.testing import ABORT, PAUSE, CollectSink, TestingAbort, TestingSource

ROWS = [
    {"id": i, "word": w, "amount": a}
    for i, (w, a) in enumerate(
        [("apple", 5), ("pear", 120), ("fig", 7), ("plum", 300), ("kiwi", 1), ("lime", 101)]
    )
]


def run_collect(flow, workers, *sinks):
    result = tf.run(flow, workers=workers)
    assert result.completed
    return result


def test_vectorized_chain(workers):
    flow = tf.Dataflow("chain")
    out = CollectSink()
    (
        flow.source(TestingSource(ROWS, batch_size=2))
        .filter(pl.col("amount") > 5)
        .with_columns(double=pl.col("amount") * 2)
        .select("id", "word", "double")
        .rename({"double": "twice"})
        .drop("word")
        .sink(out)
    )
    run_collect(flow, workers)
    assert sorted(out.frame().rows()) == [(1, 240), (2, 14), (3, 600), (5, 202)]


def test_explode_and_map_batches(workers):
    flow = tf.Dataflow("explode")
    out = CollectSink()
    src = flow.source(TestingSource([{"line": "a b"}, {"line": "c"}, {"line": ""}]))
    words = src.select(pl.col("line").str.split(" ").alias("w")).explode("w")
    words.map_batches(lambda df: df.filter(pl.col("w") != "")).sink(out)
    run_collect(flow, workers)
    assert sorted(out.frame()["w"].to_list()) == ["a", "b", "c"]


def test_per_record_map_flat_map_filter(workers):
    flow = tf.Dataflow("records")
    out_map, out_flat, out_filter = CollectSink(), CollectSink(), CollectSink()
    src = flow.source(TestingSource(ROWS, batch_size=4))
    src.map(lambda r: {"id": r["id"], "len": len(r["word"])}).sink(out_map)
    src.flat_map(lambda r: [{"c": c} for c in r["word"][:2]]).sink(out_flat)
    src.filter(lambda r: r["word"].startswith("p")).sink(out_filter)
    run_collect(flow, workers)
    assert sorted(out_map.frame().rows()) == [(r["id"], len(r["word"])) for r in ROWS]
    assert sorted(out_flat.frame()["c"].to_list()) == sorted(c for r in ROWS for c in r["word"][:2])
    assert sorted(out_filter.frame()["word"].to_list()) == ["pear", "plum"]


def test_map_errors_become_dead_letters_and_the_job_goes_on(workers):
    flow = tf.Dataflow("errors")
    out, dead = CollectSink(), CollectSink()
    src = flow.source(TestingSource([{"x": 1}, {"x": 0}, {"x": 4}]))
    src.map(lambda r: {"inv": 1 / r["x"]}, name="invert").sink(out)
    flow.dead_letters.sink(dead)
    result = run_collect(flow, workers)
    assert sorted(out.frame()["inv"].to_list()) == [0.25, 1.0]
    d = dead.frame()
    assert d.height == 1
    assert d["step"][0] == "errors.invert"
    assert "ZeroDivisionError" in d["reason"][0]
    assert '"x": 0' in d["raw"][0]
    assert result.dead_letters == 1


def test_on_error_raise_stops_the_job_naming_the_step():
    flow = tf.Dataflow("strict")
    flow.source(TestingSource([{"x": 0}])).map(
        lambda r: {"inv": 1 / r["x"]}, on_error="raise", name="invert"
    ).sink(CollectSink())
    with pytest.raises(tf.JobError, match=r"strict\.invert"):
        tf.run(flow)


def test_vectorized_failure_isolates_bad_rows(workers):
    flow = tf.Dataflow("cast")
    out, dead = CollectSink(), CollectSink()
    src = flow.source(TestingSource([{"v": "1"}, {"v": "x"}, {"v": "3"}, {"v": "4"}], batch_size=4))
    src.with_columns(n=pl.col("v").cast(pl.Int64, strict=True), name="parse").sink(out)
    flow.dead_letters.sink(dead)
    run_collect(flow, workers)
    assert sorted(out.frame()["n"].to_list()) == [1, 3, 4]
    assert dead.frame()["raw"].to_list() == ['{"v": "x"}']


def test_union_and_split(workers):
    flow = tf.Dataflow("shape")
    a = flow.source(TestingSource([{"x": 1}, {"x": 20}]), name="a")
    b = flow.source(TestingSource([{"x": 300}, {"x": 4}]), name="b")
    parts = a.union(b).split(small=pl.col("x") < 10, mid=pl.col("x") < 100)
    small, mid, rest = CollectSink(), CollectSink(), CollectSink()
    parts.small.sink(small)
    parts.mid.sink(mid)
    parts.rest.sink(rest)
    run_collect(flow, workers)
    assert sorted(small.frame()["x"].to_list()) == [1, 4]
    assert sorted(mid.frame()["x"].to_list()) == [1, 4, 20]
    assert rest.frame()["x"].to_list() == [300]


def test_validate_routes_rule_breakers_to_dead_letters(workers):
    flow = tf.Dataflow("rules")
    out, dead = CollectSink(), CollectSink()
    rows = [
        {"card": "c1", "amount": 5.0},
        {"card": None, "amount": 3.0},
        {"card": "c2", "amount": -1.0},
    ]
    flow.source(TestingSource(rows)).validate(
        {
            "card is missing": pl.col("card").is_not_null(),
            "amount must be positive": pl.col("amount") > 0,
        }
    ).sink(out)
    flow.dead_letters.sink(dead)
    run_collect(flow, workers)
    assert out.frame()["card"].to_list() == ["c1"]
    assert sorted(dead.frame()["reason"].to_list()) == [
        "amount must be positive",
        "card is missing",
    ]


def test_default_dead_letter_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flow = tf.Dataflow("dlfile")
    flow.source(TestingSource([{"x": 0}, {"x": 1}])).map(lambda r: {"y": 1 // r["x"]}).sink(
        CollectSink()
    )
    result = tf.run(flow)
    assert result.dead_letter_path == tmp_path / "dlfile.dead-letters.jsonl"
    lines = pl.read_ndjson(result.dead_letter_path)
    assert "raised ZeroDivisionError" in lines["reason"][0]
    assert "test_stateless.py:" in lines["reason"][0]


def test_no_dead_letter_file_without_dead_letters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flow = tf.Dataflow("clean")
    flow.source(TestingSource([{"x": 1}])).sink(CollectSink())
    assert tf.run(flow).dead_letter_path is None
    assert not list(tmp_path.iterdir())


def test_unbounded_source_pause_marker_and_abort():
    flow = tf.Dataflow("abort")
    out = CollectSink()
    flow.source(TestingSource([{"x": 1}, PAUSE, {"x": 2}, ABORT], batch_size=1)).sink(out)
    with pytest.raises(tf.JobError, match="ABORT"):
        tf.run(flow, max_delay=__import__("datetime").timedelta(0))
    assert sorted(out.frame()["x"].to_list()) == [1, 2]


def test_testing_abort_is_a_runtime_error():
    assert issubclass(TestingAbort, RuntimeError)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(-50, 50), st.text("ab/", max_size=8) | st.none()),
        max_size=40,
    ),
    st.integers(1, 7),
)
def test_shared_subexpressions_give_polars_eager_results(workers, monkeypatch, rows, batch):
    # Steps whose columns share a subexpression may run through Polars' lazy engine (computed
    # once) after timing both paths on their first batches (every batch here, in process);
    # the reference is Polars' eager select/with_columns over all rows at once.
    monkeypatch.setattr("tideflow.api._dataflow._TRIAL_ROWS", 1)
    _check_shared_subexpressions(workers, rows, batch)


def test_shared_subexpressions_on_large_batches(workers):
    # Batches above the trial size: both paths are timed, then one is kept, in every worker.
    rng = random.Random(7)
    rows = [
        (rng.randint(-50, 50), rng.choice([None, "a/b", "ab/ba/b", "/", "b//a/bb", ""]))
        for _ in range(30_000)
    ]
    _check_shared_subexpressions(workers, rows, 5_000)


def _check_shared_subexpressions(workers, rows, batch):
    parts = pl.col("path").str.split("/")
    cond = (pl.col("n") * 3 > 10) | pl.col("path").is_null()
    selects = [parts.list.get(k, null_on_oob=True).alias(f"p{k}") for k in range(3)] + [
        "n",
        "path",
        cond.alias("c1"),
        (~cond).cast(pl.Int64).alias("c2"),
    ]
    derived = [
        pl.when(cond).then(pl.col("n")).alias("kept"),
        (cond.cast(pl.Int64) * pl.col("n")).alias("scaled"),
    ]
    records = [{"n": n, "path": p} for n, p in rows]
    frame = pl.DataFrame(records, schema={"n": pl.Int64, "path": pl.String})
    expected = frame.select(*selects).with_columns(*derived)
    flow = tf.Dataflow("cse")
    out = CollectSink()
    src = flow.source(TestingSource(records, batch_size=batch, schema=frame.schema))
    src.select(*selects).with_columns(*derived).sink(out)
    tf.run(flow, workers=workers)
    got = out.frame()
    key = list(expected.columns)
    if rows:
        assert (
            got.select(key).sort(key, nulls_last=True).equals(expected.sort(key, nulls_last=True))
        )
    else:
        assert got.height == 0


def test_shared_python_functions_run_as_often_as_in_polars_eager(monkeypatch):
    # A step calling a Python function is never timed both ways (that would call it twice).
    monkeypatch.setattr("tideflow.api._dataflow._TRIAL_ROWS", 1)
    calls = []

    def double(s: pl.Series) -> pl.Series:
        calls.append(s.len())
        return s * 2

    shared = pl.col("n").map_batches(double, return_dtype=pl.Int64)
    exprs = [(shared + 1).alias("a"), (shared * 3).alias("b")]
    records = [{"n": i} for i in range(5_000)]
    batches = [pl.DataFrame(records[i : i + 1_000]) for i in range(0, 5_000, 1_000)]
    expected = pl.concat([b.select(exprs) for b in batches])
    eager_calls, calls[:] = list(calls), []
    flow = tf.Dataflow("udf")
    out = CollectSink()
    flow.source(TestingSource(records, batch_size=1_000)).select(*exprs).sink(out)
    tf.run(flow)
    assert out.frame().sort("a").equals(expected.sort("a"))
    assert sum(calls) == sum(eager_calls)  # the build-time check on an empty frame adds 0 rows
