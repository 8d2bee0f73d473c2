"""File sinks: one CSV or JSON-lines file, or a directory of rolling Parquet parts."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import IO, Any, Literal, get_args

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import Sink, SinkContext, SinkWriter

__all__ = [
    "ParquetDictionarySchema",
    "ParquetLayout",
    "ParquetStatistics",
    "SinkCsv",
    "SinkJsonl",
    "SinkParquet",
    "dictionary_columns",
    "open_parquet_writer",
    "parquet_layout",
    "parquet_table",
    "statistics_columns",
]

logger = logging.getLogger(__name__)

_NESTED = (pl.List, pl.Struct, pl.Array, pl.Object)


def _check_parent(step_id: str, path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        msg = (
            f"step {step_id!r}: cannot write {path!r}: the directory {parent!r} does not exist; "
            "create it first"
        )
        raise ConfigError(msg)
    if os.path.isdir(path):
        msg = f"step {step_id!r}: {path!r} is a directory; pass a file path"
        raise ConfigError(msg)


class _FileWriter(SinkWriter):
    """Appends encoded batches to one file; positions are byte offsets."""

    def __init__(self, path: str, ctx: SinkContext) -> None:
        self._path = path
        self._ctx = ctx
        self._rows = 0
        self._header_written = False
        pos = ctx.resume.get(path) if isinstance(ctx.resume, Mapping) else None
        try:
            if isinstance(pos, Mapping) and os.path.exists(path):
                self._file: IO[bytes] = open(path, "r+b")  # noqa: SIM115 - closed in close()
                self._file.truncate(int(pos["bytes"]))
                self._file.seek(0, os.SEEK_END)
                self._rows = int(pos.get("rows", 0))
                self._header_written = bool(pos.get("header", False))
            else:
                self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            msg = f"step {ctx.step_id!r}: cannot open {path!r} for writing: {exc}"
            raise ConnectorError(msg) from exc

    def _encode(self, batch: pl.DataFrame) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0 and self._header_written:
            return
        try:
            self._encode(batch)
        except OSError as exc:
            msg = f"step {self._ctx.step_id!r}: writing {self._path!r} failed: {exc}"
            raise ConnectorError(msg) from exc
        self._rows += batch.height

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def snapshot(self) -> dict[str, Any]:
        self.flush()
        offset = self._file.tell() if not self._file.closed else os.path.getsize(self._path)
        return {self._path: {"bytes": offset, "rows": self._rows, "header": self._header_written}}

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class _CsvWriter(_FileWriter):
    def _encode(self, batch: pl.DataFrame) -> None:
        nested = [n for n, t in batch.schema.items() if isinstance(t, _NESTED)]
        if nested:
            msg = (
                f"step {self._ctx.step_id!r}: CSV cannot hold the nested columns {nested}; "
                "select them away, convert them (for example .list.join(',')), or write "
                "with sink_jsonl/sink_parquet"
            )
            raise ConnectorError(msg)
        batch.write_csv(self._file, include_header=not self._header_written)
        self._header_written = True


class _JsonlWriter(_FileWriter):
    def _encode(self, batch: pl.DataFrame) -> None:
        if batch.height:
            batch.write_ndjson(self._file)
        self._header_written = True


@dataclasses.dataclass(frozen=True)
class SinkCsv(Sink):
    """Settings of :func:`tideflow.connectors.files.sink_csv`."""

    path: str
    single_writer = True

    def validate(self, step_id: str) -> None:
        _check_parent(step_id, self.path)

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        return _CsvWriter(self.path, ctx)


@dataclasses.dataclass(frozen=True)
class SinkJsonl(Sink):
    """Settings of :func:`tideflow.connectors.files.sink_jsonl`."""

    path: str
    single_writer = True

    def validate(self, step_id: str) -> None:
        _check_parent(step_id, self.path)

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        return _JsonlWriter(self.path, ctx)


# -- Parquet ---------------------------------------------------------------------------------

#: First batches smaller than this keep Arrow's default (dictionary for every column).
_DICT_SAMPLE_MIN = 1_024
#: Rows of the first batch looked at to choose the dictionary-encoded columns.
_DICT_SAMPLE_MAX = 65_536
#: Rows of the first batch written to memory, every column plain, to weigh the codec (enough
#: for stable ratios; the whole 65,536-row sample of a wide result cost 4 % of Nexmark q20).
_LAYOUT_SAMPLE = 16_384


def dictionary_columns(frame: pl.DataFrame) -> list[str] | bool:
    """The columns of a Parquet file worth dictionary-encoding, judged on its first batch.

    A flat column is dictionary-encoded when at most half of the sampled rows (the first
    65,536) hold distinct values. Arrow's writer otherwise builds a dictionary for every
    column and drops it only once it passes its page limit, which costs about a third of the
    write on columns of distinct values (free text, prices, times) and saves nothing. Nested
    columns are written plain. Below 1,024 rows the sample says little: ``True`` (Arrow's
    default, a dictionary for every column) is returned.

    Examples
    --------
    >>> import polars as pl
    >>> frame = pl.DataFrame({"id": range(2_000), "kind": ["a", "b"] * 1_000})
    >>> dictionary_columns(frame)
    ['kind']
    >>> dictionary_columns(frame.head(10))
    True
    """
    if frame.height < _DICT_SAMPLE_MIN:
        return True
    sample = frame.head(_DICT_SAMPLE_MAX)
    flat = [c for c, t in sample.schema.items() if not isinstance(t, _NESTED)]
    if not flat:
        return []
    counts = sample.select(pl.col(flat).n_unique()).row(0)
    return [c for c, n in zip(flat, counts, strict=True) if n * 2 <= sample.height]


#: A column keeps its codec when that shrinks its sampled pages to at most this share; above
#: it the pages are written uncompressed (the codec would cost CPU and save little).
_CODEC_MAX_RATIO = 0.9
#: The same for a dictionary column (its dictionary page and bit-packed indices, which
#: compress little): the codec runs over every page for what the dictionary page gives back
#: (Nexmark q22's url directories: 0.89 with Snappy, 9 % of the result write's CPU).
_DICT_CODEC_MAX_RATIO = 0.8
#: A dictionary column must be at most this share of the same column written plain (both
#: compressed): hashing every value costs more than compressing the plain values, so a
#: dictionary that saves less than a quarter of the bytes does not pay.
_DICT_MAX_RATIO = 0.75
#: An integer or time column is written with Parquet's delta encoding (uncompressed) when that
#: is at most this share of its best other layout: delta-packing costs less CPU than Snappy or
#: a dictionary (Nexmark's ids, prices and times: 0.4-0.6x the CPU, and smaller).
_DELTA_MAX_RATIO = 1.1

#: Which columns get min/max statistics in their Parquet column chunks.
ParquetStatistics = Literal["all", "numeric", "none"]
_STATISTICS: tuple[str, ...] = get_args(ParquetStatistics)


#: Arrow types stored as Parquet INT32/INT64, which DELTA_BINARY_PACKED encodes.
_DELTA_TYPES = ("integer", "timestamp", "date", "time", "duration")
#: Arrow types stored as Parquet byte arrays (text, binary).
_BYTE_ARRAYS = ("string", "large_string", "string_view", "binary", "large_binary", "binary_view")


def _is_any(t: pa.DataType, kinds: Sequence[str]) -> bool:
    return any(getattr(pa.types, f"is_{kind}")(t) for kind in kinds)


def _is_text(t: pa.DataType) -> bool:
    """Text or binary, or a dictionary of them (categoricals)."""
    return _is_any(t.value_type if pa.types.is_dictionary(t) else t, _BYTE_ARRAYS)


def statistics_columns(schema: pa.Schema, statistics: ParquetStatistics) -> list[str] | bool:
    """The ``write_statistics`` option of Arrow's Parquet writer for a statistics setting.

    ``"all"`` writes min/max statistics for every column, ``"none"`` for none, and
    ``"numeric"`` for the flat columns that are not text, categorical or binary (numbers,
    booleans, times, decimals): the min/max of byte arrays cost a comparison of every value
    (about a tenth of the CPU of writing a short text column) and rarely prune anything in a
    stream's batches.

    Examples
    --------
    >>> import pyarrow as pa
    >>> schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    >>> statistics_columns(schema, "numeric")
    ['id']
    >>> statistics_columns(schema, "all")
    True
    """
    if statistics == "all":
        return True
    if statistics == "none":
        return False
    return [f.name for f in schema if not _is_text(f.type) and not pa.types.is_nested(f.type)]


def check_statistics(step_id: str, statistics: object) -> None:
    """Raise ``ConfigError`` unless ``statistics`` is one of ``ParquetStatistics``.

    Examples
    --------
    >>> check_statistics("write", "numeric")
    >>> check_statistics("write", "min-max")
    Traceback (most recent call last):
    ...
    tideflow._errors.ConfigError: step 'write': unknown statistics='min-max'; choose one of 'all', 'numeric', 'none'
    """
    if statistics not in _STATISTICS:
        choices = ", ".join(repr(c) for c in _STATISTICS)
        msg = f"step {step_id!r}: unknown statistics={statistics!r}; choose one of {choices}"
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True, slots=True)
class ParquetLayout:
    """How a Parquet file's columns are encoded: ``pyarrow.parquet.ParquetWriter`` options."""

    #: Columns to dictionary-encode (or True: every column).
    use_dictionary: list[str] | bool
    #: One codec, or a codec per leaf column path.
    compression: dict[str, str] | str
    #: Columns written with an encoding other than plain (``DELTA_BINARY_PACKED``).
    column_encoding: dict[str, str] = dataclasses.field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The layout as keyword arguments of ``pyarrow.parquet.ParquetWriter``."""
        out: dict[str, Any] = {
            "use_dictionary": self.use_dictionary,
            "compression": self.compression,
        }
        if self.column_encoding:
            out["column_encoding"] = self.column_encoding
        return out


def _sample_sizes(
    table: pa.Table,
    use_dictionary: list[str] | bool,
    codec: str,
    column_encoding: dict[str, str] | None = None,
) -> dict[str, tuple[int, int]]:
    """(compressed, uncompressed) bytes of each leaf column of ``table`` written to memory."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=codec,
        use_dictionary=use_dictionary,
        write_statistics=False,
        column_encoding=column_encoding,
    )
    meta = pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata.row_group(0)
    out: dict[str, tuple[int, int]] = {}
    for i in range(meta.num_columns):
        col = meta.column(i)
        out[col.path_in_schema] = (col.total_compressed_size, col.total_uncompressed_size)
    return out


