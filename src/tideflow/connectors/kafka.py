"""Apache Kafka connectors (confluent-kafka): read topics as streams, write streams to topics.

Offsets are tracked by tideflow, not by Kafka's auto-commit: a reader's position is
``{"topic/partition": next_offset}``, stored by checkpoints and resumed from exactly. Security
settings (TLS, SASL) pass through ``config=`` to librdkafka, or come from ``TIDEFLOW_KAFKA_*``
environment variables (``TIDEFLOW_KAFKA_SASL_PASSWORD`` -> ``sasl.password``); secret values
never appear in logs or errors.

Start a broker for trying these out with ``scripts/services start kafka``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import polars as pl

from tideflow.connectors._kafka_config import masked
from tideflow.connectors._kafka_formats import Decoded, Deserializer, ValueFormat
from tideflow.connectors._kafka_sink import Delivery, KafkaSink
from tideflow.connectors._kafka_source import META_SCHEMA, KafkaSource, StartAt

__all__ = [
    "META_SCHEMA",
    "Decoded",
    "Delivery",
    "Deserializer",
    "KafkaSink",
    "KafkaSource",
    "StartAt",
    "ValueFormat",
    "follow_kafka",
    "masked",
    "scan_kafka",
    "sink_kafka",
]


def _source(
    topics: str | Sequence[str],
    bootstrap: str,
    group_id: str | None,
    start: StartAt | datetime,
    format: ValueFormat | Deserializer,
    schema: Mapping[str, pl.DataType] | None,
    config: Mapping[str, Any] | None,
    key_format: Literal["text", "bytes"],
    until_end: bool,
) -> KafkaSource:
    names = (topics,) if isinstance(topics, str) else tuple(topics)
    fields = None if schema is None else tuple(dict(schema).items())
    src = KafkaSource(
        names,
        bootstrap,
        group_id,
        start,
        format,
        fields,
        tuple(dict(config or {}).items()),
        until_end,
        key_format,
    )
    src.validate("kafka")
    return src


def follow_kafka(
    topics: str | Sequence[str],
    *,
    bootstrap: str,
    group_id: str | None = None,
    start: StartAt | datetime = "earliest",
    format: ValueFormat | Deserializer = "json",
    schema: Mapping[str, pl.DataType] | None = None,
    config: Mapping[str, Any] | None = None,
    key_format: Literal["text", "bytes"] = "text",
) -> KafkaSource:
    """Read Kafka topics as an unbounded stream.

    The partitions of all topics are split over the workers by index (worker ``i`` of ``n``
    reads partitions ``i, i+n, ...`` of the sorted list); each worker reads its partitions
    directly (no group rebalancing) and reports its offsets to checkpoints.

    Parameters
    ----------
    topics
        A topic name or several.
    bootstrap
        The brokers, ``"host:port[,host:port]"``.
    group_id
        The consumer group, used for ``start="committed"`` and to commit the offsets read when
        the job stops (default ``"tideflow-<step id>"``).
    start
        Where to begin when there is no checkpoint: ``"earliest"``, ``"latest"``, the group's
        ``"committed"`` offsets (earliest where none) or a timezone-aware ``datetime`` (the
        first record at or after it).
    format
        ``"json"`` (one object per message; fields become columns), ``"text"`` (UTF-8, a
        ``value`` column), ``"bytes"`` (a ``Binary`` ``value`` column) or a
        :class:`Deserializer` (the hook for Avro/Protobuf with a schema registry).
    schema
        With ``format="json"``: the fields and their types. Without it the types are inferred
        from the first batch and kept.
    config
        librdkafka settings passed through (TLS, SASL, fetch sizes...).
    key_format
        The ``key`` column as ``"text"`` (UTF-8) or ``"bytes"``.

    Returns
    -------
    KafkaSource
        Columns ``key``, the value column(s), ``topic``, ``partition``, ``offset`` and
        ``timestamp`` (the record's timestamp, UTC milliseconds). Messages that do not decode go
        to the dead letters with origin ``topic/partition/offset`` and the reason.

    Examples
    --------
    >>> src = follow_kafka("payments", bootstrap="127.0.0.1:19092",
    ...                    schema={"card": pl.String, "amount": pl.Float64})
    >>> src.bounded, list(src.schema())
    (False, ['key', 'card', 'amount', 'topic', 'partition', 'offset', 'timestamp'])
    """
    return _source(topics, bootstrap, group_id, start, format, schema, config, key_format, False)


def scan_kafka(
    topics: str | Sequence[str],
    *,
    bootstrap: str,
    group_id: str | None = None,
    start: StartAt | datetime = "earliest",
    format: ValueFormat | Deserializer = "json",
    schema: Mapping[str, pl.DataType] | None = None,
    config: Mapping[str, Any] | None = None,
    key_format: Literal["text", "bytes"] = "text",
) -> KafkaSource:
    """Read Kafka topics as a bounded input: up to the end offsets they had when the job started.

    Records produced after the start are left for the next run (backfills, tests). Parameters
    as :func:`follow_kafka`.

    Examples
    --------
    >>> src = scan_kafka(["a", "b"], bootstrap="127.0.0.1:19092", format="text")
    >>> src.bounded, src.schema()["value"]
    (True, String)
    """
    return _source(topics, bootstrap, group_id, start, format, schema, config, key_format, True)


def sink_kafka(
    topic: str,
    *,
    bootstrap: str,
    key: str | None = None,
    value: Literal["json"] | str = "json",
    config: Mapping[str, Any] | None = None,
    delivery: Delivery = "at-least-once",
    transactional_id: str | None = None,
    commit_topic: str | None = None,
) -> KafkaSink:
    """Write a stream to a Kafka topic.

    Each row becomes one message. Three delivery guarantees:

    - ``"at-least-once"`` (default, lowest latency): records are sent as they come; ``flush()``
      (before every checkpoint) and ``close()`` wait for the broker's acknowledgements and raise
      :class:`~tideflow.ConnectorError` if any record could not be delivered. After a crash,
      records written since the last checkpoint are written again (duplicates).
    - ``"exactly-once"``: records go into a Kafka transaction that commits when a checkpoint
      completes; consumers with ``isolation.level=read_committed`` (librdkafka's default) see
      every result once, also after crashes. Needs checkpoints (``checkpoint_dir=``); without
      them, a bounded run commits at its end and an unbounded one is refused
      (:class:`~tideflow.ConfigError`). Output becomes visible once per checkpoint
      interval, which must stay well below ``transaction.timeout.ms`` (default 5 min). The
      records of the open transaction are kept in the checkpoint so that a restart can write
      them again if the crash cut the commit short (see ``docs/checkpoints.md``).
    - ``"at-most-once"``: records wait in memory until the checkpoint that covers them
      completes and are sent then, without a transaction and without being kept in the
      checkpoint: a crash between a checkpoint and the broker's acknowledgements loses (some
      of) that interval's records, and nothing is ever sent twice. Latency: one checkpoint
      interval. Needs checkpoints as exactly-once does.

    Parameters
    ----------
    topic
        The topic.
    bootstrap
        The brokers, ``"host:port[,host:port]"``.
    key
        A column whose value (as UTF-8 text, or raw ``Binary``) is the message key; messages
        with the same key go to the same partition (murmur2, like the Java clients).
    value
        ``"json"``: the whole row as a JSON object; or a column name: that column's value as
        UTF-8 text (``Binary`` as is).
    config
        librdkafka producer settings passed through: ``linger.ms`` (default 20),
        ``batch.num.messages``, ``compression.type`` (``lz4``, ``zstd``...), ``acks``, TLS,
        SASL, ``transaction.timeout.ms``. Idempotence is on by default.
    delivery
        ``"at-least-once"``, ``"exactly-once"`` or ``"at-most-once"``.
    transactional_id
        With exactly-once: the prefix of the producers' ``transactional.id`` (worker ``i`` uses
        ``<prefix>-<i>``); default ``tideflow-<step id>``. It must be stable across restarts
        of the job and unique to it: two running jobs with the same one fence each other.
    commit_topic
        With exactly-once: the small compacted topic holding the commit markers (default
        ``<topic>.tideflow-commits``, created when missing).

    Examples
    --------
    >>> sink = sink_kafka("alerts", bootstrap="127.0.0.1:19092", key="card",
    ...                   config={"compression.type": "zstd"})
    >>> sink.topic, sink.key, sink.value, sink.delivery
    ('alerts', 'card', 'json', 'at-least-once')
    >>> eo = sink_kafka("totals", bootstrap="127.0.0.1:19092", delivery="exactly-once")
    >>> eo.default_commit_topic()
    'totals.tideflow-commits'
    """
    sink = KafkaSink(
        topic,
        bootstrap,
        key,
        value,
        tuple(dict(config or {}).items()),
        delivery,
        transactional_id,
        commit_topic,
    )
    sink.validate("kafka")
    return sink
