"""PostgreSQL sources: a bounded table/query scan and incremental polling by a rising column."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import logging
import re
import time
from typing import Any

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import Source, SourceBatch, SourceContext, SourceReader
from tideflow.connectors._postgres_sink import psycopg, qualified, safe_dsn

__all__ = ["PostgresPoll", "PostgresScan", "decode_position", "encode_position"]

logger = logging.getLogger(__name__)

_QUERY = re.compile(r"^\s*(select|with|values|table)\b", re.IGNORECASE)


def encode_position(value: Any) -> Any:
    """A cursor value as JSON-able data (for checkpoints).

    Examples
    --------
    >>> encode_position(dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC))
    {'datetime': '2024-01-02T03:04:00+00:00'}
    >>> decode_position(encode_position(decimal.Decimal("1.5")))
    Decimal('1.5')
    """
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    return value


def decode_position(value: Any) -> Any:
    """The inverse of :func:`encode_position`."""
    if isinstance(value, dict):
        if "datetime" in value:
            return dt.datetime.fromisoformat(value["datetime"])
        if "date" in value:
            return dt.date.fromisoformat(value["date"])
        if "decimal" in value:
            return decimal.Decimal(value["decimal"])
    return value


#: PostgreSQL type OIDs with a fixed Polars type (others are inferred from the first batch).
_OID_TYPES: dict[int, pl.DataType] = {
    16: pl.Boolean(),
    17: pl.Binary(),
    18: pl.String(),
    19: pl.String(),
    20: pl.Int64(),
    21: pl.Int16(),
    23: pl.Int32(),
    25: pl.String(),
    700: pl.Float32(),
    701: pl.Float64(),
    1042: pl.String(),
    1043: pl.String(),
    1082: pl.Date(),
    1083: pl.Time(),
    1114: pl.Datetime("us"),
    1184: pl.Datetime("us", "UTC"),
    2950: pl.String(),
}


def _columns(description: Any) -> list[tuple[str, pl.DataType | None]]:
    return [(d.name, _OID_TYPES.get(d.type_code)) for d in description]


def _frame(
    columns: list[tuple[str, pl.DataType | None]],
    rows: list[tuple[Any, ...]],
    schema: dict[str, Any] | None,
) -> pl.DataFrame:
    if schema is not None:
        try:
            return pl.DataFrame(rows, schema=schema, orient="row")
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
            pass
    frame = pl.DataFrame(rows, schema=columns, orient="row", infer_schema_length=None)
    if any(isinstance(t, pl.Datetime) and t.time_zone for t in frame.schema.values()):
        frame = frame.with_columns(  # timestamptz values arrive in the session's time zone
            pl.col(n).dt.convert_time_zone("UTC")
            for n, t in frame.schema.items()
            if isinstance(t, pl.Datetime) and t.time_zone
        )
    return frame


def _connect(step: str, dsn: str) -> Any:
    pg = psycopg()
    try:
        return pg.connect(dsn, autocommit=False, application_name=f"tideflow {step}")
    except pg.Error as exc:
        msg = f"step {step!r}: cannot connect to PostgreSQL {safe_dsn(dsn)}: {exc}"
        raise ConnectorError(msg) from exc


def _pg_error(step: str, what: str, exc: BaseException) -> ConnectorError:
    diag = getattr(exc, "diag", None)
    text = (getattr(diag, "message_primary", None) or str(exc)).strip()
    return ConnectorError(f"step {step!r}: {what} failed: {text}")


@dataclasses.dataclass(frozen=True)
class PostgresScan(Source):
    """Settings of :func:`~tideflow.connectors.postgres.scan_postgres`."""

    dsn: str
    table_or_query: str

    @property
    def bounded(self) -> bool:
        return True

    @property
    def query(self) -> str:
        if _QUERY.match(self.table_or_query):
            return self.table_or_query
        return f"SELECT * FROM {qualified(self.table_or_query)}"

    def validate(self, step_id: str) -> None:
        if not isinstance(self.table_or_query, str) or not self.table_or_query.strip():
            msg = f"step {step_id!r}: pass a table name or a SELECT query"
            raise ConfigError(msg)

    def build(self, ctx: SourceContext) -> SourceReader:
        self.validate(ctx.step_id)
        return _ScanReader(self, ctx)


class _ScanReader(SourceReader):
    """Worker 0 reads through a server-side cursor; the others have nothing to read."""

    def __init__(self, s: PostgresScan, ctx: SourceContext) -> None:
        self._s = s
        self._ctx = ctx
        self._step = ctx.step_id
        self._done = ctx.worker_index != 0
        self._rows = int(ctx.resume.get("rows", 0))
        self._conn: Any = None
        self._cur: Any = None
        self._schema: dict[str, Any] | None = None
        if self._done:
            return
        self._conn = _connect(self._step, s.dsn)
        pg = psycopg()
        try:
            self._cur = self._conn.cursor(name=f"tideflow_scan_{ctx.worker_index}")
            self._cur.itersize = ctx.batch_size
            self._cur.execute(s.query)
            if self._rows:  # resumed: skip what was read (needs a deterministic ORDER BY)
                self._cur.scroll(self._rows, mode="absolute")
        except pg.Error as exc:
            self._conn.close()
            raise _pg_error(self._step, f"reading {s.table_or_query!r}", exc) from exc

    @property
    def finished(self) -> bool:
        return self._done

    def snapshot(self) -> dict[str, Any]:
        return {"rows": self._rows} if self._ctx.worker_index == 0 else {}

    def poll(self) -> SourceBatch | None:
        if self._done:
            return None
        pg = psycopg()
        try:
            rows = self._cur.fetchmany(self._ctx.batch_size)
        except pg.Error as exc:
            raise _pg_error(self._step, f"reading {self._s.table_or_query!r}", exc) from exc
        columns = _columns(self._cur.description)
        if len(rows) < self._ctx.batch_size:
            self._done = True
            self.close()
        if not rows:
            empty = [(n, t if t is not None else pl.String()) for n, t in columns]
            return SourceBatch(pl.DataFrame(schema=self._schema or empty))
        frame = _frame(columns, rows, self._schema)
        self._schema = dict(frame.schema)
        self._rows += len(rows)
        return SourceBatch(frame)

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            try:
                if self._cur is not None:
                    self._cur.close()
                self._conn.rollback()
            finally:
                self._conn.close()


@dataclasses.dataclass(frozen=True)
class PostgresPoll(Source):
    """Settings of :func:`~tideflow.connectors.postgres.follow_postgres`."""

    dsn: str
    table: str
    cursor_column: str
    poll_interval: dt.timedelta = dt.timedelta(seconds=1)
    start_after: Any = None

    @property
    def bounded(self) -> bool:
        return False

    def validate(self, step_id: str) -> None:
        if not isinstance(self.table, str) or not self.table:
            msg = f"step {step_id!r}: table must be a non-empty name, got {self.table!r}"
            raise ConfigError(msg)
        if not isinstance(self.cursor_column, str) or not self.cursor_column:
            msg = f"step {step_id!r}: cursor_column must name a column that only increases"
            raise ConfigError(msg)
        if (
            not isinstance(self.poll_interval, dt.timedelta)
            or self.poll_interval.total_seconds() <= 0
        ):
            msg = (
                f"step {step_id!r}: poll_interval must be a positive timedelta, "
                f"got {self.poll_interval!r}"
            )
            raise ConfigError(msg)

    def build(self, ctx: SourceContext) -> SourceReader:
        self.validate(ctx.step_id)
        return _PollReader(self, ctx)


class _PollReader(SourceReader):
    """Worker 0 asks for rows whose cursor column is above the last value seen, in order."""

    def __init__(self, s: PostgresPoll, ctx: SourceContext) -> None:
        self._s = s
        self._ctx = ctx
        self._step = ctx.step_id
        self._active = ctx.worker_index == 0
        self._key = s.table
        self._last = (
            decode_position(ctx.resume[self._key]) if self._key in ctx.resume else s.start_after
        )
        self._next = 0.0
        self._schema: dict[str, Any] | None = None
        self._conn: Any = _connect(self._step, s.dsn) if self._active else None
        if self._conn is not None:
            self._conn.autocommit = True
        table, col = qualified(s.table), qualified(s.cursor_column)
        self._sql_first = f"SELECT * FROM {table} ORDER BY {col} LIMIT %s"
        self._sql_after = f"SELECT * FROM {table} WHERE {col} > %s ORDER BY {col} LIMIT %s"
        self._sql_tie = f"SELECT * FROM {table} WHERE {col} = %s"

    @property
    def finished(self) -> bool:
        return False

    def snapshot(self) -> dict[str, Any]:
        if not self._active or self._last is None:
            return {}
        return {self._key: encode_position(self._last)}

    def poll(self) -> SourceBatch | None:
        if self._conn is None or time.monotonic() < self._next:
            return None
        pg = psycopg()
        n = self._ctx.batch_size
        try:
            with self._conn.cursor() as cur:
                if self._last is None:
                    cur.execute(self._sql_first, (n,))
                else:
                    cur.execute(self._sql_after, (self._last, n))
                rows = cur.fetchall()
                description = cur.description
                names = [d.name for d in description]
                idx = names.index(self._s.cursor_column) if self._s.cursor_column in names else -1
                if idx < 0:
                    msg = (
                        f"step {self._step!r}: table {self._s.table!r} has no column "
                        f"{self._s.cursor_column!r} (it has {names})"
                    )
                    raise ConnectorError(msg)
                if len(rows) == n:
                    # The last value's rows may go on past the limit: take all of them, so
                    # that "> last" on the next poll skips nothing.
                    top = rows[-1][idx]
                    rows = [r for r in rows if r[idx] != top]
                    cur.execute(self._sql_tie, (top,))
                    rows.extend(cur.fetchall())
        except pg.Error as exc:
            raise _pg_error(self._step, f"polling table {self._s.table!r}", exc) from exc
        if len(rows) < n:
            self._next = time.monotonic() + self._s.poll_interval.total_seconds()
        if not rows:
            return None
        self._last = rows[-1][idx]
        frame = _frame(_columns(description), rows, self._schema)
        self._schema = dict(frame.schema)
        return SourceBatch(frame)

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
