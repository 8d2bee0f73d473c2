"""SQLite table sink: append or upsert, one transaction per batch."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
from typing import Literal, get_args

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import Sink, SinkContext, SinkWriter
from tideflow.connectors._tables import check_table_settings

__all__ = ["SinkSqlite", "SqliteMode"]

logger = logging.getLogger(__name__)

SqliteMode = Literal["append", "upsert"]


def _q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _sql_type(dtype: pl.DataType) -> str:
    if dtype.is_integer() or dtype == pl.Boolean():
        return "INTEGER"
    if dtype.is_float():
        return "REAL"
    if dtype == pl.Binary():
        return "BLOB"
    return "TEXT"


def _to_sql_values(batch: pl.DataFrame) -> pl.DataFrame:
    """Convert columns to types sqlite3 stores natively (timestamps as ISO-8601 text)."""
    exprs: list[pl.Expr] = []
    nested: list[str] = []
    for name, dtype in batch.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%dT%H:%M:%S%.6f" + ("%:z" if dtype.time_zone else "")
            exprs.append(col.dt.to_string(fmt))
        elif isinstance(dtype, pl.Date):
            exprs.append(col.dt.to_string("%Y-%m-%d"))
        elif isinstance(dtype, pl.Time | pl.Duration | pl.Decimal | pl.Categorical | pl.Enum):
            exprs.append(col.cast(pl.String))
        elif isinstance(dtype, pl.List | pl.Array | pl.Struct):
            nested.append(name)
        elif dtype == pl.Null():
            exprs.append(col.cast(pl.String))
    out = batch.with_columns(exprs) if exprs else batch
    for name in nested:
        values = [None if v is None else json.dumps(v, default=str) for v in out[name].to_list()]
        out = out.with_columns(pl.Series(name, values, dtype=pl.String))
    return out


class _SqliteWriter(SinkWriter):
    def __init__(self, settings: SinkSqlite, ctx: SinkContext) -> None:
        self._s = settings
        self._ctx = ctx
        self._columns: list[str] | None = None
        self._sql: dict[tuple[str, ...], str] = {}
        try:
            self._conn = sqlite3.connect(settings.path)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            msg = f"step {ctx.step_id!r}: cannot open SQLite database {settings.path!r}: {exc}"
            raise ConnectorError(msg) from exc
        self._columns = self._existing_columns()
        if self._columns is None and not settings.create:
            self._conn.close()
            msg = (
                f"step {ctx.step_id!r}: table {settings.table!r} does not exist in "
                f"{settings.path!r}; create it or pass create=True"
            )
            raise ConnectorError(msg)
        if self._columns is not None:
            self._ensure_key_index()

    def _existing_columns(self) -> list[str] | None:
        rows = self._conn.execute(f"PRAGMA table_info({_q(self._s.table)})").fetchall()
        return [r[1] for r in rows] if rows else None

    def _ensure_key_index(self) -> None:
        if self._s.mode != "upsert" or not self._s.key:
            return
        assert self._columns is not None
        missing = [k for k in self._s.key if k not in self._columns]
        if missing:
            msg = (
                f"step {self._ctx.step_id!r}: upsert key {missing} is not a column of table "
                f"{self._s.table!r} (columns: {self._columns}); fix key="
            )
            raise ConnectorError(msg)
        index = _q(f"{self._s.table}__{'_'.join(self._s.key)}__key")
        cols = ", ".join(_q(k) for k in self._s.key)
        try:
            with self._conn:
                self._conn.execute(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {_q(self._s.table)} ({cols})"
                )
        except sqlite3.IntegrityError as exc:
            msg = (
                f"step {self._ctx.step_id!r}: cannot upsert into {self._s.table!r}: its rows are "
                f"not unique on {list(self._s.key)} ({exc}); deduplicate the table or use "
                "mode='append'"
            )
            raise ConnectorError(msg) from exc

    def _create(self, batch: pl.DataFrame) -> None:
        defs = ", ".join(f"{_q(n)} {_sql_type(t)}" for n, t in batch.schema.items())
        with self._conn:
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {_q(self._s.table)} ({defs})")
        self._columns = list(batch.columns)
        logger.info(
            "step %r: created table %s in %s", self._ctx.step_id, self._s.table, self._s.path
        )
        self._ensure_key_index()

    def _statement(self, columns: tuple[str, ...]) -> str:
        sql = self._sql.get(columns)
        if sql is None:
            names = ", ".join(_q(c) for c in columns)
            marks = ", ".join("?" for _ in columns)
            sql = f"INSERT INTO {_q(self._s.table)} ({names}) VALUES ({marks})"
            if self._s.mode == "upsert":
                key = self._s.key or ()
                keys = ", ".join(_q(k) for k in key)
                rest = [c for c in columns if c not in key]
                if rest:
                    sets = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in rest)
                    sql += f" ON CONFLICT ({keys}) DO UPDATE SET {sets}"
                else:
                    sql += f" ON CONFLICT ({keys}) DO NOTHING"
            self._sql[columns] = sql
        return sql

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if self._columns is None:
            self._create(batch)
        assert self._columns is not None
        unknown = [c for c in batch.columns if c not in self._columns]
        if unknown:
            msg = (
                f"step {self._ctx.step_id!r}: table {self._s.table!r} has no columns {unknown} "
                f"(it has {self._columns}); select the table's columns before the sink"
            )
            raise ConnectorError(msg)
        if self._s.mode == "upsert":
            absent = [k for k in self._s.key or () if k not in batch.columns]
            if absent:
                msg = f"step {self._ctx.step_id!r}: the batch lacks the upsert key {absent}"
                raise ConnectorError(msg)
        values = _to_sql_values(batch)
        sql = self._statement(tuple(values.columns))
        try:
            with self._conn:
                self._conn.executemany(sql, values.iter_rows())
        except sqlite3.Error as exc:
            msg = f"step {self._ctx.step_id!r}: writing to {self._s.table!r} failed: {exc}"
            raise ConnectorError(msg) from exc

    def close(self) -> None:
        self._conn.close()


@dataclasses.dataclass(frozen=True)
class SinkSqlite(Sink):
    """Settings of :func:`tideflow.connectors.sqlite.sink_sqlite`."""

    path: str
    table: str
    mode: str = "append"
    key: tuple[str, ...] | None = None
    create: bool = True
    single_writer = True

    def validate(self, step_id: str) -> None:
        check_table_settings(
            step_id, mode=self.mode, modes=get_args(SqliteMode), key=self.key, table=self.table
        )
        parent = os.path.dirname(os.path.abspath(self.path))
        if self.path != ":memory:" and not os.path.isdir(parent):
            msg = f"step {step_id!r}: the directory {parent!r} does not exist; create it first"
            raise ConfigError(msg)

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        return _SqliteWriter(self, ctx)
