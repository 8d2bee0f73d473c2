"""PostgreSQL sink (psycopg 3): COPY inserts, COPY + merge upserts, a transaction a batch."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Literal, get_args

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import Sink, SinkContext, SinkWriter
from tideflow.connectors._tables import check_table_settings

__all__ = [
    "PostgresDelivery",
    "PostgresMode",
    "PostgresSink",
    "PostgresWriter",
    "pg_type",
    "psycopg",
    "qualified",
    "safe_dsn",
]

logger = logging.getLogger(__name__)

PostgresMode = Literal["insert", "upsert"]

#: Delivery guarantees of :func:`~tideflow.connectors.postgres.sink_postgres` after a crash.
PostgresDelivery = Literal["at-least-once", "exactly-once", "at-most-once"]

#: The progress table of exactly-once sinks, in the schema of the table written to.
DEFAULT_PROGRESS_TABLE = "tideflow_sink_progress"


def psycopg() -> Any:
    """Import psycopg 3 or explain how to get it."""
    try:
        import psycopg as pg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = "the PostgreSQL connectors need psycopg 3: pip install 'tideflow[postgres]'"
        raise ConfigError(msg) from exc
    return pg


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs.

    Examples
    --------
    >>> safe_dsn("postgresql://app:s3cret@db:5432/shop")
    'postgresql://app:***@db:5432/shop'
    >>> safe_dsn("host=db password=s3cret dbname=shop")
    'host=db password=*** dbname=shop'
    """
    import re

    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn, flags=re.IGNORECASE)


def qualified(table: str) -> str:
    """Quote a ``table`` or ``schema.table`` name for SQL.

    Examples
    --------
    >>> qualified("public.Daily Totals")
    '"public"."Daily Totals"'
    """
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_type(dtype: pl.DataType) -> str:
    """The PostgreSQL column type for a Polars type (``create=True``).

    Examples
    --------
    >>> pg_type(pl.Datetime("ms", "UTC")), pg_type(pl.Int32()), pg_type(pl.List(pl.Int64()))
    ('timestamptz', 'integer', 'jsonb')
    """
    if dtype in (pl.Int8(), pl.Int16(), pl.UInt8()):
        return "smallint"
    if dtype in (pl.Int32(), pl.UInt16()):
        return "integer"
    if dtype in (pl.Int64(), pl.UInt32()):
        return "bigint"
    if dtype.is_integer():
        return "numeric"
    if dtype == pl.Float32():
        return "real"
    if dtype.is_float():
        return "double precision"
    if dtype == pl.Boolean():
        return "boolean"
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    if dtype == pl.Date():
        return "date"
    if dtype == pl.Time():
        return "time"
    if isinstance(dtype, pl.Decimal):
        return "numeric"
    if dtype == pl.Binary():
        return "bytea"
    if isinstance(dtype, pl.List | pl.Array | pl.Struct):
        return "jsonb"
    return "text"


def _copy_frame(batch: pl.DataFrame) -> pl.DataFrame:
    """Columns as text COPY's CSV format reads (bytea as hex, nested values as JSON)."""
    exprs: list[tuple[str, pl.Expr]] = []
    for name, dtype in batch.schema.items():
        col = pl.col(name)
        if dtype == pl.Binary():
            exprs.append((name, pl.lit("\\x") + col.bin.encode("hex")))
        elif isinstance(dtype, pl.Struct):
            exprs.append((name, col.struct.json_encode()))
        elif isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%d %H:%M:%S%.6f" + ("%:z" if dtype.time_zone else "")
            exprs.append((name, col.dt.to_string(fmt)))
        elif isinstance(dtype, pl.Duration):
            exprs.append(
                (name, col.dt.total_microseconds().cast(pl.String) + pl.lit(" microseconds"))
            )
        elif isinstance(dtype, pl.List | pl.Array):
            exprs.append(
                (
                    name,
                    col.map_elements(
                        lambda v: json.dumps(list(v), default=str), return_dtype=pl.String
                    ),
                )
            )
    return batch.with_columns([e.alias(n) for n, e in exprs]) if exprs else batch


