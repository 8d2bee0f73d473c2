"""Read-only SQL (DuckDB) over live tables and over output files.

Two locks keep a query from changing or reading anything it should not:

1. at parse level, :func:`check_read_only` accepts exactly one ``SELECT`` statement (``WITH``
   included) whose table functions are on a short allow list and which calls no function that
   reads files, settings or the environment;
2. the query runs in a fresh in-memory DuckDB connection with ``enable_external_access=false``
   and a locked configuration, under a row limit and a time limit (the connection is
   interrupted when the time is up).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from tideflow._errors import ConfigError, TideflowError

__all__ = [
    "QueryResult",
    "SqlError",
    "check_read_only",
    "connect",
    "load_files",
    "run_query",
]

log = logging.getLogger("tideflow.dashboard.sql")

#: Table functions a query may use: they compute, they read nothing.
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
#: Functions refused anywhere in a query (they read files, settings or the environment).
DENIED_FUNCTIONS = frozenset(
    {
        "getenv",
        "current_setting",
        "read_text",
        "read_blob",
        "read_csv",
        "read_csv_auto",
        "read_json",
        "read_json_auto",
        "read_ndjson",
        "read_parquet",
        "parquet_scan",
        "sqlite_scan",
        "glob",
        "load_extension",
    }
)


class SqlError(TideflowError):
    """A query was refused (not read-only), failed, or ran past its time limit."""


@dataclasses.dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to a query: column names, rows, whether rows were cut at the limit."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The ``POST /api/sql`` answer."""
        from tideflow.dashboard._state import _jsonable

        return {
            "columns": self.columns,
            "rows": [[_jsonable(v) for v in r] for r in self.rows],
            "truncated": self.truncated,
            "seconds": round(self.seconds, 4),
        }


