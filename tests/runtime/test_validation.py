"""Pipeline mistakes fail before any data moves, naming the step."""

import polars as pl
import pytest

import tideflow as tf
from tideflow.testing import CollectSink, TestingSource

SCHEMA = {"card": pl.String(), "amount": pl.Float64()}


def src(flow):
    return flow.source(TestingSource([], schema=SCHEMA), name="tx")


def test_unknown_column_in_filter_names_the_step_and_columns():
    flow = tf.Dataflow("fraud")
    with pytest.raises(
        tf.ConfigError, match=r"step 'fraud.big'.*input columns: \['card', 'amount'\]"
    ):
        src(flow).filter(pl.col("amont") > 100, name="big")


def test_unknown_key_column():
    flow = tf.Dataflow("fraud")
    with pytest.raises(tf.ConfigError, match=r"no column \['crd'\]"):
        src(flow).key_by("crd")


def test_unknown_aggregated_column():
    flow = tf.Dataflow("fraud")
    with pytest.raises(tf.ConfigError, match=r"step 'fraud.totals': no column \['amt'\]"):
        src(flow).key_by("card").agg(pl.col("amt").sum(), name="totals")


def test_aggregation_that_cannot_be_merged_is_refused():
    flow = tf.Dataflow("fraud")
    with pytest.raises(tf.ConfigError, match="cannot be computed incrementally"):
        src(flow).key_by("card").agg(pl.col("amount").median())


def test_bad_literal_setting():
    flow = tf.Dataflow("fraud")
    with pytest.raises(tf.ConfigError, match=r"emit='sometimes' is not one of"):
        src(flow).key_by("card").agg(pl.len(), emit="sometimes")  # type: ignore[arg-type]


def test_flow_without_sink_or_source():
    flow = tf.Dataflow("empty")
    with pytest.raises(tf.ConfigError, match="has no source"):
        tf.run(flow)
    src(flow)
    with pytest.raises(tf.ConfigError, match="has no sink"):
        tf.run(flow)


def test_duplicate_step_names_and_bad_names():
    flow = tf.Dataflow("f")
    src(flow)
    with pytest.raises(tf.ConfigError, match="used twice"):
        src(flow)
    with pytest.raises(tf.ConfigError, match="not a valid step name"):
        flow.source(TestingSource([]), name="has.dot")


def test_union_of_different_schemas():
    flow = tf.Dataflow("f")
    a = src(flow)
    b = flow.source(TestingSource([], schema={"x": pl.Int64()}), name="other")
    with pytest.raises(tf.ConfigError, match="same columns"):
        a.union(b)


def test_bad_run_settings():
    flow = tf.Dataflow("f")
    src(flow).sink(CollectSink())
    with pytest.raises(tf.ConfigError, match="workers must be"):
        tf.run(flow, workers=0)
    with pytest.raises(tf.ConfigError, match="batch_size"):
        tf.run(flow, batch_size=0)


def test_step_ids_are_hierarchical_with_scopes():
    flow = tf.Dataflow("fraud")
    with flow.scope("features"):
        s = src(flow).filter(pl.col("amount") > 0, name="positive")
    assert s.step_id == "fraud.features.positive"
    assert s.schema == SCHEMA