def parquet_layout(table: pa.Table, codec: str = "snappy") -> ParquetLayout:
    """The encoding of a Parquet file of batches like ``table``, judged on its first rows.

    The columns :func:`dictionary_columns` proposes (at most half of the sampled rows
    distinct) are written to memory with a dictionary and plain, both compressed with
    ``codec``; a column keeps its dictionary when that makes it at most three quarters of
    the plain size (integers and times often compress as well plain, without hashing every
    value). Then each column keeps ``codec`` where it shrinks the column's pages to at most
    90 % (80 % for a dictionary column as written with its dictionary, whose bit-packed
    indices compress little; the others on their first 16,384 rows written plain); the
    others (free text, random numbers) are written
    uncompressed, as the codec would spend CPU on them for little. Last, an integer or time
    column is written delta-encoded (``DELTA_BINARY_PACKED``, uncompressed) when that is at
    most 1.1 times the size chosen so far with a codec or a dictionary (it costs less CPU
    than either), or at most 90 % of its plain uncompressed size. Columns that are Arrow
    dictionaries keep them (Arrow writes their dictionary and indices without hashing the
    values). Below 1,024 rows the sample says little: Arrow's default (a dictionary for
    every column, ``codec`` for all).

    Examples
    --------
    >>> import numpy as np
    >>> import polars as pl
    >>> rng = np.random.default_rng(0)
    >>> frame = pl.DataFrame(
    ...     {
    ...         "id": np.arange(4_096) + 10**12,
    ...         "noise": rng.random(4_096),
    ...         "word": rng.choice(["apple", "pear", "plum"], 4_096),
    ...         "url": [f"https://shop.example/item/{i}" for i in range(4_096)],
    ...     }
    ... )
    >>> layout = parquet_layout(frame.to_arrow())
    >>> layout.use_dictionary
    ['word']
    >>> layout.compression
    {'id': 'none', 'noise': 'none', 'word': 'none', 'url': 'snappy'}
    >>> layout.column_encoding
    {'id': 'DELTA_BINARY_PACKED'}
    """
    frame = pl.from_arrow(table.slice(0, _DICT_SAMPLE_MAX))
    assert isinstance(frame, pl.DataFrame)
    proposed = dictionary_columns(frame)
    # Columns that come as dictionaries are written with them: their values are hashed
    # once already, and Arrow writes the given dictionary and indices as they are.
    given = [f.name for f in table.schema if pa.types.is_dictionary(f.type)]
    if isinstance(proposed, list):
        proposed = [*proposed, *(c for c in given if c not in proposed)]
    if proposed is True or codec == "none":
        return ParquetLayout(proposed, codec)
    # Every column plain, on a smaller sample (wide text columns are costly to write).
    small = table.slice(0, _LAYOUT_SAMPLE)
    sizes = _sample_sizes(small, False, codec)
    chosen: list[str] = []
    scale = 1.0
    if proposed:
        # The proposed columns with their dictionaries, on the whole sample (a dictionary is
        # spread over a batch's rows: a smaller sample would undervalue it), against their
        # plain sizes scaled up (those grow with the rows).
        part = table.slice(0, _DICT_SAMPLE_MAX).select(proposed)
        coded = _sample_sizes(part, True, codec)
        scale = part.num_rows / max(small.num_rows, 1)
        chosen = [
            c
            for c in proposed
            if c in given or coded[c][0] <= _DICT_MAX_RATIO * scale * sizes[c][0]
        ]
        sizes.update({c: coded[c] for c in chosen})
    compression = {
        path: codec
        if packed <= (_DICT_CODEC_MAX_RATIO if path in chosen else _CODEC_MAX_RATIO) * max(raw, 1)
        else "none"
        for path, (packed, raw) in sizes.items()
    }
    # The written size of each column as laid out so far, per row of the small sample.
    written = {
        path: (packed if compression[path] != "none" else raw) / (scale if path in chosen else 1.0)
        for path, (packed, raw) in sizes.items()
    }
    encoding: dict[str, str] = {}
    ints = [f.name for f in table.schema if _is_any(f.type, _DELTA_TYPES)]
    if ints:
        delta = {c: "DELTA_BINARY_PACKED" for c in ints}
        packed = _sample_sizes(small.select(ints), False, "none", delta)
        for c in ints:
            # Against a codec or a dictionary delta saves CPU; against plain uncompressed
            # pages (nearly a copy) it must save space, as a codec must.
            worth = (
                _DELTA_MAX_RATIO if c in chosen or compression[c] != "none" else _CODEC_MAX_RATIO
            )
            if packed[c][0] <= worth * written[c]:
                encoding[c] = "DELTA_BINARY_PACKED"
                compression[c] = "none"
        chosen = [c for c in chosen if c not in encoding]
    return ParquetLayout(chosen, compression, encoding)


