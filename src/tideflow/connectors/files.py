"""File sources and sinks: text, CSV, JSON lines and Parquet; bounded scans and follow mode.

Sources (``scan_*``) read files, directories and globs, split the work between workers (whole
files, byte ranges of large line files, Parquet row groups) and report positions that a
checkpoint can store. ``follow_*`` sources never end: they pick up new files and appended lines.
Sinks (``sink_*``) write one CSV/JSON-lines file or a directory of rolling Parquet parts.

Examples
--------
>>> import polars as pl
>>> from tideflow.connectors import files
>>> from tideflow.connectors._base import SourceContext
>>> import tempfile, os
>>> from pathlib import Path
>>> d = tempfile.mkdtemp()
>>> p = os.path.join(d, "a.csv")
>>> _ = Path(p).write_text("id,name\\n1,ada\\n2,bob\\n")
>>> reader = files.scan_csv(p).build(SourceContext("read", 0, 1, batch_size=1000))
>>> reader.poll().data.rows()
[(1, 'ada'), (2, 'bob')]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from tideflow.connectors._committed import SinkJsonlParts
from tideflow.connectors._filesinks import ParquetStatistics, SinkCsv, SinkJsonl, SinkParquet
from tideflow.connectors._follow import DEFAULT_POLL_INTERVAL, Follow
from tideflow.connectors._scan import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_SPLIT_BYTES,
    PathArg,
    ScanCsv,
    ScanJsonl,
    ScanParquet,
    ScanText,
)

__all__ = [
    "Follow",
    "ScanCsv",
    "ScanJsonl",
    "ScanParquet",
    "ScanText",
    "SinkCsv",
    "SinkJsonl",
    "SinkJsonlParts",
    "SinkParquet",
    "follow_csv",
    "follow_jsonl",
    "follow_text",
    "scan_csv",
    "scan_jsonl",
    "scan_parquet",
    "scan_text",
    "sink_csv",
    "sink_jsonl",
    "sink_jsonl_parts",
    "sink_parquet",
]


def _paths(path_or_paths: PathArg) -> tuple[str, ...]:
    if isinstance(path_or_paths, str | os.PathLike):
        return (os.fspath(path_or_paths),)
    return tuple(os.fspath(p) for p in path_or_paths)


def scan_text(
    path_or_paths: PathArg,
    *,
    column: str = "line",
    split_bytes: int | None = DEFAULT_SPLIT_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    file_time: str | None = None,
) -> ScanText:
    """Read lines of UTF-8 text (undecodable bytes replaced) into one string column.

    Parameters
    ----------
    path_or_paths
        A file, a directory (every visible file in it, sorted by name), a glob, or a list.
    column
        Name of the output column.
    split_bytes
        Large files are cut into byte ranges of this size (at line boundaries) that workers
        read in parallel. ``None`` (default) derives it from the total input size: about 64
        ranges, each between 4 and 64 MiB.
    chunk_bytes
        Bytes read, decoded and split at once; chunks are sliced into micro-batches of the
        runtime's batch size.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> from tideflow.connectors._base import SourceContext
    >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> _ = Path(p).write_text("hello world\\nbye\\n")
    >>> scan_text(p).build(SourceContext("read", 0, 1, batch_size=10)).poll().data["line"].to_list()
    ['hello world', 'bye']
    """
    return ScanText(
        _paths(path_or_paths), split_bytes, chunk_bytes, file_time=file_time, column=column
    )


def scan_csv(
    path_or_paths: PathArg,
    *,
    schema: Mapping[str, Any] | None = None,
    has_header: bool = True,
    separator: str = ",",
    split_bytes: int | None = DEFAULT_SPLIT_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    file_time: str | None = None,
) -> ScanCsv:
    """Read CSV files; rows that do not parse go to the dead letters with their line.

    Parameters
    ----------
    path_or_paths
        A file, a directory (its ``*.csv``/``*.tsv`` files, sorted by name), a glob, or a list.
        Every file must have the same columns (in any order).
    schema
        Column names to Polars types. With a header, the types of the named columns (the
        other columns' types are inferred from the first 1 MiB of the first file); without a
        header, the names and types of all columns in order. Values that do not parse as
        their type make the row a dead letter.
    has_header
        Whether the first line of each file holds the column names.
    separator
        The field separator, one character.
    split_bytes, chunk_bytes
        See :func:`scan_text`. Large files are split at line boundaries, so quoted fields
        must not contain line breaks.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from tideflow.connectors._base import SourceContext
    >>> p = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> _ = Path(p).write_text("id,v\\n1,2.5\\nx,3\\n")
    >>> batch = scan_csv(p, schema={"id": pl.Int64}).build(SourceContext("r", 0, 1, 10)).poll()
    >>> batch.data.rows(), batch.dead["origin"].str.ends_with("a.csv:3").to_list()
    ([(1, 2.5)], [True])
    """
    return ScanCsv(
        _paths(path_or_paths),
        split_bytes,
        chunk_bytes,
        user_schema=schema,
        has_header=has_header,
        separator=separator,
        file_time=file_time,
    )


def scan_jsonl(
    path_or_paths: PathArg,
    *,
    schema: Mapping[str, Any] | None = None,
    required: Sequence[str] | None = None,
    split_bytes: int | None = DEFAULT_SPLIT_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    file_time: str | None = None,
) -> ScanJsonl:
    """Read JSON-lines files (one object per line) into typed columns.

    Parameters
    ----------
    path_or_paths
        A file, a directory (its ``*.jsonl``/``*.ndjson``/``*.json`` files), a glob, or a list.
    schema
        Field names to Polars types; other fields are ignored. Without it, the schema is
        inferred from the first 1 MiB of the first file.
    required
        Fields every object must have (an explicit ``null`` counts as present); objects
        without one are dead letters. Default: every field of ``schema`` when it is given,
        none otherwise.
    split_bytes, chunk_bytes
        See :func:`scan_text`.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from tideflow.connectors._base import SourceContext
    >>> p = os.path.join(tempfile.mkdtemp(), "a.jsonl")
    >>> _ = Path(p).write_text('{"id": 1}\\n{"id": \\n{"id": 3}\\n')
    >>> batch = scan_jsonl(p, schema={"id": pl.Int64}).build(SourceContext("r", 0, 1, 10)).poll()
    >>> batch.data["id"].to_list(), batch.dead["reason"].str.slice(0, 12).to_list()
    ([1, 3], ['invalid JSON'])
    """
    return ScanJsonl(
        _paths(path_or_paths),
        split_bytes,
        chunk_bytes,
        user_schema=schema,
        required=None if required is None else tuple(required),
        file_time=file_time,
    )


def scan_parquet(path_or_paths: PathArg) -> ScanParquet:
    """Read Parquet files; workers share the work by row groups.

    A directory is read recursively (``*.parquet`` files, sorted by path). Hive-style
    ``key=value`` directories below it (the output of :func:`sink_parquet` with
    ``partition_by``) become string columns of that name.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from tideflow.connectors._base import SourceContext
    >>> p = os.path.join(tempfile.mkdtemp(), "a.parquet")
    >>> pl.DataFrame({"x": [1, 2]}).write_parquet(p)
    >>> scan_parquet(p).build(SourceContext("r", 0, 1, 10)).poll().data["x"].to_list()
    [1, 2]
    """
    return ScanParquet(_paths(path_or_paths))


def follow_text(
    dir_or_file: str | os.PathLike[str],
    *,
    column: str = "line",
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
    file_time: str | None = None,
) -> Follow:
    """Follow a growing text file, a directory or a glob: new files and appended lines.

    Only complete lines are emitted; a partial last line waits for its newline. The source
    never ends. Files are split between workers by a stable hash of their name; the position
    is the byte offset (and line count) per file.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> from tideflow.connectors._base import SourceContext
    >>> d = tempfile.mkdtemp()
    >>> _ = Path(os.path.join(d, "log.txt")).write_text("one\\ntw")
    >>> reader = follow_text(d).build(SourceContext("f", 0, 1, 10))
    >>> reader.poll().data["line"].to_list()
    ['one']
    >>> with open(os.path.join(d, "log.txt"), "a") as fh:
    ...     _ = fh.write("o\\n")
    >>> reader.poll().data["line"].to_list()
    ['two']
    """
    return Follow(os.fspath(dir_or_file), "text", poll_interval, column=column, file_time=file_time)


def follow_jsonl(
    dir_or_file: str | os.PathLike[str],
    *,
    schema: Mapping[str, Any] | None = None,
    required: Sequence[str] | None = None,
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
    file_time: str | None = None,
) -> Follow:
    """Follow growing JSON-lines files (see :func:`follow_text` and :func:`scan_jsonl`).

    Without ``schema`` each worker infers it from the first lines it reads; pass one so that
    every worker and every batch agree.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from tideflow.connectors._base import SourceContext
    >>> d = tempfile.mkdtemp()
    >>> _ = Path(os.path.join(d, "a.jsonl")).write_text('{"level": "info"}\\n')
    >>> src = follow_jsonl(d, schema={"level": pl.String})
    >>> src.build(SourceContext("f", 0, 1, 10)).poll().data.rows()
    [('info',)]
    """
    return Follow(
        os.fspath(dir_or_file),
        "jsonl",
        poll_interval,
        user_schema=schema,
        required=None if required is None else tuple(required),
        file_time=file_time,
    )


def follow_csv(
    dir_or_file: str | os.PathLike[str],
    *,
    schema: Mapping[str, Any] | None = None,
    has_header: bool = True,
    separator: str = ",",
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
    file_time: str | None = None,
) -> Follow:
    """Follow growing CSV files (see :func:`follow_text` and :func:`scan_csv`).

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from tideflow.connectors._base import SourceContext
    >>> d = tempfile.mkdtemp()
    >>> _ = Path(os.path.join(d, "a.csv")).write_text("k,v\\na,1\\n")
    >>> follow_csv(d, schema={"k": pl.String, "v": pl.Int64}).build(
    ...     SourceContext("f", 0, 1, 10)).poll().data.rows()
    [('a', 1)]
    """
    return Follow(
        os.fspath(dir_or_file),
        "csv",
        poll_interval,
        user_schema=schema,
        has_header=has_header,
        separator=separator,
        file_time=file_time,
    )


def sink_csv(path: str | os.PathLike[str]) -> SinkCsv:
    """Write every batch to one CSV file with a header (a single writer).

    The file is written incrementally and complete after ``close()``. Nested columns (lists,
    structs) cannot be written to CSV; select or convert them first, or use
    :func:`sink_jsonl`/:func:`sink_parquet`.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from tideflow.connectors._base import SinkContext
    >>> p = os.path.join(tempfile.mkdtemp(), "out.csv")
    >>> w = sink_csv(p).build(SinkContext("write", 0, 1))
    >>> w.write(pl.DataFrame({"word": ["a"], "count": [2]})); w.close()
    >>> Path(p).read_text()
    'word,count\\na,2\\n'
    """
    return SinkCsv(os.fspath(path))


def sink_jsonl(path: str | os.PathLike[str]) -> SinkJsonl:
    """Write every batch to one JSON-lines file (a single writer).

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from tideflow.connectors._base import SinkContext
    >>> p = os.path.join(tempfile.mkdtemp(), "out.jsonl")
    >>> w = sink_jsonl(p).build(SinkContext("write", 0, 1))
    >>> w.write(pl.DataFrame({"word": ["a"], "count": [2]})); w.close()
    >>> Path(p).read_text()
    '{"word":"a","count":2}\\n'
    """
    return SinkJsonl(os.fspath(path))


def sink_jsonl_parts(path: str | os.PathLike[str]) -> SinkJsonlParts:
    """Write JSON-lines part files into a directory, made visible only by checkpoints.

    Exactly-once file output: each worker appends to ``part-<worker>-<seq>.jsonl.pending``;
    a completed checkpoint renames the files it covers to ``part-<worker>-<seq>.jsonl``. After
    a crash, the restart removes pending files and part files newer than the checkpoint it
    resumes from, so the ``.jsonl`` files hold every result exactly once. Without checkpoints,
    the end of a bounded run commits. The directory belongs to the sink: a start without a
    checkpoint removes the part files an earlier run of the same sink left there.

    Examples
    --------
    >>> import tempfile, os
    >>> import polars as pl
    >>> from tideflow.connectors._base import SinkContext
    >>> d = os.path.join(tempfile.mkdtemp(), "out")
    >>> w = sink_jsonl_parts(d).build(SinkContext("write", 0, 1))
    >>> w.write(pl.DataFrame({"word": ["a"], "count": [2]}))
    >>> snap = w.pre_commit(1); sorted(os.listdir(d))
    ['part-0000-00000000.jsonl.pending']
    >>> w.commit(1); w.close(); sorted(os.listdir(d))
    ['part-0000-00000000.jsonl']
    """
    return SinkJsonlParts(os.fspath(path))


def sink_parquet(
    path: str | os.PathLike[str],
    *,
    partition_by: str | Sequence[str] | None = None,
    roll_rows: int = 1_000_000,
    roll_interval: timedelta | None = None,
    statistics: ParquetStatistics = "numeric",
) -> SinkParquet:
    """Write a directory of rolling Parquet part files, optionally hive-partitioned.

    Each worker writes its own parts, named ``part-<worker>-<seq>.parquet``. A part is written
    under a hidden temporary name (starting with ``.``) and renamed when complete: after
    ``roll_rows`` rows, when ``roll_interval`` has passed since it was opened (checked on
    ``write`` and ``flush``), and on ``close``. With ``partition_by`` rows go to
    ``key=value/`` sub-directories (the key columns are not stored in the files). A part
    file's layout is judged on its first batch: a column that repeats values (at most half
    of the rows distinct) is dictionary-encoded when that makes it at least a quarter smaller
    than plain, and categorical and enum columns always are (with their own dictionaries); a
    column is Snappy-compressed when that saves at least a tenth (a fifth for a dictionary
    column), and an integer or time column is delta-encoded when that is about as small
    (see ``parquet_layout`` in ``tideflow.connectors._filesinks``).

    ``statistics`` chooses the columns whose chunks carry min/max statistics (which readers
    use to skip row groups): ``"numeric"`` (the default) every flat column except text,
    categorical and binary ones, whose min/max cost a comparison of every value and rarely
    prune a stream's batches; ``"all"`` every column (Arrow's default); ``"none"`` no
    column. Another value is a ``ConfigError`` when the flow is built.

    Examples
    --------
    >>> import tempfile, os
    >>> from pathlib import Path
    >>> import polars as pl
    >>> import pyarrow.parquet as pq
    >>> from tideflow.connectors._base import SinkContext
    >>> d = tempfile.mkdtemp()
    >>> w = sink_parquet(d, partition_by="k").build(SinkContext("write", 0, 1))
    >>> w.write(pl.DataFrame({"k": ["a", "b"], "v": [1, 2]})); w.close()
    >>> sorted(os.listdir(d))
    ['k=a', 'k=b']
    >>> d = tempfile.mkdtemp()
    >>> w = sink_parquet(d, statistics="all").build(SinkContext("write", 0, 1))
    >>> w.write(pl.DataFrame({"name": ["b", "a"], "v": [1, 2]})); w.close()
    >>> (part,) = os.listdir(d)
    >>> stats = pq.ParquetFile(os.path.join(d, part)).metadata.row_group(0).column(0).statistics
    >>> (stats.min, stats.max)
    ('a', 'b')
    """
    if isinstance(partition_by, str):
        keys: tuple[str, ...] = (partition_by,)
    else:
        keys = tuple(partition_by or ())
    return SinkParquet(os.fspath(path), keys, roll_rows, roll_interval, statistics)
