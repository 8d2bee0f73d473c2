"""Where the demo reads and writes: embedded defaults, or real Kafka and PostgreSQL.

``tideflow demo`` runs on embedded defaults (a generator in the process, SQLite and a JSON-lines
file). With ``--kafka BOOTSTRAP`` the transactions travel through a Kafka topic: the demo
writes its synthetic transactions there and the fraud job reads them back, and alerts go to a
second topic as well. With ``--postgres DSN`` the tables (card statistics, alerts, sessions)
are written to PostgreSQL instead of SQLite, in their own schema.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.api import Dataflow, Stream
from tideflow.connectors import generator, sqlite
from tideflow.connectors._base import Sink

__all__ = ["DemoIO", "check_services", "feed_flow", "read_transactions", "table_sink"]

log = logging.getLogger("tideflow.demo")

#: The transactions as JSON in Kafka: event time as epoch milliseconds.
WIRE_SCHEMA: dict[str, pl.DataType] = {
    "tx_id": pl.Int64(),
    "card": pl.String(),
    "amount": pl.Float64(),
    "country": pl.String(),
    "merchant": pl.String(),
    "ts": pl.Int64(),
}


@dataclass(frozen=True)
class DemoIO:
    """The demo's external services; ``None`` means the embedded default.

    Examples
    --------
    >>> DemoIO().describe()
    'embedded generator -> SQLite'
    >>> DemoIO(kafka="127.0.0.1:19092", postgres="postgresql://u@127.0.0.1/db").describe()
    "Kafka 127.0.0.1:19092 (topic 'tideflow-demo-transactions') -> PostgreSQL schema 'tideflow_demo'"
    """

    kafka: str | None = None
    transactions_topic: str = "tideflow-demo-transactions"
    alerts_topic: str = "tideflow-demo-alerts"
    partitions: int = 2
    postgres: str | None = None
    schema: str = "tideflow_demo"

    def describe(self) -> str:
        """One line saying where data comes from and goes to."""
        src = (
            f"Kafka {self.kafka} (topic {self.transactions_topic!r})"
            if self.kafka
            else "embedded generator"
        )
        dst = f"PostgreSQL schema {self.schema!r}" if self.postgres else "SQLite"
        return f"{src} -> {dst}"


def _safe_dsn(dsn: str) -> str:
    from tideflow.connectors._postgres_sink import safe_dsn

    return safe_dsn(dsn)


def check_services(io: DemoIO) -> None:
    """Fail before the job starts if a service is unreachable; prepare topics and tables.

    Creates the Kafka topics when missing, and in PostgreSQL the schema, dropping the demo's
    own tables of an earlier run (as the embedded demo starts a fresh SQLite file).
    """
    if io.kafka:
        _prepare_kafka(io)
    if io.postgres:
        _prepare_postgres(io)


def _prepare_kafka(io: DemoIO) -> None:
    assert io.kafka is not None
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
    except ImportError:
        msg = "demo --kafka needs the kafka extra: pip install 'tideflow[kafka]'"
        raise ConfigError(msg) from None
    admin = AdminClient({"bootstrap.servers": io.kafka, "socket.timeout.ms": 5000})
    try:
        topics = admin.list_topics(timeout=5).topics
    except KafkaException as exc:
        msg = (
            f"demo --kafka: cannot reach Kafka at {io.kafka} ({exc}); start a broker "
            "(scripts/services start kafka prints its address) or fix the address"
        )
        raise ConfigError(msg) from None
    missing = [t for t in (io.transactions_topic, io.alerts_topic) if t not in topics]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=io.partitions, replication_factor=1) for t in missing]
        )
        for topic, fut in futures.items():
            try:
                fut.result(timeout=30)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    msg = f"demo --kafka: could not create topic {topic!r}: {exc}"
                    raise ConnectorError(msg) from None
        log.info("created Kafka topics %s", missing)


def _prepare_postgres(io: DemoIO) -> None:
    assert io.postgres is not None
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        msg = "demo --postgres needs the postgres extra: pip install 'tideflow[postgres]'"
        raise ConfigError(msg) from None
    try:
        with psycopg.connect(io.postgres, connect_timeout=10) as con:
            con.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(io.schema)))
            for table in ("card_stats", "alerts", "card_sessions"):
                con.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(io.schema, table))
                )
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = (
            f"demo --postgres: cannot use {_safe_dsn(io.postgres)} ({first}); start a server "
            "(scripts/services start postgres prints its DSN) or fix the DSN"
        )
        raise ConfigError(msg) from None


def feed_flow(io: DemoIO, *, events: int | None, rate: float | None) -> Dataflow:
    """The feeder: synthetic transactions written to the Kafka topic as JSON, keyed by card."""
    from tideflow.connectors import kafka
    from tideflow.demo._fraud import make_transactions

    assert io.kafka is not None
    flow = Dataflow("fraud_feed")
    flow.source(
        generator.generate(make_transactions, count=events, rate=rate), name="transactions"
    ).with_columns(pl.col("ts").dt.epoch("ms"), name="wire").sink(
        kafka.sink_kafka(io.transactions_topic, bootstrap=io.kafka, key="card"), name="to_kafka"
    )
    return flow


def _feed_main(io: DemoIO, rate: float | None) -> None:  # pragma: no cover - child process
    import tideflow

    logging.basicConfig(level=logging.WARNING)
    tideflow.run(feed_flow(io, events=None, rate=rate), workers=1)


def start_feeder(io: DemoIO, rate: float | None) -> multiprocessing.process.BaseProcess:
    """Feed the topic from a child process until stopped (the unbounded demo)."""
    proc = multiprocessing.get_context("spawn").Process(
        target=_feed_main, args=(io, rate), name="tideflow-demo-feeder", daemon=True
    )
    proc.start()
    return proc


def read_transactions(
    flow: Dataflow, io: DemoIO, *, events: int | None, rate: float | None, since: datetime
) -> Stream:
    """The transactions stream: generated in process, or read back from Kafka.

    From Kafka the read starts at ``since`` (the records this run fed) and, for a bounded demo,
    stops at the end offsets the topic had when the job started; the stream keeps a
    ``partition`` column.
    """
    from tideflow.demo._fraud import TX_SCHEMA, make_transactions

    if not io.kafka:
        return flow.source(
            generator.generate(make_transactions, count=events, rate=rate), name="transactions"
        )
    from tideflow.connectors import kafka

    read = kafka.scan_kafka if events is not None else kafka.follow_kafka
    raw = flow.source(
        read(
            io.transactions_topic,
            bootstrap=io.kafka,
            group_id="tideflow-demo",
            start=since.astimezone(UTC),
            schema=WIRE_SCHEMA,
        ),
        name="transactions",
    )
    # The partition stays: event time tracks watermarks per partition (see build_flow).
    return raw.select(
        *[c for c in TX_SCHEMA if c != "ts"],
        pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC"),
        "partition",
        name="decode",
    )


def table_sink(
    io: DemoIO,
    db: Path,
    table: str,
    *,
    mode: Literal["append", "upsert"],
    key: str | None = None,
) -> Sink:
    """A result table: SQLite file ``db`` by default, or the PostgreSQL schema."""
    if io.postgres:
        from tideflow.connectors import postgres

        return postgres.sink_postgres(
            io.postgres,
            f"{io.schema}.{table}",
            mode="upsert" if mode == "upsert" else "insert",
            key=key,
            create=True,
        )
    return sqlite.sink_sqlite(db, table, mode=mode, key=key)


def summary_rows(io: DemoIO) -> dict[str, Any]:
    """Alerts per rule and cards tracked, from PostgreSQL."""
    import psycopg
    from psycopg import sql

    assert io.postgres is not None
    out: dict[str, Any] = {"rules": [], "cards": None}
    with psycopg.connect(io.postgres, connect_timeout=10) as con:
        for table, query in (
            ("alerts", "SELECT rule, count(*) FROM {} GROUP BY rule ORDER BY 1"),
            ("card_stats", "SELECT count(*) FROM {}"),
        ):
            (exists,) = con.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{io.schema}.{table}",)
            ).fetchone() or (False,)
            if not exists:
                continue
            rows = con.execute(sql.SQL(query).format(sql.Identifier(io.schema, table))).fetchall()
            if table == "alerts":
                out["rules"] = rows
            else:
                out["cards"] = rows[0][0]
    return out