def parquet_table(frame: pl.DataFrame) -> pa.Table:
    """``frame`` as an Arrow table for Arrow's Parquet writer, without copying its text.

    Flat text stays in Polars' string views; categorical and enum columns become
    dictionaries of large strings, and nested columns hold large strings (the writer cannot
    write dictionaries of string views, nor slice views inside lists and structs).

    Examples
    --------
    >>> import polars as pl
    >>> c = pl.Series(["x", "y"], dtype=pl.Categorical)
    >>> frame = pl.DataFrame({"s": ["a", "b"], "c": c, "l": [["p"], ["q", "r"]]})
    >>> [str(t) for t in parquet_table(frame).schema.types]
    ['string_view', 'dictionary<values=large_string, indices=uint32, ordered=0>', 'large_list<item: large_string>']
    """
    table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
    kinds = (pl.Categorical, pl.Enum, *_NESTED)
    coded = [n for n, t in frame.schema.items() if isinstance(t, kinds)]
    if coded:
        large = frame.select(coded).to_arrow(compat_level=pl.CompatLevel.oldest())
        for name in coded:
            at = table.schema.get_field_index(name)
            table = table.set_column(at, large.schema.field(name), large.column(name))
    return table


#: How Arrow dictionary columns are declared in a Parquet file's Arrow schema.
ParquetDictionarySchema = Literal["dictionary", "values"]
_DICTIONARY_SCHEMAS: tuple[str, ...] = get_args(ParquetDictionarySchema)