def _walk(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def check_read_only(sql: str) -> None:
    """Raise :class:`SqlError` unless ``sql`` is one plain read-only ``SELECT``.

    Examples
    --------
    >>> check_read_only("WITH a AS (SELECT 1 AS x) SELECT x FROM a")
    >>> check_read_only("DELETE FROM alerts")
    Traceback (most recent call last):
    ...
    tideflow.dashboard._sql.SqlError: only SELECT queries are allowed, got DELETE
    """
    if not sql or not sql.strip():
        raise SqlError("empty query")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        msg = f"cannot parse the query: {exc}"
        raise SqlError(msg) from None
    if len(statements) != 1:
        msg = f"send exactly one statement, got {len(statements)}"
        raise SqlError(msg)
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        msg = f"only SELECT queries are allowed, got {kind.name}"
        raise SqlError(msg)
    with _PARSER_LOCK:
        global _PARSER
        if _PARSER is None:
            _PARSER = connect()
        (text,) = _PARSER.execute("SELECT json_serialize_sql(?)", [sql]).fetchone() or ("",)
    tree = json.loads(text)
    if tree.get("error"):
        msg = f"cannot parse the query: {tree.get('error_message', 'unknown error')}"
        raise SqlError(msg)
    for node in _walk(tree):
        if node.get("type") == "TABLE_FUNCTION":
            fn = (node.get("function") or {}).get("function_name", "").lower()
            if fn not in ALLOWED_TABLE_FUNCTIONS:
                msg = f"table function {fn}() is not allowed: queries read only the live tables"
                raise SqlError(msg)
        name = node.get("function_name")
        if isinstance(name, str) and name.lower() in DENIED_FUNCTIONS:
            msg = f"function {name}() is not allowed: queries read only the live tables"
            raise SqlError(msg)
        if node.get("type") == "BASE_TABLE" and (node.get("catalog_name") or "").strip():
            msg = "queries read only the live tables (no other catalogs)"
            raise SqlError(msg)


def connect() -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory DuckDB: no external access, no extension loading, settings locked."""
    con = duckdb.connect(
        config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "threads": 1,
            "memory_limit": "1GB",
        }
    )
    con.execute("SET lock_configuration = true")
    return con


_PARSER: duckdb.DuckDBPyConnection | None = None
_PARSER_LOCK = threading.Lock()


def run_query(
    sql: str,
    tables: Mapping[str, pl.DataFrame],
    *,
    max_rows: int = 10_000,
    timeout: float = 5.0,
    connection: duckdb.DuckDBPyConnection | None = None,
    checked: bool = False,
) -> QueryResult:
    """Run a read-only query over ``tables`` (name -> frame) in a locked-down DuckDB.

    Parameters
    ----------
    sql
        One ``SELECT`` (see :func:`check_read_only`).
    tables
        The tables the query may read.
    max_rows
        Rows returned at most; ``truncated`` says when there were more.
    timeout
        Seconds before the query is interrupted (:class:`SqlError`).
    connection
        A connection from :func:`connect` to reuse (one caller at a time); default: a fresh one.
    checked
        ``sql`` already passed :func:`check_read_only` (fixed queries such as panels).

    Examples
    --------
    >>> import polars as pl
    >>> r = run_query("SELECT rule, count(*) AS n FROM alerts GROUP BY rule ORDER BY rule",
    ...               {"alerts": pl.DataFrame({"rule": ["a", "b", "a"]})})
    >>> r.columns, r.rows
    (['rule', 'n'], [['a', 2], ['b', 1]])
    """
    if not checked:
        check_read_only(sql)
    con = connection if connection is not None else connect()
    try:
        for name, frame in tables.items():
            con.register(name, frame.to_arrow())
        timer = threading.Timer(timeout, con.interrupt)
        start = time.perf_counter()
        timer.start()
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            rows = cur.fetchmany(max_rows + 1)
        except duckdb.InterruptException:
            msg = f"the query ran past its time limit ({timeout:g}s) and was stopped"
            raise SqlError(msg) from None
        except duckdb.Error as exc:
            if time.perf_counter() - start >= timeout:
                msg = f"the query ran past its time limit ({timeout:g}s) and was stopped"
                raise SqlError(msg) from None
            msg = f"query failed: {exc}"
            raise SqlError(msg) from None
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
    finally:
        if connection is None:
            con.close()
    truncated = len(rows) > max_rows
    return QueryResult(columns, [list(r) for r in rows[:max_rows]], truncated, seconds)


_FILE_KINDS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".db": "sqlite",
}


def _table_name(path: Path, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() else "_" for c in path.stem) or "t"
    if base[0].isdigit():
        base = "t_" + base
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def load_files(paths: Iterable[str | Path]) -> dict[str, pl.DataFrame]:
    """Read output files into tables for :func:`run_query`: one table per file (or per SQLite table).

    A directory contributes every file in it with a known suffix (``.parquet``, ``.csv``,
    ``.jsonl``/``.ndjson``/``.json``, ``.sqlite``/``.sqlite3``/``.db``); a directory of Parquet
    parts (a partitioned sink) becomes one table named after the directory. SQLite files are read
    with Python's ``sqlite3`` (no DuckDB extension download needed); each of their tables becomes
    a table of the same name.

    Examples
    --------
    >>> import tempfile, os, polars as pl
    >>> d = tempfile.mkdtemp()
    >>> pl.DataFrame({"word": ["a"], "count": [3]}).write_csv(os.path.join(d, "counts.csv"))
    >>> load_files([d])["counts"].rows()
    [('a', 3)]
    """
    tables: dict[str, pl.DataFrame] = {}
    taken: set[str] = set()
    for p in map(Path, paths):
        if not p.exists():
            msg = f"tideflow sql: {str(p)!r} does not exist; pass output files or directories"
            raise ConfigError(msg)
        if p.is_dir():
            # Files directly inside; a subdirectory holding Parquet parts (a partitioned or
            # rolling sink) becomes one table named after it. No deeper walk: pointing at a
            # project directory must not read every JSON file below it.
            files = sorted(
                f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _FILE_KINDS
            )
            parts = sorted(p.glob("*.parquet"))
            if parts and len(parts) == len(files):
                tables[_table_name(p, taken)] = pl.read_parquet(parts)
                continue
            for f in files:
                if f.suffix.lower() != ".json":  # .json only when named: often not JSON lines
                    _load_one(f, tables, taken)
            for sub in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
                nested = sorted(sub.rglob("*.parquet"))
                if nested:
                    tables[_table_name(sub, taken)] = _read_parts(nested)
        else:
            _load_one(p, tables, taken)
    return tables


def _read_parts(parts: list[Path]) -> pl.DataFrame:
    try:  # key=value directories become columns
        return pl.read_parquet(parts, hive_partitioning=True)
    except pl.exceptions.PolarsError:
        return pl.read_parquet(parts, hive_partitioning=False)


def _load_one(path: Path, tables: dict[str, pl.DataFrame], taken: set[str]) -> None:
    kind = _FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        msg = (
            f"tideflow sql: cannot tell the format of {str(path)!r}; use a .parquet, .csv, "
            ".jsonl or .sqlite file"
        )
        raise ConfigError(msg)
    if kind == "parquet":
        tables[_table_name(path, taken)] = pl.read_parquet(path)
    elif kind == "csv":
        tables[_table_name(path, taken)] = pl.read_csv(path, try_parse_dates=True)
    elif kind == "jsonl":
        tables[_table_name(path, taken)] = pl.read_ndjson(path)
    else:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for name in names:
                cur = con.execute(f'SELECT * FROM "{name}"')
                cols = [d[0] for d in cur.description]
                data = cur.fetchall()
                frame = pl.DataFrame(data, schema=cols, orient="row", infer_schema_length=None)
                tables[_table_name(Path(name), taken)] = frame
        finally:
            con.close()


def format_table(result: QueryResult, *, max_width: int = 40) -> str:
    """Render a result as a plain-text table (for ``tideflow sql``)."""

    def cell(v: Any) -> str:
        s = "NULL" if v is None else str(v)
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    body = [[cell(v) for v in r] for r in result.rows]
    widths = [len(c) for c in result.columns]
    for r in body:
        widths = [max(w, len(v)) for w, v in zip(widths, r, strict=True)]
    line = "  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    n = len(result.rows)
    out.append(f"({n} row{'s' if n != 1 else ''}{', truncated' if result.truncated else ''})")
    return "\n".join(out)
