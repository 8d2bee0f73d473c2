"""PostgreSQL connectors (psycopg 3): write streams into tables, read tables and new rows.

Start a server for trying these out with ``scripts/services start postgres`` (it prints the
DSN). Passwords in DSNs never appear in messages or logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from tideflow.connectors._postgres_sink import (
    PostgresDelivery,
    PostgresMode,
    PostgresSink,
    pg_type,
    safe_dsn,
)
from tideflow.connectors._postgres_source import PostgresPoll, PostgresScan
from tideflow.connectors._postgres_txn import progress_ddl

__all__ = [
    "PostgresDelivery",
    "PostgresMode",
    "PostgresPoll",
    "PostgresScan",
    "PostgresSink",
    "follow_postgres",
    "pg_type",
    "progress_ddl",
    "safe_dsn",
    "scan_postgres",
    "sink_postgres",
]


def sink_postgres(
    dsn: str,
    table: str,
    *,
    mode: PostgresMode = "insert",
    key: str | Sequence[str] | None = None,
    create: bool = False,
    delivery: PostgresDelivery = "at-least-once",
    progress_table: str | None = None,
) -> PostgresSink:
    """Write batches into a PostgreSQL table.

    Three delivery guarantees, for what a table holds after a crash and a restart from the last
    checkpoint (``docs/checkpoints.md`` compares them):

    - ``"at-least-once"`` (default, lowest latency): every batch is written in its own
      transaction as it comes. Rows written after the last checkpoint are written again by the
      replay after a crash: duplicates with ``mode="insert"``, the same values rewritten with
      ``mode="upsert"`` (so an upserted table ends exact).
    - ``"exactly-once"``: rows become visible when their checkpoint completes, written in one
      transaction together with this sink's row in a progress table (job, sink, worker ->
      last committed checkpoint). The rows of the open interval are kept in the checkpoint, and
      a restart writes them when their checkpoint completed but its transaction did not
      commit; the progress row makes sure no checkpoint's rows are written twice. After any
      crash the table holds exactly the rows of a run that never crashed, also with
      ``mode="insert"``. Costs: latency (one checkpoint interval) and checkpoint size.
    - ``"at-most-once"``: rows are written when their checkpoint completes, as with
      exactly-once, but the checkpoint does not keep them and there is no progress table: a
      crash between a checkpoint and its commit loses that interval's rows; nothing is ever
      written twice.

    The last two need checkpoints (``checkpoint_dir=``) on an input that does not end (a
    :class:`~tideflow.ConfigError` otherwise); without checkpoints a bounded job writes all
    its rows in one transaction committed at its end.

    Parameters
    ----------
    dsn
        A libpq connection string, ``"postgresql://user@host:port/db"``.
    table
        The table, optionally ``schema.table``.
    mode
        ``"insert"``: every row is appended (``COPY``). ``"upsert"``: a row whose ``key``
        exists replaces its other columns (``COPY`` into a temporary table, then
        ``INSERT ... ON CONFLICT DO UPDATE``); the table needs a unique key on those columns
        (``create=True`` makes it the primary key). Within one batch the last row per key wins.
    key
        The key column(s) for ``mode="upsert"``.
    create
        Create the table from the stream's schema when it does not exist.
    delivery
        ``"at-least-once"``, ``"exactly-once"`` or ``"at-most-once"``.
    progress_table
        With exactly-once: the progress table (default ``tideflow_sink_progress`` in the schema
        of ``table``), created when missing (:func:`progress_ddl` gives the statement, to create
        it beforehand); one row per sink, worker and start of the job.

    A write the server refuses raises :class:`~tideflow.ConnectorError` naming the table and the
    server's message; that batch's transaction is rolled back, earlier batches stay.

    Examples
    --------
    >>> sink = sink_postgres("postgresql://tideflow@127.0.0.1:15432/tideflow", "totals",
    ...                      mode="upsert", key="card", create=True)
    >>> sink.mode, sink.key, sink.delivery
    ('upsert', ('card',), 'at-least-once')
    >>> eo = sink_postgres("postgresql://tideflow@127.0.0.1:15432/tideflow", "shop.alerts",
    ...                    delivery="exactly-once")
    >>> eo.progress()
    'shop.tideflow_sink_progress'
    """
    keys = (key,) if isinstance(key, str) else (None if key is None else tuple(key))
    sink = PostgresSink(dsn, table, mode, keys, create, delivery, progress_table)
    sink.validate("postgres")
    return sink


def scan_postgres(dsn: str, table_or_query: str) -> PostgresScan:
    """Read a table or the result of a ``SELECT`` as a bounded input.

    Rows come through a server-side cursor, a micro-batch at a time, so a large table never
    sits in memory whole. One worker reads. A resumed scan skips the rows already read, which
    is only meaningful for a query with a deterministic ``ORDER BY``.

    Examples
    --------
    >>> src = scan_postgres("postgresql://tideflow@127.0.0.1:15432/tideflow", "public.orders")
    >>> src.bounded, src.query
    (True, 'SELECT * FROM "public"."orders"')
    """
    src = PostgresScan(dsn, table_or_query)
    src.validate("postgres")
    return src


def follow_postgres(
    dsn: str,
    table: str,
    *,
    cursor_column: str,
    poll_interval: timedelta = timedelta(seconds=1),
    start_after: Any = None,
) -> PostgresPoll:
    """Read new rows of a table as an unbounded stream, by polling a rising column.

    Every ``poll_interval`` the reader asks for rows whose ``cursor_column`` is greater than the
    last value it saw, in that column's order; its position (the last value) is checkpointed.
    Rows that share a cursor value are read together. The column must only grow for new rows
    (an identity column, an insert timestamp); rows whose value is below one already seen when
    they become visible (a long transaction committing late) are not picked up.

    Parameters
    ----------
    dsn
        A libpq connection string.
    table
        The table, optionally ``schema.table``.
    cursor_column
        The rising column.
    poll_interval
        How long to wait after a poll that found less than a full batch.
    start_after
        Read only rows above this value on a fresh start (default: the whole table).

    Examples
    --------
    >>> src = follow_postgres("postgresql://tideflow@127.0.0.1:15432/tideflow", "events",
    ...                       cursor_column="id", poll_interval=timedelta(milliseconds=200))
    >>> src.bounded
    False
    """
    src = PostgresPoll(dsn, table, cursor_column, poll_interval, start_after)
    src.validate("postgres")
    return src