def values_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with each dictionary column declared as its value type.

    Examples
    --------
    >>> import pyarrow as pa
    >>> values_schema(pa.schema([("s", pa.dictionary(pa.int32(), pa.large_string()))]))
    s: large_string
    """
    fields = [
        f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


def open_parquet_writer(
    path: str,
    schema: pa.Schema,
    first: pl.DataFrame,
    *,
    statistics: ParquetStatistics = "numeric",
    dictionary_schema: ParquetDictionarySchema = "dictionary",
    **options: Any,
) -> pq.ParquetWriter:
    """A streaming Parquet writer for batches like ``first``, laid out by
    :func:`parquet_layout` (unless ``options`` name ``use_dictionary`` or ``compression``).

    ``statistics`` chooses the columns with min/max statistics (see
    :func:`statistics_columns`). Columns of ``schema`` that are Arrow dictionaries are
    written with their dictionaries and indices as they come (no hashing of their values;
    a batch whose dictionary differs from the first of its row group is written by value);
    ``dictionary_schema="values"`` declares them in the file as their value type (readers
    see plain text columns), ``"dictionary"`` as dictionaries (categoricals). ``options`` go
    to :class:`pyarrow.parquet.ParquetWriter`.

    Examples
    --------
    >>> import os, tempfile
    >>> import polars as pl
    >>> import pyarrow as pa
    >>> import pyarrow.parquet as pq
    >>> frame = pl.DataFrame({"id": range(3), "kind": ["a", "b", "a"]})
    >>> table = frame.to_arrow()
    >>> path = os.path.join(tempfile.mkdtemp(), "out.parquet")
    >>> writer = open_parquet_writer(path, table.schema, frame, statistics="all")
    >>> writer.write_table(table)
    >>> writer.close()
    >>> pl.read_parquet(path).equals(frame)
    True
    >>> kind = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0]), pa.array(["a", "b"]))
    >>> coded = pa.table({"id": [0, 1, 2], "kind": kind})
    >>> first = pl.from_arrow(coded)
    >>> writer = open_parquet_writer(path, coded.schema, first, dictionary_schema="values")
    >>> writer.write_table(coded)
    >>> writer.close()
    >>> pq.read_schema(path).field("kind").type
    DataType(string)
    """
    check_statistics("parquet", statistics)
    if dictionary_schema not in _DICTIONARY_SCHEMAS:
        choices = ", ".join(repr(c) for c in _DICTIONARY_SCHEMAS)
        msg = f"parquet: unknown dictionary_schema={dictionary_schema!r}; choose one of {choices}"
        raise ConfigError(msg)
    if "use_dictionary" not in options or "compression" not in options:
        sample = parquet_table(first.head(_DICT_SAMPLE_MAX))
        layout = parquet_layout(sample.cast(schema)).options()
        if "use_dictionary" in options:  # a column cannot have both a dictionary and delta
            layout.pop("column_encoding", None)
        for key, value in layout.items():
            options.setdefault(key, value)
    options.setdefault("write_statistics", statistics_columns(schema, statistics))
    coded = any(pa.types.is_dictionary(f.type) for f in schema)
    if dictionary_schema == "dictionary" or not coded:
        return pq.ParquetWriter(path, schema, **options)
    # Arrow stores the schema it writes; the file declares the values' types instead (the
    # pages are the same: a Parquet dictionary column is text either way).
    writer = pq.ParquetWriter(path, schema, store_schema=False, **options)
    declared = base64.b64encode(values_schema(schema).serialize().to_pybytes())
    writer.add_key_value_metadata({"ARROW:schema": declared.decode("ascii")})
    return writer


_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def _partition_value(value: object) -> str:
    if value is None:
        return _NULL_PARTITION
    return urllib.parse.quote(str(value), safe=" -_.,:@+")


@dataclasses.dataclass(slots=True)
class _Part:
    directory: str
    temp: str
    final: str
    writer: pq.ParquetWriter
    schema: pa.Schema
    opened: float
    rows: int = 0


class _ParquetWriter(SinkWriter):
    def __init__(self, settings: SinkParquet, ctx: SinkContext) -> None:
        self._s = settings
        self._ctx = ctx
        self._open: dict[str, _Part] = {}
        self._done: list[str] = []
        self._seq = 0
        os.makedirs(settings.path, exist_ok=True)
        prefix = f"part-{ctx.worker_index:04d}-"
        for root, _, names in os.walk(settings.path):
            for name in names:
                m = _PART.match(name)
                if m and int(m.group(1)) == ctx.worker_index:
                    self._seq = max(self._seq, int(m.group(2)) + 1)
                elif name.startswith("." + prefix) and name.endswith(".tmp"):
                    # an unfinished part of an earlier run of this worker: never visible
                    os.remove(os.path.join(root, name))

    def _roll_due(self, part: _Part, now: float) -> bool:
        if part.rows >= self._s.roll_rows:
            return True
        interval = self._s.roll_interval
        return interval is not None and now - part.opened >= interval.total_seconds()

    def _start(self, directory: str, schema: pa.Schema, first: pl.DataFrame) -> _Part:
        os.makedirs(directory, exist_ok=True)
        name = f"part-{self._ctx.worker_index:04d}-{self._seq:06d}.parquet"
        self._seq += 1
        temp = os.path.join(directory, f".{name}.tmp")
        final = os.path.join(directory, name)
        try:
            writer = open_parquet_writer(temp, schema, first, statistics=self._s.statistics)
        except (OSError, pa.ArrowException) as exc:
            msg = f"step {self._ctx.step_id!r}: cannot create {temp!r}: {exc}"
            raise ConnectorError(msg) from exc
        return _Part(directory, temp, final, writer, schema, time.monotonic())

    def _finish(self, key: str) -> None:
        part = self._open.pop(key)
        part.writer.close()
        os.replace(part.temp, part.final)
        self._done.append(part.final)
        logger.debug("step %r: wrote %s (%d rows)", self._ctx.step_id, part.final, part.rows)

    def _append(self, key: str, directory: str, frame: pl.DataFrame) -> None:
        # Arrow's view types as Polars holds them: no copy of the string buffers.
        table = parquet_table(frame)
        part = self._open.get(key)
        if part is not None and not table.schema.equals(part.schema):
            try:
                table = table.cast(part.schema)
            except (pa.ArrowException, ValueError):
                self._finish(key)  # the schema changed: start a new part file
                part = None
        if part is None:
            part = self._open[key] = self._start(directory, table.schema, frame)
        room = self._s.roll_rows - part.rows
        if table.num_rows > room:
            part.writer.write_table(table.slice(0, room))
            part.rows += room
            self._finish(key)
            self._append(key, directory, frame.slice(room))
            return
        part.writer.write_table(table)
        part.rows += table.num_rows
        if self._roll_due(part, time.monotonic()):
            self._finish(key)

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        keys = list(self._s.partition_by)
        missing = [k for k in keys if k not in batch.columns]
        if missing:
            msg = (
                f"step {self._ctx.step_id!r}: partition_by names {missing} but the batch has "
                f"columns {batch.columns}; fix partition_by"
            )
            raise ConnectorError(msg)
        if not keys:
            self._append("", self._s.path, batch)
        else:
            for values, group in batch.group_by(keys, maintain_order=True):
                sub = "/".join(
                    f"{k}={_partition_value(v)}" for k, v in zip(keys, values, strict=True)
                )
                self._append(sub, os.path.join(self._s.path, sub), group.drop(keys))
        self._roll_by_time()

    def _roll_by_time(self) -> None:
        if self._s.roll_interval is None:
            return
        now = time.monotonic()
        for key in [k for k, p in self._open.items() if self._roll_due(p, now)]:
            self._finish(key)

    def flush(self) -> None:
        self._roll_by_time()

    def snapshot(self) -> dict[str, Any]:
        return {f"{self._s.path}#{self._ctx.worker_index}": {"next_seq": self._seq}}

    def close(self) -> None:
        for key in list(self._open):
            self._finish(key)

    @property
    def files(self) -> list[str]:
        """The part files completed so far."""
        return list(self._done)


@dataclasses.dataclass(frozen=True)
class SinkParquet(Sink):
    """Settings of :func:`tideflow.connectors.files.sink_parquet`."""

    path: str
    partition_by: tuple[str, ...] = ()
    roll_rows: int = 1_000_000
    roll_interval: timedelta | None = None
    statistics: ParquetStatistics = "numeric"

    def validate(self, step_id: str) -> None:
        check_statistics(step_id, self.statistics)
        if not isinstance(self.roll_rows, int) or self.roll_rows < 1:
            msg = f"step {step_id!r}: roll_rows must be a positive integer, got {self.roll_rows!r}"
            raise ConfigError(msg)
        if self.roll_interval is not None and (
            not isinstance(self.roll_interval, timedelta) or self.roll_interval <= timedelta(0)
        ):
            msg = (
                f"step {step_id!r}: roll_interval must be a positive timedelta or None, got "
                f"{self.roll_interval!r}"
            )
            raise ConfigError(msg)
        if os.path.isfile(self.path):
            msg = f"step {step_id!r}: {self.path!r} is a file; sink_parquet writes a directory"
            raise ConfigError(msg)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            msg = f"step {step_id!r}: the directory {parent!r} does not exist; create it first"
            raise ConfigError(msg)

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        return _ParquetWriter(self, ctx)
