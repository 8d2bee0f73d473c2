"""Exactly-once Kafka output: one Kafka transaction per checkpoint, rolled forward after a crash.

A Kafka transaction cannot be resumed by another producer: a new producer with the same
``transactional.id`` aborts whatever the old one left open. So the writer keeps, in its
checkpointed state, every record of the transaction a checkpoint *pre-commits*, and writes a
*commit marker* (key ``<transactional id>/<token>``, a token new at every start; value the
checkpoint id) into a small compacted commit topic inside the same transaction. The marker
becomes visible exactly when the transaction commits. On recovery from checkpoint K the writer fences the old producer
(``init_transactions``), reads the commit topic with ``read_committed`` and, when no marker of
K (or later) is there, produces K's records again in a new transaction with the marker.

The state machine (``pre_commit``/``commit``) talks to Kafka through :class:`TxnBackend` and
:class:`TxnClient`, so it is unit-tested against an in-memory broker model.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import polars as pl

from tideflow._errors import ConnectorError, StateError
from tideflow.connectors._base import SinkContext, SinkWriter, worker_entries
from tideflow.connectors._kafka_config import client_config, connector_error, log_config

__all__ = ["ExactlyOnceWriter", "KafkaTxnBackend", "TxnBackend", "TxnClient", "marker_key"]

logger = logging.getLogger(__name__)

#: Version of the snapshot this writer stores in checkpoints.
SNAPSHOT_VERSION = 1

#: How long recovery waits for the commit topic to be readable up to its end.
_LOOKUP_WAIT = 120.0


class TxnClient(Protocol):
    """One transactional producer (one ``transactional.id``)."""

    def init(self) -> None:
        """Fence older producers with this id; abort the transaction they left open."""

    def begin(self) -> None:
        """Start a transaction."""

    def send(self, keys: list[bytes | None] | None, values: list[bytes | None]) -> None:
        """Produce records to the output topic inside the transaction."""

    def mark(self, key: bytes, value: bytes) -> None:
        """Produce a commit marker to the commit topic inside the transaction."""

    def flush(self) -> None:
        """Wait until every record produced so far is acknowledged; raise if any failed."""

    def poll(self) -> None:
        """Serve delivery reports without blocking; raise if any record failed."""

    def commit(self) -> None:
        """Commit the transaction."""

    def close(self) -> None:
        """Release the producer (no transaction open)."""


class TxnBackend(Protocol):
    """Makes transactional producers and reads commit markers."""

    def prepare(self) -> None:
        """Make sure the commit topic exists."""

    def client(self, txn_id: str) -> TxnClient:
        """A producer with ``transactional.id`` ``txn_id`` (not yet initialized)."""

    def last_marker(self, key: bytes) -> int | None:
        """The largest checkpoint id of the committed markers with ``key`` (None if none)."""


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf, compression="lz4")
    return buf.getvalue()


def marker_key(txn_id: str, token: str) -> bytes:
    """Key of the commit markers of one transactional id in one run of the writer.

    Examples
    --------
    >>> marker_key("tideflow-job.write-0", "5f1c")
    b'tideflow-job.write-0/5f1c'
    """
    return f"{txn_id}/{token}".encode()


class ExactlyOnceWriter(SinkWriter):
    """Transactional Kafka writer: output becomes visible when a checkpoint completes.

    States: *idle* (no transaction), *open* (records produced into a transaction),
    *staged* (a checkpoint's marker is in the open transaction; new records are held back in
    memory until that checkpoint commits). ``commit(c)`` commits the open transaction only if
    its newest marker is of a checkpoint ``<= c``.
    """

    def __init__(
        self,
        ctx: SinkContext,
        *,
        key: str | None,
        value: str,
        txn_prefix: str,
        backend: TxnBackend,
        keep_records: bool = True,
    ) -> None:
        self._step = ctx.step_id
        self._me = ctx.worker_index
        self._key = key
        self._value = value
        self._backend = backend
        self._keep = keep_records
        self._txn_id = f"{txn_prefix}-{ctx.worker_index}"
        self._open = False
        self._opened_at = 0.0
        self._rows: list[pl.DataFrame] = []  # records produced in the open transaction
        self._staged: int | None = None  # newest checkpoint whose marker is in the transaction
        self._held: list[pl.DataFrame] = []  # records written after the staged checkpoint
        self._closed = False
        self._released = False
        self.delivered = 0  # records committed by this writer
        if not keep_records:
            logger.warning(
                "step %r: delivery='exactly-once' without checkpoints: the output is committed "
                "only when a bounded input ends (within transaction.timeout.ms); pass "
                "checkpoint_dir= to commit with every checkpoint",
                self._step,
            )
        entries = worker_entries(ctx)
        # A new token for every start: within one process checkpoint ids only grow, so "a
        # marker of this token with an id >= K" proves K committed. Restores of an older
        # checkpoint or savepoint (whose ids may repeat ones used after it) never mix with it.
        self._token = uuid.uuid4().hex
        backend.prepare()
        self._client: TxnClient = backend.client(self._txn_id)
        self._client.init()
        n = ctx.worker_count
        for i in sorted(entries):
            if i == self._me or (i >= n and self._me == 0):  # rescaled down: worker 0 adopts
                self._recover(entries[i])

    # -- recovery --------------------------------------------------------------------------
    def _recover(self, e: Mapping[str, Any]) -> None:
        if e.get("version") != SNAPSHOT_VERSION:
            msg = f"step {self._step!r}: Kafka sink state version {e.get('version')!r} unsupported"
            raise StateError(msg)
        rows, cid, txn = int(e["rows"]), int(e["checkpoint"]), str(e["txn"])
        if rows == 0:
            return
        key = marker_key(txn, str(e["token"]))
        own = txn == self._txn_id
        client = self._client if own else self._backend.client(txn)
        try:
            if not own:
                client.init()  # fence the producer of a worker that no longer exists
            last = self._backend.last_marker(key)
            if last is not None and last >= cid:
                if last > cid:
                    logger.warning(
                        "step %r: Kafka transactions of checkpoint %d already committed, but the "
                        "job resumes from checkpoint %d (a savepoint, or the newer checkpoint was "
                        "damaged): records written between the two will appear twice in the output",
                        self._step,
                        last,
                        cid,
                    )
                logger.info(
                    "step %r: transaction %s of checkpoint %d had committed; nothing to redo",
                    self._step,
                    txn,
                    cid,
                )
                return
            frame = pl.read_ipc(io.BytesIO(e["records"]))
            client.begin()
            self._send(client, frame)
            client.mark(key, _marker_value(txn, str(e["token"]), cid, frame.height))
            client.flush()
            client.commit()
            logger.info(
                "step %r: rolled forward checkpoint %d: %d record(s) committed again (%s)",
                self._step,
                cid,
                frame.height,
                txn,
            )
        finally:
            if not own:
                client.close()

    @staticmethod
    def _send(client: TxnClient, frame: pl.DataFrame) -> None:
        keys = frame.get_column("key")
        client.send(
            None if keys.null_count() == frame.height else keys.to_list(),
            frame.get_column("value").to_list(),
        )

    # -- writing ---------------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._open:
            self._client.begin()
            self._open = True
            self._opened_at = time.monotonic()

    def _produce(self, frame: pl.DataFrame) -> None:
        self._begin()
        self._send(self._client, frame)
        self._rows.append(frame)

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        self._check_columns(batch)
        from tideflow.connectors._kafka_sink import encode_column, encode_values

        values = encode_values(batch, self._value)
        keys = None if self._key is None else encode_column(batch.get_column(self._key))
        frame = pl.DataFrame(
            [
                pl.Series("key", keys if keys is not None else [None] * len(values), pl.Binary),
                pl.Series("value", values, pl.Binary),
            ]
        )
        if self._staged is not None:
            self._held.append(frame)  # belongs to the next checkpoint: wait for the commit
            return
        self._begin()
        self._client.send(keys, values)  # from the lists at hand, not the frame
        self._rows.append(frame)
        self._client.poll()

    def _check_columns(self, batch: pl.DataFrame) -> None:
        from tideflow._errors import ConfigError

        for needed in (self._key, None if self._value == "json" else self._value):
            if needed is not None and needed not in batch.columns:
                msg = (
                    f"step {self._step!r}: sink_kafka needs column {needed!r}, the stream has "
                    f"{batch.columns}"
                )
                raise ConfigError(msg)

    def flush(self) -> None:
        if self._open:
            self._client.poll()

    def snapshot(self) -> dict[str, Any]:
        rows = sum(f.height for f in self._rows) if self._keep else 0
        records = b""
        if rows:
            records = _ipc(pl.concat(self._rows) if len(self._rows) > 1 else self._rows[0])
        return {
            f"w{self._me:04d}": {
                "version": SNAPSHOT_VERSION,
                "txn": self._txn_id,
                "token": self._token,
                "checkpoint": self._staged if self._staged is not None else -1,
                "rows": rows,
                "records": records,
            }
        }

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        if self._held:
            held, self._held = self._held, []
            for frame in held:
                self._produce(frame)
        if self._open:
            n = sum(f.height for f in self._rows)
            key = marker_key(self._txn_id, self._token)
            self._client.mark(key, _marker_value(self._txn_id, self._token, checkpoint_id, n))
            self._client.flush()
            self._staged = checkpoint_id
        return self.snapshot()

    def commit(self, checkpoint_id: int) -> None:
        if self._staged is None or self._staged > checkpoint_id:
            return  # nothing staged, or staged under a checkpoint not yet complete
        elapsed = time.monotonic() - self._opened_at
        try:
            self._client.commit()
        except ConnectorError as exc:
            msg = (
                f"{exc} (the transaction was open {elapsed:.0f} s: if that is more than the "
                "producer's transaction.timeout.ms, raise it in config= or checkpoint more often)"
            )
            raise ConnectorError(msg) from exc
        self.delivered += sum(f.height for f in self._rows)
        self._open, self._rows, self._staged = False, [], None
        if self._held:
            held, self._held = self._held, []
            for frame in held:
                self._produce(frame)
        if self._closed and not self._open:
            self._release()

    def close(self) -> None:
        """End of input: records stay in the open transaction until a checkpoint commits."""
        if self._closed:
            return
        self._closed = True
        if self._open:
            self._client.flush()
        else:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._client.close()
            logger.info(
                "step %r: %d record(s) committed to Kafka (%s)",
                self._step,
                self.delivered,
                self._txn_id,
            )


def _marker_value(txn: str, token: str, checkpoint: int, rows: int) -> bytes:
    return json.dumps(
        {"txn": txn, "token": token, "checkpoint": checkpoint, "rows": rows}, sort_keys=True
    ).encode()


# -- the real thing: confluent-kafka ---------------------------------------------------------


class _KafkaTxnClient:
    """A confluent-kafka transactional producer."""

    def __init__(self, step: str, conf: dict[str, Any], topic: str, commit_topic: str) -> None:
        from tideflow.connectors._kafka_source import _ck

        self._ck = ck = _ck()
        self._step = step
        self._topic = topic
        self._commit_topic = commit_topic
        self._failed = 0
        self._first_error: str | None = None
        self._fatal: str | None = None
        self._conf = dict(conf)
        self._conf["on_delivery"] = self._on_delivery
        self._conf["error_cb"] = self._on_error
        self._conf["logger"] = logging.getLogger("tideflow.connectors.librdkafka")
        self._timeout = float(self._conf.get("transaction.timeout.ms", 60_000)) / 1000 + 30
        try:
            self._p = ck.Producer(self._conf)
        except ck.KafkaException as exc:
            raise connector_error(step, "cannot create the Kafka producer", exc, conf) from exc

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = str(err)
        logger.warning("step %r: kafka: %s", self._step, err)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed += 1
            if self._first_error is None:
                self._first_error = f"{err} (topic {msg.topic()}, partition {msg.partition()})"

    def _raise(self) -> None:
        if self._fatal is not None:
            msg = f"step {self._step!r}: fatal Kafka producer error: {self._fatal}"
            raise ConnectorError(msg)
        if self._failed:
            msg = (
                f"step {self._step!r}: {self._failed} record(s) could not be delivered to Kafka "
                f"in the transaction; first error: {self._first_error}"
            )
            raise ConnectorError(msg)

    def _call(self, what: str, fn: Any, *args: Any) -> None:
        """A transaction call, retried while Kafka says the error is retriable."""
        ck = self._ck
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fn(*args)
                return
            except ck.KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if (
                    isinstance(err, ck.KafkaError)
                    and err.retriable()
                    and time.monotonic() < deadline
                ):
                    logger.info("step %r: %s: %s; retrying", self._step, what, err)
                    time.sleep(0.2)
                    continue
                raise connector_error(self._step, what, exc, self._conf) from exc

    def init(self) -> None:
        self._call("cannot initialize the Kafka transactions", self._p.init_transactions, 30.0)

    def begin(self) -> None:
        self._call("cannot begin a Kafka transaction", self._p.begin_transaction)

    def _produce(self, topic: str, keys: list[bytes | None] | None, values: list[Any]) -> None:
        produce, poll = self._p.produce, self._p.poll
        KafkaException = self._ck.KafkaException
        i, n = 0, len(values)
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
                poll(0.05)
            except KafkaException as exc:
                raise connector_error(self._step, "producing failed", exc, self._conf) from exc

    def send(self, keys: list[bytes | None] | None, values: list[bytes | None]) -> None:
        self._produce(self._topic, keys, values)

    def mark(self, key: bytes, value: bytes) -> None:
        self._produce(self._commit_topic, [key], [value])

    def poll(self) -> None:
        self._p.poll(0)
        self._raise()

    def flush(self) -> None:
        deadline = time.monotonic() + self._timeout
        while self._p.flush(1.0):
            self._raise()
            if time.monotonic() > deadline:
                msg = f"step {self._step!r}: records still undelivered to Kafka after {self._timeout:.0f} s"
                raise ConnectorError(msg)
        self._raise()

    def commit(self) -> None:
        self._call("cannot commit the Kafka transaction", self._p.commit_transaction, 60.0)
        self._raise()

    def close(self) -> None:
        self._p.flush(5.0)


class KafkaTxnBackend:
    """Transactional producers and the commit topic on a real Kafka cluster."""

    def __init__(
        self, step: str, conf: dict[str, Any], topic: str, commit_topic: str, partitions: int = 1
    ) -> None:
        self._step = step
        self._conf = conf
        self._topic = topic
        self._commit_topic = commit_topic
        self._partitions = partitions

    def _plain(self) -> dict[str, Any]:
        """Connection settings only (security, bootstrap), for admin and consumer clients."""
        drop = ("transactional.id", "transaction.timeout.ms", "enable.idempotence", "acks")
        skip = ("linger", "batch", "queue.", "partitioner", "compression", "message.")
        return {
            k: v
            for k, v in self._conf.items()
            if k not in drop and not k.startswith(skip) and not callable(v)
        }

    def prepare(self) -> None:
        from tideflow.connectors._kafka_source import _ck

        ck = _ck()
        kadmin: Any = importlib.import_module("confluent_kafka.admin")
        admin = kadmin.AdminClient(
            {**self._plain(), "logger": logging.getLogger("tideflow.connectors.librdkafka")}
        )
        md = admin.list_topics(self._commit_topic, timeout=15)
        tmd = md.topics.get(self._commit_topic)
        if tmd is not None and tmd.error is None and tmd.partitions:
            return
        new = kadmin.NewTopic(
            self._commit_topic,
            self._partitions,
            -1,
            config={"cleanup.policy": "compact", "segment.ms": "3600000"},
        )
        try:
            admin.create_topics([new])[self._commit_topic].result(timeout=30)
            logger.info("step %r: created the commit topic %r", self._step, self._commit_topic)
        except ck.KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (
                isinstance(err, ck.KafkaError) and err.code() == ck.KafkaError.TOPIC_ALREADY_EXISTS
            ):
                msg = (
                    f"step {self._step!r}: cannot create the commit topic {self._commit_topic!r} "
                    f"({err}); create it (1 partition, cleanup.policy=compact) or pass "
                    "commit_topic= naming one that exists"
                )
                raise ConnectorError(msg) from exc

    def client(self, txn_id: str) -> TxnClient:
        conf = dict(self._conf)
        conf["transactional.id"] = txn_id
        return _KafkaTxnClient(self._step, conf, self._topic, self._commit_topic)

    def last_marker(self, key: bytes) -> int | None:
        from tideflow.connectors._kafka_source import _ck

        ck = _ck()
        TP = ck.TopicPartition
        base = {
            **self._plain(),
            "group.id": f"tideflow-commit-check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "logger": logging.getLogger("tideflow.connectors.librdkafka"),
        }
        # The true end (high watermark): a read_committed consumer would report the last stable
        # offset, which an open transaction holds back before a committed marker.
        ends_c = ck.Consumer({**base, "isolation.level": "read_uncommitted"})
        reader = ck.Consumer({**base, "isolation.level": "read_committed"})
        topic = self._commit_topic
        try:
            deadline = time.monotonic() + 15
            while True:
                tmd = ends_c.list_topics(topic, timeout=15).topics.get(topic)
                if tmd is not None and tmd.error is None and tmd.partitions:
                    break
                if time.monotonic() > deadline:
                    msg = f"step {self._step!r}: the commit topic {topic!r} does not exist"
                    raise ConnectorError(msg)
                time.sleep(0.2)
            ends: dict[int, int] = {}
            for p in sorted(tmd.partitions):
                low, high = ends_c.get_watermark_offsets(TP(topic, p), timeout=15, cached=False)
                if high > low:
                    ends[p] = high
            if not ends:
                return None
            reader.assign([TP(topic, p, ck.OFFSET_BEGINNING) for p in ends])
            best: int | None = None
            open_parts = set(ends)
            deadline = time.monotonic() + _LOOKUP_WAIT
            while open_parts:
                for m in reader.consume(10_000, 0.2):
                    if m.error() is not None:
                        if m.error().fatal():
                            raise connector_error(
                                self._step, "reading the commit topic failed", m.error(), base
                            )
                        continue
                    if m.key() == key:
                        cid = int(json.loads(m.value())["checkpoint"])
                        best = cid if best is None else max(best, cid)
                for tp in reader.position([TP(topic, p) for p in open_parts]):
                    if tp.offset >= ends[tp.partition]:
                        open_parts.discard(tp.partition)
                if open_parts and time.monotonic() > deadline:
                    msg = (
                        f"step {self._step!r}: could not read the commit topic {topic!r} to its "
                        f"end within {_LOOKUP_WAIT:.0f} s: a transaction of another producer is "
                        "still open on it (it ends when that producer commits or its "
                        "transaction.timeout.ms passes)"
                    )
                    raise ConnectorError(msg)
            return best
        except ck.KafkaException as exc:
            raise connector_error(self._step, "reading the commit topic failed", exc, base) from exc
        finally:
            reader.close()
            ends_c.close()


def transactional_config(step: str, bootstrap: str, user: Mapping[str, Any]) -> dict[str, Any]:
    """Producer settings of the exactly-once writer (``transactional.id`` added per worker)."""
    conf = client_config(
        step,
        bootstrap,
        {
            "linger.ms": 20,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "partitioner": "murmur2_random",
            "reconnect.backoff.max.ms": 2000,
            # a transaction stays open for a checkpoint interval; the broker's maximum is
            # transaction.max.timeout.ms (15 min by default)
            "transaction.timeout.ms": 300_000,
        },
        dict(user),
        forced={"enable.idempotence": True},
    )
    log_config(step, "transactional producer", conf)
    return conf
