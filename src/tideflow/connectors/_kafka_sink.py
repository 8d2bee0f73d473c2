"""Kafka sink: keyed produce, librdkafka batching, delivery reports checked before success."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Literal, get_args

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import CheckpointHold, Sink, SinkContext, SinkWriter
from tideflow.connectors._kafka_config import (
    check_topic,
    client_config,
    connector_error,
    log_config,
)
from tideflow.connectors._kafka_source import _ck

__all__ = ["Delivery", "KafkaSink", "encode_column", "encode_values"]

#: Delivery guarantees of :func:`~tideflow.connectors.kafka.sink_kafka`.
Delivery = Literal["at-least-once", "exactly-once", "at-most-once"]

#: Records re-sent after transient delivery errors, at most, per writer.
_MAX_RESENDS = 1_000_000

logger = logging.getLogger(__name__)


def encode_column(col: pl.Series) -> list[bytes | None]:
    """Bytes of a column for Kafka: ``Binary`` as is, text as UTF-8, anything else as its text.

    Examples
    --------
    >>> encode_column(pl.Series([1, None, 3]))
    [b'1', None, b'3']
    """
    if col.dtype == pl.Binary:
        return col.to_list()
    if isinstance(col.dtype, pl.Struct):
        col = col.struct.json_encode()
    elif isinstance(col.dtype, pl.List | pl.Array):
        return [None if v is None else json.dumps(v, default=str).encode() for v in col.to_list()]
    elif col.dtype != pl.String:
        col = col.cast(pl.String)
    return col.cast(pl.Binary).to_list()


def encode_values(batch: pl.DataFrame, value: str) -> list[bytes | None]:
    """Message values: every row as a JSON object (``"json"``) or one column's bytes.

    Examples
    --------
    >>> encode_values(pl.DataFrame({"a": [1], "b": ["x"]}), "json")
    [b'{"a":1,"b":"x"}']
    """
    if value == "json":
        enc = batch.select(pl.struct(pl.all()).struct.json_encode().alias("v"))["v"]
        return enc.cast(pl.Binary).to_list()
    return encode_column(batch.get_column(value))


@dataclasses.dataclass(frozen=True)
class KafkaSink(Sink):
    """Settings of :func:`~tideflow.connectors.kafka.sink_kafka`."""

    topic: str
    bootstrap: str
    key: str | None = None
    value: str = "json"
    config: tuple[tuple[str, Any], ...] = ()
    delivery: Delivery = "at-least-once"
    transactional_id: str | None = None
    commit_topic: str | None = None

    def validate(self, step_id: str) -> None:
        check_topic(step_id, self.topic)
        if self.delivery not in get_args(Delivery):
            msg = (
                f"step {step_id!r}: unknown delivery={self.delivery!r}; use one of "
                f"{list(get_args(Delivery))}"
            )
            raise ConfigError(msg)
        conf = dict(self.config)
        if "transactional.id" in conf:
            msg = (
                f"step {step_id!r}: do not set transactional.id in config; use "
                "delivery='exactly-once' (and transactional_id= for the prefix)"
            )
            raise ConfigError(msg)
        if self.delivery == "exactly-once":
            if conf.get("enable.idempotence") in (False, "false"):
                msg = (
                    f"step {step_id!r}: delivery='exactly-once' needs the idempotent producer; "
                    "remove enable.idempotence from config"
                )
                raise ConfigError(msg)
            if self.transactional_id is not None and (
                not isinstance(self.transactional_id, str) or not self.transactional_id.strip()
            ):
                msg = (
                    f"step {step_id!r}: transactional_id must be a non-empty string, got "
                    f"{self.transactional_id!r}"
                )
                raise ConfigError(msg)
            check_topic(step_id, self.commit_topic or self.default_commit_topic())
        elif self.transactional_id is not None or self.commit_topic is not None:
            msg = (
                f"step {step_id!r}: transactional_id= and commit_topic= apply only with "
                "delivery='exactly-once'"
            )
            raise ConfigError(msg)
        if self.key is not None and not isinstance(self.key, str):
            msg = f"step {step_id!r}: key must be a column name (or None), got {self.key!r}"
            raise ConfigError(msg)
        if not isinstance(self.value, str) or not self.value:
            msg = f"step {step_id!r}: value must be 'json' or a column name, got {self.value!r}"
            raise ConfigError(msg)

    def check_run(self, step_id: str, *, bounded: bool, checkpointing: bool) -> None:
        if self.delivery != "at-least-once" and not bounded and not checkpointing:
            msg = (
                f"step {step_id!r}: delivery={self.delivery!r} sends records when the checkpoint "
                "that covers them completes, and this job's input never ends: without "
                "checkpoints nothing would ever be sent; pass checkpoint_dir= (--checkpoint-dir) "
                "or use delivery='at-least-once'"
            )
            raise ConfigError(msg)

    def default_commit_topic(self) -> str:
        """The commit-marker topic used when ``commit_topic`` is not given."""
        return f"{self.topic}.tideflow-commits"

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        if self.delivery == "exactly-once":
            from tideflow.connectors._kafka_txn import (
                ExactlyOnceWriter,
                KafkaTxnBackend,
                transactional_config,
            )

            conf = transactional_config(ctx.step_id, self.bootstrap, dict(self.config))
            commit_topic = self.commit_topic or self.default_commit_topic()
            backend = KafkaTxnBackend(ctx.step_id, conf, self.topic, commit_topic)
            return ExactlyOnceWriter(
                ctx,
                key=self.key,
                value=self.value,
                txn_prefix=self.transactional_id or f"tideflow-{ctx.step_id}",
                backend=backend,
                keep_records=ctx.checkpointing,
            )
        if self.delivery == "at-most-once":
            return _AtMostOnceWriter(self, ctx)
        return _KafkaWriter(self, ctx)


class _KafkaWriter(SinkWriter):
    def __init__(self, s: KafkaSink, ctx: SinkContext) -> None:
        ck = _ck()
        self._ck = ck
        self._s = s
        self._step = ctx.step_id
        self._failed = 0
        self._first_error: str | None = None
        self._fatal: str | None = None
        self._sent = 0
        self._delivered = 0
        self._conf = client_config(
            ctx.step_id,
            s.bootstrap,
            {
                "linger.ms": 20,
                "batch.num.messages": 100_000,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",  # same partition for a key as Java clients
                "reconnect.backoff.max.ms": 2000,  # back within ~2 s of the broker's return
            },
            dict(s.config),
        )
        self._conf["error_cb"] = self._on_error
        self._conf["logger"] = logging.getLogger("tideflow.connectors.librdkafka")
        self._conf["on_delivery"] = self._on_delivery
        log_config(ctx.step_id, "producer", self._conf)
        try:
            self._producer = ck.Producer(self._conf)
        except ck.KafkaException as exc:
            raise connector_error(
                self._step, "cannot create the Kafka producer", exc, self._conf
            ) from exc
        self._closed = False
        self._retry: list[tuple[bytes | None, bytes | None]] = []
        self._resends = 0

    def _resend(self) -> None:
        """Produce again the records whose delivery failed with a transient error."""
        pending, self._retry = self._retry, []
        for value, key in pending:
            while True:
                try:
                    self._producer.produce(self._s.topic, value, key)
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = str(err)
        logger.warning("step %r: kafka: %s", self._step, err)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self._delivered += 1
            return
        if err.code() == self._ck.KafkaError._UNKNOWN_PARTITION and self._resends < _MAX_RESENDS:
            # The partition is missing from the client's metadata for a moment (seen right
            # after a broker restart): send the record again; flush() still has a deadline.
            self._retry.append((msg.value(), msg.key()))
            self._resends += 1
            return
        self._failed += 1
        if self._first_error is None:
            self._first_error = f"{err} (topic {msg.topic()}, partition {msg.partition()})"

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        self._raise_failures()
        s = self._s
        for needed in (s.key, None if s.value == "json" else s.value):
            if needed is not None and needed not in batch.columns:
                msg = (
                    f"step {self._step!r}: sink_kafka needs column {needed!r}, the stream has "
                    f"{batch.columns}"
                )
                raise ConfigError(msg)
        values = encode_values(batch, s.value)
        keys = encode_column(batch.get_column(s.key)) if s.key is not None else None
        produce = self._producer.produce
        poll = self._producer.poll
        topic = s.topic
        KafkaException = self._ck.KafkaException
        i = 0
        n = len(values)
        while i < n:
            try:
                if keys is None:
                    while i < n:
                        produce(topic, values[i])
                        i += 1
                else:
                    while i < n:
                        produce(topic, values[i], keys[i])
                        i += 1
            except BufferError:
                poll(0.05)  # queue full: let librdkafka send and report, then go on
            except KafkaException as exc:
                # refused before sending (e.g. larger than message.max.bytes): a failed record
                self._failed += 1
                if self._first_error is None:
                    self._first_error = str(exc.args[0] if exc.args else exc)
                i += 1
        self._sent += n
        poll(0)
        if self._retry:
            self._resend()

    def _raise_failures(self) -> None:
        if self._fatal is not None:
            msg = f"step {self._step!r}: fatal Kafka producer error: {self._fatal}"
            raise ConnectorError(msg)
        if self._failed:
            msg = (
                f"step {self._step!r}: {self._failed} record(s) could not be delivered to Kafka "
                f"topic {self._s.topic!r}; first error: {self._first_error}"
            )
            raise ConnectorError(msg)

    def flush(self) -> None:
        """Wait until every record written so far is acknowledged; raise if any failed."""
        limit = float(self._conf.get("message.timeout.ms", 300_000)) / 1000 + 30
        deadline = time.monotonic() + limit
        remaining = self._producer.flush(1.0)
        while remaining or self._retry:
            if self._retry:
                time.sleep(0.1)  # give the client a moment to refresh metadata
                self._resend()
            self._raise_failures()
            if time.monotonic() > deadline:
                msg = (
                    f"step {self._step!r}: {remaining} record(s) still undelivered to Kafka topic "
                    f"{self._s.topic!r} after {limit:.0f} s"
                )
                raise ConnectorError(msg)
            remaining = self._producer.flush(1.0)
        self._raise_failures()

    def snapshot(self) -> dict[str, Any]:
        return {"sent": self._sent, "delivered": self._delivered}

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
        logger.info(
            "step %r: %d record(s) delivered to Kafka topic %r",
            self._step,
            self._delivered,
            self._s.topic,
        )


class _AtMostOnceWriter(_KafkaWriter):
    """Records wait in memory until the checkpoint that covers them completes, then are sent.

    The checkpoint does not keep them: a crash after a checkpoint and before its records are
    acknowledged loses (some of) them, and the restart, which replays from that checkpoint,
    does not send them again. Nothing is sent twice (the idempotent producer also keeps retries
    from duplicating). Without checkpoints, a bounded run sends everything at its end.
    """

    def __init__(self, s: KafkaSink, ctx: SinkContext) -> None:
        super().__init__(s, ctx)
        self._hold = CheckpointHold()

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height:
            self._hold.hold(batch)

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        self._hold.cut(checkpoint_id)
        return {"held": self._hold.rows()}

    def commit(self, checkpoint_id: int) -> None:
        for batch in self._hold.take(checkpoint_id) or ():
            super().write(batch)
        self.flush()