@dataclasses.dataclass(frozen=True)
class PostgresSink(Sink):
    """Settings of :func:`~tideflow.connectors.postgres.sink_postgres`."""

    dsn: str
    table: str
    mode: str = "insert"
    key: tuple[str, ...] | None = None
    create: bool = False
    delivery: str = "at-least-once"
    progress_table: str | None = None

    def validate(self, step_id: str) -> None:
        check_table_settings(
            step_id, mode=self.mode, modes=get_args(PostgresMode), key=self.key, table=self.table
        )
        if not isinstance(self.dsn, str) or not self.dsn:
            msg = f"step {step_id!r}: dsn must be a connection string such as 'postgresql://user@host/db'"
            raise ConfigError(msg)
        choices = list(get_args(PostgresDelivery))
        if self.delivery not in choices:
            msg = f"step {step_id!r}: unknown delivery={self.delivery!r}; use one of {choices}"
            raise ConfigError(msg)
        if self.progress_table is not None:
            if self.delivery != "exactly-once":
                msg = f"step {step_id!r}: progress_table= applies only with delivery='exactly-once'"
                raise ConfigError(msg)
            p = self.progress_table
            if not isinstance(p, str) or not p or "\x00" in p or p == self.table:
                msg = (
                    f"step {step_id!r}: progress_table must be a table name other than the "
                    f"output table, got {p!r}"
                )
                raise ConfigError(msg)

    def check_run(self, step_id: str, *, bounded: bool, checkpointing: bool) -> None:
        if self.delivery != "at-least-once" and not bounded and not checkpointing:
            msg = (
                f"step {step_id!r}: delivery={self.delivery!r} writes a checkpoint's rows when "
                "the checkpoint completes, and this job's input never ends: without checkpoints "
                "nothing would ever be written; pass checkpoint_dir= (--checkpoint-dir) or use "
                "delivery='at-least-once'"
            )
            raise ConfigError(msg)

    def progress(self) -> str:
        """The progress table of ``delivery="exactly-once"``, schema-qualified like ``table``.

        Examples
        --------
        >>> PostgresSink("postgresql://h/db", "shop.totals", delivery="exactly-once").progress()
        'shop.tideflow_sink_progress'
        """
        if self.progress_table is not None:
            return self.progress_table
        schema, dot, _ = self.table.rpartition(".")
        return f"{schema}{dot}{DEFAULT_PROGRESS_TABLE}"

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        if self.delivery == "at-least-once":
            return PostgresWriter(self, ctx)
        from tideflow.connectors._postgres_txn import TransactionalWriter

        return TransactionalWriter(self, ctx)


