"""Kafka connector settings, formats and masking (no broker needed)."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors import kafka
from tideflow.connectors._kafka_config import client_config, env_config, masked
from tideflow.connectors._kafka_formats import JsonFormat, TextFormat, decode_utf8
from tideflow.connectors._kafka_sink import encode_values


def test_unknown_choices_are_config_errors() -> None:
    with pytest.raises(tf.ConfigError, match="unknown start='middle'"):
        kafka.follow_kafka("t", bootstrap="x:1", start="middle")  # type: ignore[arg-type]
    with pytest.raises(tf.ConfigError, match="unknown format='xml'"):
        kafka.scan_kafka("t", bootstrap="x:1", format="xml")  # type: ignore[arg-type]
    with pytest.raises(tf.ConfigError, match="no time zone"):
        kafka.follow_kafka("t", bootstrap="x:1", start=datetime(2024, 1, 1))
    with pytest.raises(tf.ConfigError, match="not a valid Kafka topic name"):
        kafka.sink_kafka("bad topic!", bootstrap="x:1")
    with pytest.raises(tf.ConfigError, match="clash with the Kafka columns"):
        kafka.follow_kafka("t", bootstrap="x:1", schema={"offset": pl.Int64})
    with pytest.raises(tf.ConfigError, match=r"enable\.auto\.commit must stay off"):
        kafka.follow_kafka("t", bootstrap="x:1", config={"enable.auto.commit": True})


def test_schema_is_known_before_reading() -> None:
    src = kafka.follow_kafka("t", bootstrap="x:1", format="bytes", key_format="bytes")
    assert src.schema() == {
        "key": pl.Binary(),
        "value": pl.Binary(),
        "topic": pl.String(),
        "partition": pl.Int32(),
        "offset": pl.Int64(),
        "timestamp": pl.Datetime("ms", "UTC"),
    }
    assert kafka.follow_kafka("t", bootstrap="x:1").schema() is None  # json, inferred


def test_environment_and_config_merge_and_secrets_are_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDEFLOW_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("TIDEFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TIDEFLOW_KAFKA_BOOTSTRAP", "ignored:1")
    assert env_config() == {"sasl.password": "hunter2", "security.protocol": "SASL_SSL"}
    conf = client_config("s", "b:9092", {"linger.ms": 5}, {"security.protocol": "SSL"})
    assert conf["security.protocol"] == "SSL"  # explicit config wins over the environment
    assert conf["sasl.password"] == "hunter2"
    assert conf["bootstrap.servers"] == "b:9092"
    shown = masked(conf)
    assert shown["sasl.password"] == "***"
    assert "hunter2" not in repr(shown)
    with pytest.raises(tf.ConfigError, match="tracks offsets itself"):
        client_config("s", "b:1", {}, {"group.id": "x"}, forced={"group.id": "y"})


def test_no_bootstrap_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEFLOW_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(tf.ConfigError, match="no Kafka bootstrap address"):
        client_config("s", "", {}, None)


def test_text_format_sends_invalid_utf8_to_errors() -> None:
    out = TextFormat().deserialize(pl.Series([b"a", b"\xc3(", b"c"], dtype=pl.Binary))
    assert out.data["value"].to_list() == ["a", "c"]
    assert out.errors == {1: "value is not valid UTF-8"}
    assert decode_utf8(pl.Series([b"x", None], dtype=pl.Binary))[0].to_list() == ["x", None]


def test_json_format_vectorized_and_per_value_fallback() -> None:
    schema = {"n": pl.Int64(), "s": pl.String()}
    good = pl.Series([b'{"n": 1, "s": "a"}', b'{"n": 2}'], dtype=pl.Binary)
    out = JsonFormat(tuple(schema.items())).deserialize(good)
    assert out.errors == {}
    assert out.data.rows() == [(1, "a"), (2, None)]
    mixed = pl.Series(
        [b'{"n": 1}', b"{oops", b'{"n": "x"}', b"[1]", None, b'{"n": 6}'], dtype=pl.Binary
    )
    out = JsonFormat(tuple(schema.items())).deserialize(mixed)
    assert out.data["n"].to_list() == [1, 6]
    assert sorted(out.errors) == [1, 2, 3, 4]
    assert out.errors[1].startswith("invalid JSON")
    assert "schema" in out.errors[2]
    assert "expected a JSON object" in out.errors[3]
    assert "tombstone" in out.errors[4]


def test_json_format_infers_without_schema() -> None:
    out = JsonFormat().deserialize(pl.Series([b'{"a": 1.5, "b": true}'], dtype=pl.Binary))
    assert out.data.schema == pl.Schema({"a": pl.Float64(), "b": pl.Boolean()})


def test_sink_encodes_rows_as_json_or_a_column() -> None:
    df = pl.DataFrame({"k": ["a", None], "n": [1, 2], "raw": [b"\x00", b"\x01"]})
    assert encode_values(df.select("k", "n"), "json") == [b'{"k":"a","n":1}', b'{"k":null,"n":2}']
    assert encode_values(df, "n") == [b"1", b"2"]
    assert encode_values(df, "raw") == [b"\x00", b"\x01"]
    assert encode_values(df, "k") == [b"a", None]


def test_deserializer_protocol_is_accepted_as_format() -> None:
    class Upper:
        def schema(self) -> dict[str, pl.DataType]:
            return {"word": pl.String()}

        def deserialize(self, values: pl.Series) -> kafka.Decoded:
            return kafka.Decoded(pl.DataFrame({"word": values.cast(pl.String).str.to_uppercase()}))

    src = kafka.follow_kafka("t", bootstrap="x:1", format=Upper())
    assert src.schema() is not None and "word" in src.schema()  # type: ignore[operator]
    with pytest.raises(tf.ConfigError, match="Deserializer"):
        kafka.follow_kafka("t", bootstrap="x:1", format=object())  # type: ignore[arg-type]


def test_records_on_an_unknown_partition_are_sent_again_not_failed() -> None:
    """Right after a broker restart a partition can be missing from the client's metadata."""
    import confluent_kafka as ck

    from tideflow.connectors import kafka
    from tideflow.connectors._base import SinkContext

    w = kafka.sink_kafka("t", bootstrap="127.0.0.1:1", value="v").build(SinkContext("out", 0, 1))

    class Msg:
        def value(self):
            return b"1"

        def key(self):
            return None

        def topic(self):
            return "t"

        def partition(self):
            return 1

    w._on_delivery(ck.KafkaError(ck.KafkaError._UNKNOWN_PARTITION), Msg())
    assert w._failed == 0 and w._retry == [(b"1", None)]
    w._on_delivery(ck.KafkaError(ck.KafkaError.MSG_SIZE_TOO_LARGE), Msg())
    assert w._failed == 1
    w._producer.purge()


def test_stale_metadata_after_a_broker_restart_is_retried() -> None:
    from confluent_kafka import KafkaError

    from tideflow.connectors._kafka_source import metadata_retriable

    for code in (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART):
        assert metadata_retriable(KafkaError(code))
    assert metadata_retriable(KafkaError(KafkaError.LEADER_NOT_AVAILABLE))
    assert not metadata_retriable(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not metadata_retriable(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED))
    assert not metadata_retriable(ValueError("not a Kafka error"))
