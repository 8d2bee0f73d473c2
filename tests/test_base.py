import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors._base import DEAD_LETTER_SCHEMA, dead_letters


def test_error_tree_roots_at_tideflow_error():
    for cls in (tf.ConfigError, tf.DataError, tf.ConnectorError, tf.StateError, tf.JobError):
        assert issubclass(cls, tf.TideflowError)
    with pytest.raises(ValueError):
        raise tf.ConfigError("config errors are also ValueErrors")


def test_dead_letters_have_the_documented_schema():
    dl = dead_letters("read", ["a.csv:3", "a.csv:9"], ["bad int", "missing field"], ["x", None])
    assert dl.schema == pl.Schema(DEAD_LETTER_SCHEMA)
    assert dl["origin"].to_list() == ["a.csv:3", "a.csv:9"]
    assert dl["raw"].to_list() == ["x", None]
