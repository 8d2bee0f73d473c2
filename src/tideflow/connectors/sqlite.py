"""SQLite sink: write a stream into a table of a local database file.

Examples
--------
>>> import sqlite3, tempfile, os
>>> import polars as pl
>>> from tideflow.connectors import sqlite
>>> from tideflow.connectors._base import SinkContext
>>> db = os.path.join(tempfile.mkdtemp(), "out.db")
>>> w = sqlite.sink_sqlite(db, "counts", mode="upsert", key="word").build(SinkContext("w", 0, 1))
>>> w.write(pl.DataFrame({"word": ["a", "b"], "n": [1, 1]}))
>>> w.write(pl.DataFrame({"word": ["a"], "n": [5]}))
>>> w.close()
>>> con = sqlite3.connect(db)
>>> con.execute("SELECT word, n FROM counts ORDER BY word").fetchall()
[('a', 5), ('b', 1)]
>>> con.close()
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tideflow.connectors._sqlite import SinkSqlite, SqliteMode

__all__ = ["SinkSqlite", "SqliteMode", "sink_sqlite"]


def sink_sqlite(
    path: str | os.PathLike[str],
    table: str,
    *,
    mode: SqliteMode = "append",
    key: str | Sequence[str] | None = None,
    create: bool = True,
) -> SinkSqlite:
    """Write batches into an SQLite table, one transaction per batch (a single writer).

    Parameters
    ----------
    path
        The database file (created if missing).
    table
        The table; created from the first batch's columns when missing and ``create``.
    mode
        ``"append"`` inserts every row; ``"upsert"`` inserts or updates the row with the same
        ``key`` (``INSERT ... ON CONFLICT DO UPDATE``; a unique index on the key is created).
    key
        The key column or columns for ``mode="upsert"``.
    create
        Create the table when it does not exist (otherwise that is an error).

    Timestamps are stored as ISO-8601 text, booleans as 0/1, lists and structs as JSON text.

    Examples
    --------
    >>> import tempfile, os
    >>> import polars as pl
    >>> from tideflow.connectors._base import SinkContext
    >>> db = os.path.join(tempfile.mkdtemp(), "a.db")
    >>> w = sink_sqlite(db, "alerts").build(SinkContext("alerts", 0, 1))
    >>> w.write(pl.DataFrame({"card": ["c1"], "score": [0.9]})); w.close()
    """
    keys = (key,) if isinstance(key, str) else (None if key is None else tuple(key))
    return SinkSqlite(os.fspath(path), table, mode, keys, create)
