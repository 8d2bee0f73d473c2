"""Kafka source: partitions split over workers, offsets tracked by tideflow (no auto-commit)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import Source, SourceBatch, SourceContext, SourceReader, dead_letters
from tideflow.connectors._kafka_config import (
    check_topic,
    client_config,
    connector_error,
    log_config,
)
from tideflow.connectors._kafka_formats import (
    BytesFormat,
    Decoded,
    Deserializer,
    JsonFormat,
    TextFormat,
    decode_utf8,
    sample,
)

__all__ = ["KafkaSource", "StartAt", "metadata_retriable"]

logger = logging.getLogger(__name__)

StartAt = Literal["earliest", "latest", "committed"]

#: Columns every Kafka batch carries besides the decoded value(s).
META_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "topic": pl.String(),
    "partition": pl.Int32(),
    "offset": pl.Int64(),
    "timestamp": pl.Datetime("ms", "UTC"),
}

_METADATA_TIMEOUT = 15.0
_MISSING_TOPIC_GRACE = 5.0  # a topic created a moment ago may take this long to show


def _ck() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = "the Kafka connectors need confluent-kafka: pip install 'tideflow[kafka]'"
        raise ConfigError(msg) from exc
    return confluent_kafka


def partition_key(topic: str, partition: int) -> str:
    """The stable key of a partition in positions and checkpoints: ``"topic/partition"``."""
    return f"{topic}/{partition}"


@dataclasses.dataclass(frozen=True)
class KafkaSource(Source):
    """Settings of :func:`~tideflow.connectors.kafka.follow_kafka` / ``scan_kafka``."""

    topics: tuple[str, ...]
    bootstrap: str
    group_id: str | None = None
    start: str | datetime = "earliest"
    format: str | Deserializer = "json"
    fields: tuple[tuple[str, pl.DataType], ...] | None = None
    config: tuple[tuple[str, Any], ...] = ()
    until_end: bool = False
    key_format: Literal["text", "bytes"] = "text"
    timeout: float = 0.05

    @property
    def bounded(self) -> bool:
        return self.until_end

    def validate(self, step_id: str) -> None:
        if not self.topics:
            msg = f"step {step_id!r}: no Kafka topic given; pass topics='name' or a list"
            raise ConfigError(msg)
        for t in self.topics:
            check_topic(step_id, t)
        if isinstance(self.start, datetime):
            if self.start.tzinfo is None:
                msg = (
                    f"step {step_id!r}: start={self.start!r} has no time zone; pass an aware "
                    "datetime such as datetime(..., tzinfo=UTC)"
                )
                raise ConfigError(msg)
        elif self.start not in get_args(StartAt):
            msg = (
                f"step {step_id!r}: unknown start={self.start!r}; use one of "
                f"{list(get_args(StartAt))} or a timezone-aware datetime"
            )
            raise ConfigError(msg)
        if isinstance(self.format, str):
            if self.format not in ("json", "text", "bytes"):
                msg = (
                    f"step {step_id!r}: unknown format={self.format!r}; use 'json', 'text', "
                    "'bytes' or a Deserializer object"
                )
                raise ConfigError(msg)
            if self.fields is not None and self.format != "json":
                msg = f"step {step_id!r}: schema= only applies to format='json'"
                raise ConfigError(msg)
        elif not isinstance(self.format, Deserializer):
            msg = (
                f"step {step_id!r}: format must be 'json', 'text', 'bytes' or a Deserializer "
                "(an object with schema() and deserialize(values)), got "
                f"{type(self.format).__name__}"
            )
            raise ConfigError(msg)
        clash = sorted(set(self._value_schema() or {}) & set(META_SCHEMA))
        if clash:
            msg = (
                f"step {step_id!r}: value fields {clash} clash with the Kafka columns "
                f"{list(META_SCHEMA)}; rename them in the schema"
            )
            raise ConfigError(msg)
        if self.key_format not in ("text", "bytes"):
            msg = f"step {step_id!r}: key_format must be 'text' or 'bytes', got {self.key_format!r}"
            raise ConfigError(msg)
        conf = dict(self.config)
        if conf.get("enable.auto.commit") not in (None, False, "false"):
            msg = (
                f"step {step_id!r}: enable.auto.commit must stay off: tideflow tracks offsets "
                "itself (checkpoints); remove it from config"
            )
            raise ConfigError(msg)

    def _deserializer(self) -> Deserializer:
        if isinstance(self.format, str):
            if self.format == "text":
                return TextFormat()
            if self.format == "bytes":
                return BytesFormat()
            return JsonFormat(self.fields)
        return self.format

    def _value_schema(self) -> dict[str, pl.DataType] | None:
        try:
            return self._deserializer().schema()
        except Exception:
            return None

    def schema(self) -> dict[str, pl.DataType] | None:
        value = self._value_schema()
        if value is None:
            return None
        meta = dict(META_SCHEMA)
        if self.key_format == "bytes":
            meta["key"] = pl.Binary()
        return {"key": meta.pop("key"), **value, **meta}

    def build(self, ctx: SourceContext) -> SourceReader:
        self.validate(ctx.step_id)
        return _KafkaReader(self, ctx)


def metadata_retriable(err: Any) -> bool:
    """Whether a failed offset or metadata call of the source is worth retrying.

    Besides the errors Kafka calls retriable (a leader moving, a broker starting), an unknown
    partition is retried: the source only asks about partitions the topic's metadata listed,
    so "unknown" means the client's metadata is stale, as it is just after a broker restart.
    The caller gives up after :data:`_METADATA_TIMEOUT`.

    Examples
    --------
    >>> from confluent_kafka import KafkaError
    >>> metadata_retriable(KafkaError(KafkaError._UNKNOWN_PARTITION))
    True
    >>> metadata_retriable(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    False
    """
    ck = _ck()
    if not isinstance(err, ck.KafkaError):
        return False
    return bool(err.retriable()) or err.code() in (
        ck.KafkaError.NOT_LEADER_FOR_PARTITION,
        ck.KafkaError.LEADER_NOT_AVAILABLE,
        ck.KafkaError._TIMED_OUT,
        ck.KafkaError._TRANSPORT,
        ck.KafkaError._UNKNOWN_PARTITION,
        ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
    )


class _KafkaReader(SourceReader):
    def __init__(self, s: KafkaSource, ctx: SourceContext) -> None:
        ck = _ck()
        self._ck = ck
        self._s = s
        self._ctx = ctx
        self._step = ctx.step_id
        self._deser = s._deserializer()
        self._json_schema: dict[str, pl.DataType] | None = None
        if isinstance(self._deser, JsonFormat):
            self._json_schema = self._deser.schema()
        self._fatal: str | None = None
        group = s.group_id or f"tideflow-{ctx.step_id}"
        self._conf = client_config(
            ctx.step_id,
            s.bootstrap,
            {
                "auto.offset.reset": "earliest",
                # larger fetches than librdkafka's defaults: about twice the messages/s
                "max.partition.fetch.bytes": 8 << 20,
                "fetch.max.bytes": 32 << 20,
                "queued.max.messages.kbytes": 65536,
                "fetch.wait.max.ms": 100,
                "socket.keepalive.enable": True,
                "reconnect.backoff.max.ms": 2000,  # back within ~2 s of the broker's return
            },
            dict(s.config),
            forced={
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
            },
        )
        self._conf["error_cb"] = self._on_error
        self._conf["logger"] = logging.getLogger("tideflow.connectors.librdkafka")
        log_config(ctx.step_id, "consumer", self._conf)
        try:
            self._consumer = ck.Consumer(self._conf)
        except ck.KafkaException as exc:
            raise connector_error(
                self._step, "cannot create the Kafka consumer", exc, self._conf
            ) from exc
        try:
            self._setup()
        except BaseException:
            self._consumer.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _on_error(self, err: Any) -> None:
        # Broker down, connection refused...: librdkafka retries by itself; the job waits.
        if err.fatal():
            self._fatal = str(err)
        logger.warning("step %r: kafka: %s", self._step, err)

    def _partitions(self) -> list[tuple[str, int]]:
        ck = self._ck
        out: list[tuple[str, int]] = []
        deadline = time.monotonic() + _MISSING_TOPIC_GRACE
        for topic in self._s.topics:
            while True:
                try:
                    md = self._consumer.list_topics(topic, timeout=_METADATA_TIMEOUT)
                except ck.KafkaException as exc:
                    raise connector_error(
                        self._step, f"cannot read the metadata of topic {topic!r}", exc, self._conf
                    ) from exc
                tmd = md.topics.get(topic)
                err = tmd.error if tmd is not None else None
                if tmd is not None and err is None and tmd.partitions:
                    out.extend((topic, p) for p in sorted(tmd.partitions))
                    break
                if time.monotonic() > deadline:
                    msg = (
                        f"step {self._step!r}: Kafka topic {topic!r} does not exist on "
                        f"{self._conf['bootstrap.servers']} ({err}); create it first"
                    )
                    raise ConnectorError(msg)
                time.sleep(0.2)
        return sorted(out)

    def _retrying(self, what: str, call: Any) -> Any:
        """Run a metadata call, retrying errors Kafka calls retriable (leader moving, broker
        starting) until :data:`_METADATA_TIMEOUT`."""
        ck = self._ck
        deadline = time.monotonic() + _METADATA_TIMEOUT
        while True:
            try:
                return call()
            except ck.KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not metadata_retriable(err) or time.monotonic() > deadline:
                    raise connector_error(self._step, what, exc, self._conf) from exc
                logger.info("step %r: %s: %s; retrying", self._step, what, err)
                time.sleep(0.2)

    def _setup(self) -> None:
        ck = self._ck
        TP = ck.TopicPartition
        everything = self._partitions()
        mine = [
            tp
            for i, tp in enumerate(everything)
            if i % self._ctx.worker_count == self._ctx.worker_index
        ]
        self._positions: dict[str, int] = {}
        self._ends: dict[str, int] = {}
        self._tps = {partition_key(t, p): TP(t, p) for t, p in mine}
        todo: list[str] = []
        for key in self._tps:
            if key in self._ctx.resume:
                self._positions[key] = int(self._ctx.resume[key])
            else:
                todo.append(key)
        watermarks: dict[str, tuple[int, int]] = {}
        if todo or self._s.until_end:
            for key, tp in self._tps.items():
                watermarks[key] = self._retrying(
                    f"cannot read the offsets of {key}",
                    lambda tp=tp: self._consumer.get_watermark_offsets(
                        tp, timeout=_METADATA_TIMEOUT, cached=False
                    ),
                )
        start = self._s.start
        if todo and start == "committed":
            got = self._retrying(
                "cannot read committed offsets",
                lambda: self._consumer.committed(
                    [self._tps[k] for k in todo], timeout=_METADATA_TIMEOUT
                ),
            )
            for tp in got:
                key = partition_key(tp.topic, tp.partition)
                low = watermarks[key][0]
                self._positions[key] = tp.offset if tp.offset >= 0 else low
        elif todo and isinstance(start, datetime):
            ms = int(start.astimezone(UTC).timestamp() * 1000)
            query = [TP(self._tps[k].topic, self._tps[k].partition, ms) for k in todo]
            got = self._retrying(
                "cannot look up offsets by time",
                lambda: self._consumer.offsets_for_times(query, timeout=_METADATA_TIMEOUT),
            )
            for tp in got:
                key = partition_key(tp.topic, tp.partition)
                self._positions[key] = tp.offset if tp.offset >= 0 else watermarks[key][1]
        else:
            for key in todo:
                low, high = watermarks[key]
                self._positions[key] = low if start == "earliest" else high
        for key in self._tps:  # a resumed offset below the log start (retention) -> log start
            if key in watermarks:
                self._positions[key] = max(self._positions[key], watermarks[key][0])
        if self._s.until_end:
            self._ends = {key: watermarks[key][1] for key in self._tps}
        self._open = {k for k in self._tps if not self._ends or self._positions[k] < self._ends[k]}
        assign = [
            TP(tp.topic, tp.partition, self._positions[k])
            for k, tp in self._tps.items()
            if k in self._open
        ]
        if assign:
            self._consumer.assign(assign)
        logger.info(
            "step %r: worker %d reads %d partition(s) of %s from %s",
            self._step,
            self._ctx.worker_index,
            len(self._tps),
            list(self._s.topics),
            {k: self._positions[k] for k in sorted(self._tps)},
        )

    # -------------------------------------------------------------------- read
    @property
    def finished(self) -> bool:
        return self._s.until_end and not self._open

    def snapshot(self) -> dict[str, Any]:
        return dict(self._positions)

    def poll(self) -> SourceBatch | None:
        if self._fatal is not None:
            msg = f"step {self._step!r}: fatal Kafka error: {self._fatal}"
            raise ConnectorError(msg)
        if not self._open:
            return None
        ck = self._ck
        n = max(1, min(self._ctx.batch_size, 1_000_000))
        # Tens of thousands of Message objects at once make the cyclic GC scan them again and
        # again (a third of the time); none of them form cycles, so pause it for the batch.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._poll(ck, n)
        finally:
            if paused:
                gc.enable()

    def _poll(self, ck: Any, n: int) -> SourceBatch | None:
        try:
            msgs = self._consumer.consume(n, 0)
            if not msgs:
                msgs = self._consumer.consume(n, self._s.timeout)
        except (ck.KafkaException, RuntimeError) as exc:
            raise connector_error(self._step, "consuming failed", exc, self._conf) from exc
        errs = [m for m in msgs if m.error() is not None]
        if errs:
            self._handle_errors(errs)
            msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            if self._ends:
                self._check_positions()
            return None
        return self._batch(msgs)

    def _handle_errors(self, errs: list[Any]) -> None:
        ck = self._ck
        for m in errs:
            err = m.error()
            if err.fatal():
                raise connector_error(self._step, "consuming failed", err, self._conf)
            if err.code() == ck.KafkaError._PARTITION_EOF:
                continue
            if err.code() in (
                ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
                ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
            ):
                raise connector_error(self._step, f"cannot read {m.topic()}", err, self._conf)
            logger.warning("step %r: kafka: %s", self._step, err)

    def _check_positions(self) -> None:
        """Bounded reads: a partition is done once its position reached its end offset.

        The position librdkafka reports also moves past transaction markers and compacted gaps,
        which no message shows.
        """
        ck = self._ck
        open_tps = [self._tps[k] for k in self._open]
        try:
            got = self._consumer.position(open_tps)
        except ck.KafkaException:
            return
        for tp in got:
            key = partition_key(tp.topic, tp.partition)
            if tp.offset >= 0 and key in self._open:
                self._positions[key] = max(self._positions[key], min(tp.offset, self._ends[key]))
        self._close_done()

    def _close_done(self) -> None:
        done = [k for k in self._open if self._positions[k] >= self._ends[k]]
        if done:
            self._open.difference_update(done)
            with contextlib.suppress(self._ck.KafkaException):
                self._consumer.pause([self._tps[k] for k in done])

    def _batch(self, msgs: list[Any]) -> SourceBatch | None:
        topics = [m.topic() for m in msgs]
        parts = [m.partition() for m in msgs]
        offsets = [m.offset() for m in msgs]
        # messages of a partition arrive in offset order: the last one per partition is the max
        last = dict(zip(zip(topics, parts, strict=True), offsets, strict=True))
        if self._ends:
            ends = self._ends
            over = {
                tp: ends[partition_key(*tp)]
                for tp, off in last.items()
                if off >= ends[partition_key(*tp)]
            }
            if over:  # the end of a bounded read: drop what was produced after the start
                keep = [
                    i
                    for i, tp in enumerate(zip(topics, parts, strict=True))
                    if tp not in over or offsets[i] < over[tp]
                ]
                msgs = [msgs[i] for i in keep]
                topics = [topics[i] for i in keep]
                parts = [parts[i] for i in keep]
                offsets = [offsets[i] for i in keep]
                for tp, end in over.items():
                    last[tp] = end - 1
        for (t, p), off in last.items():
            self._positions[partition_key(t, p)] = off + 1
        if self._ends:
            self._close_done()
        if not msgs:
            return None
        raw_values = [m.value() for m in msgs]
        values = pl.Series("value", raw_values, dtype=pl.Binary)
        stamps = [ts[1] if ts[0] else None for ts in [m.timestamp() for m in msgs]]
        keys = pl.Series("key", [m.key() for m in msgs], dtype=pl.Binary)
        errors: dict[int, str] = {}
        if self._s.key_format == "text":
            keys, key_errors = decode_utf8(keys)
            errors.update({i: "key is not valid UTF-8" for i in key_errors})
        meta = pl.DataFrame(
            {
                "key": keys,
                "topic": pl.Series(topics, dtype=pl.String),
                "partition": pl.Series(parts, dtype=pl.Int32),
                "offset": pl.Series(offsets, dtype=pl.Int64),
                "timestamp": pl.Series(stamps, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC")),
            }
        )
        decoded = self._decode(values)
        errors.update(decoded.errors)
        if errors:
            ok = [i for i in range(len(msgs)) if i not in decoded.errors]
            meta = meta.gather(ok) if ok else meta.clear()
            data = decoded.data
            extra = sorted(i for i in errors if i not in decoded.errors)  # bad key, good value
            if extra:
                pos = {orig: j for j, orig in enumerate(ok)}
                drop = {pos[i] for i in extra}
                keep = [j for j in range(len(ok)) if j not in drop]
                data = data.gather(keep) if keep else data.clear()
                meta = meta.gather(keep) if keep else meta.clear()
            bad = sorted(errors)
            dead = dead_letters(
                self._step,
                [f"{topics[i]}/{parts[i]}/{offsets[i]}" for i in bad],
                [errors[i] for i in bad],
                [sample(raw_values[i]) for i in bad],
            )
        else:
            data = decoded.data
            dead = None
        if data.height != meta.height:
            msg = (
                f"step {self._step!r}: the deserializer returned {data.height} rows for "
                f"{meta.height} good values"
            )
            raise ConnectorError(msg)
        frame = self._assemble(meta, data)
        return SourceBatch(frame, dead)

    def _decode(self, values: pl.Series) -> Decoded:
        d = self._deser
        if isinstance(d, JsonFormat):
            out = d.decode(values, self._json_schema)
            if self._json_schema is None and out.data.width:
                self._json_schema = dict(out.data.schema)  # inferred once, then kept
                clash = sorted(set(self._json_schema) & set(META_SCHEMA))
                if clash:
                    logger.warning(
                        "step %r: JSON fields %s replace the Kafka columns of the same name; "
                        "pass schema= to choose",
                        self._step,
                        clash,
                    )
            return out
        return d.deserialize(values)

    def _assemble(self, meta: pl.DataFrame, data: pl.DataFrame) -> pl.DataFrame:
        meta = meta.drop([c for c in data.columns if c in meta.columns])
        cols = [meta.get_column("key")] if "key" in meta.columns else []
        rest = meta.drop("key") if "key" in meta.columns else meta
        return pl.DataFrame([*cols, *data.get_columns(), *rest.get_columns()])

    def close(self) -> None:
        consumer = getattr(self, "_consumer", None)
        if consumer is None:
            return
        try:
            offsets = [
                self._ck.TopicPartition(tp.topic, tp.partition, self._positions[k])
                for k, tp in self._tps.items()
            ]
            if offsets:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # committing is a courtesy for start="committed"
            logger.info("step %r: could not commit offsets on close: %s", self._step, exc)
        finally:
            consumer.close()
            self._consumer = None