class PostgresWriter(SinkWriter):
    """At-least-once writer: every batch in its own transaction as it comes."""

    def __init__(self, s: PostgresSink, ctx: SinkContext) -> None:
        self._pg = psycopg()
        self._s = s
        self._step = ctx.step_id
        self._rows = 0
        self._table = qualified(s.table)
        self._conn = self._connect()
        self._columns = self._existing_columns()
        if self._columns is None and not s.create:
            self._conn.close()
            msg = (
                f"step {self._step!r}: table {s.table!r} does not exist in {safe_dsn(s.dsn)}; "
                "create it or pass create=True"
            )
            raise ConnectorError(msg)

    def _connect(self) -> Any:
        try:
            return self._pg.connect(
                self._s.dsn, autocommit=False, application_name=f"tideflow {self._step}"
            )
        except self._pg.Error as exc:
            msg = (
                f"step {self._step!r}: cannot connect to PostgreSQL {safe_dsn(self._s.dsn)}: {exc}"
            )
            raise ConnectorError(msg) from exc

    def _error(self, what: str, exc: BaseException) -> ConnectorError:
        diag = getattr(exc, "diag", None)
        text = (getattr(diag, "message_primary", None) or str(exc)).strip()
        detail = getattr(diag, "message_detail", None)
        if detail:
            text += f" ({detail})"
        return ConnectorError(f"step {self._step!r}: {what} table {self._s.table!r} failed: {text}")

    def _existing_columns(self) -> list[str] | None:
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (self._table,))
                row = cur.fetchone()
                if row is None or row[0] is None:
                    self._conn.rollback()
                    return None
                cur.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (self._table,),
                )
                cols = [r[0] for r in cur.fetchall()]
            self._conn.rollback()
            return cols
        except self._pg.Error as exc:
            self._conn.rollback()
            raise self._error("inspecting", exc) from exc

    def _create(self, batch: pl.DataFrame) -> None:
        defs = [f"{_q(n)} {pg_type(t)}" for n, t in batch.schema.items()]
        if self._s.mode == "upsert" and self._s.key:
            defs.append(f"PRIMARY KEY ({', '.join(_q(k) for k in self._s.key)})")
        sql = f"CREATE TABLE IF NOT EXISTS {self._table} ({', '.join(defs)})"
        try:
            with self._conn.transaction():
                self._conn.execute(sql)
        except self._pg.Error as exc:
            # Another worker may have created it at the same moment (IF NOT EXISTS is not
            # atomic): use the table if it is there now.
            self._columns = self._existing_columns()
            if self._columns is None:
                raise self._error("creating", exc) from exc
            return
        self._columns = list(batch.columns)
        logger.info("step %r: created table %s", self._step, self._s.table)

    def _checked(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Create the table when asked to and check the batch's columns against it."""
        if self._columns is None:
            self._create(batch)
        assert self._columns is not None
        unknown = [c for c in batch.columns if c not in self._columns]
        if unknown:
            msg = (
                f"step {self._step!r}: table {self._s.table!r} has no columns {unknown} "
                f"(it has {self._columns}); select the table's columns before the sink"
            )
            raise ConnectorError(msg)
        if self._s.mode == "upsert":
            absent = [k for k in self._s.key or () if k not in batch.columns]
            if absent:
                msg = f"step {self._step!r}: the batch lacks the upsert key {absent}"
                raise ConnectorError(msg)
        return batch

    def _copy(self, cur: Any, batch: pl.DataFrame) -> None:
        """Insert or upsert ``batch`` in the connection's current transaction."""
        key = self._s.key or ()
        if self._s.mode == "upsert":
            # one row per key per statement (ON CONFLICT cannot touch a row twice): last wins
            batch = batch.unique(subset=list(key), keep="last", maintain_order=True)
        data = _copy_frame(batch).write_csv(include_header=False, quote_style="non_numeric")
        cols = ", ".join(_q(c) for c in batch.columns)
        if self._s.mode == "insert":
            target = self._table
        else:
            target = "_tideflow_upsert"
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {target} "
                f"(LIKE {self._table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
        with cur.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(data)
        if self._s.mode == "upsert":
            keys = ", ".join(_q(k) for k in key)
            rest = [c for c in batch.columns if c not in key]
            action = (
                "DO UPDATE SET " + ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in rest)
                if rest
                else "DO NOTHING"
            )
            cur.execute(
                f"INSERT INTO {self._table} ({cols}) SELECT {cols} FROM {target} "
                f"ON CONFLICT ({keys}) {action}"
            )
            # several batches may share one transaction (exactly-once without checkpoints)
            cur.execute(f"TRUNCATE {target}")

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        batch = self._checked(batch)
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                self._copy(cur, batch)
        except self._pg.Error as exc:
            raise self._error("writing to", exc) from exc
        self._rows += batch.height

    def snapshot(self) -> dict[str, Any]:
        return {"rows": self._rows}

    def close(self) -> None:
        if not self._conn.closed:
            self._conn.close()
        logger.info("step %r: %d row(s) written to %s", self._step, self._rows, self._s.table)
