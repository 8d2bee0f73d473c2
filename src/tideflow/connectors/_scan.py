"""Bounded file sources: text, CSV, JSON lines (byte ranges) and Parquet (row groups)."""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import (
    Source,
    SourceBatch,
    SourceContext,
    SourceReader,
)
from tideflow.connectors._lines import (
    FilePart,
    assign,
    count_newlines,
    expand_paths,
    find_line_start,
    plan_ranges,
    read_aligned,
)
from tideflow.connectors._parse import (
    CsvParser,
    JsonlParser,
    Parsed,
    Parser,
    TextParser,
    count_lines,
    infer_csv_schema,
    infer_jsonl_schema,
    split_csv_header,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_SPLIT_BYTES",
    "ScanCsv",
    "ScanJsonl",
    "ScanParquet",
    "ScanText",
    "check_sizes",
    "csv_header",
    "sample_lines",
]

logger = logging.getLogger(__name__)

#: Byte size of the ranges large files are cut into (the unit of work split between workers);
#: ``None`` derives it from the total input size (see :func:`plan_ranges`).
DEFAULT_SPLIT_BYTES: int | None = None
#: Bytes read and parsed at a time (then sliced into micro-batches of ``ctx.batch_size`` rows).
DEFAULT_CHUNK_BYTES = 4 << 20
#: Bytes of the first file used to infer a schema.
_SAMPLE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"

PathArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def check_sizes(step_id: str, split_bytes: int | None, chunk_bytes: int) -> None:
    """Validate the byte-size settings of a line source."""
    for name, value in (("split_bytes", split_bytes), ("chunk_bytes", chunk_bytes)):
        if name == "split_bytes" and value is None:
            continue
        if not isinstance(value, int) or value < 1:
            msg = f"step {step_id!r}: {name} must be a positive integer, got {value!r}"
            raise ConfigError(msg)


def _check_separator(step_id: str, separator: str) -> None:
    if not isinstance(separator, str) or len(separator) != 1 or separator in '\r\n"':
        msg = (
            f"step {step_id!r}: separator must be one character other than a quote or a "
            f"line break, got {separator!r}; pass separator=',' or separator='\\t'"
        )
        raise ConfigError(msg)


def _check_schema(step_id: str, schema: Mapping[str, Any] | None) -> pl.Schema | None:
    if schema is None:
        return None
    try:
        return pl.Schema(schema)
    except (TypeError, ValueError) as exc:
        msg = (
            f"step {step_id!r}: schema must map column names to Polars types "
            f"(for example {{'id': pl.Int64}}), got {schema!r}: {exc}"
        )
        raise ConfigError(msg) from exc


def sample_lines(path: str, start: int = 0, size: int = _SAMPLE_BYTES) -> bytes:
    """Whole lines from the beginning of ``path`` (at most about ``size`` bytes)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(size + 1)
    if start == 0 and data.startswith(_BOM):
        data = data[3:]
    if len(data) > size:
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut >= 0 else b""
    return data


def csv_header(path: str, separator: str) -> tuple[list[str], int]:
    """Column names from the first line of ``path`` and the byte length of that line."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        while b"\n" not in head:
            more = f.read(1 << 16)
            if not more:
                break
            head += more
    end = head.find(b"\n")
    line = head if end < 0 else head[: end + 1]
    return split_csv_header(line, separator), len(line)


@dataclasses.dataclass(slots=True)
class _Range:
    """Runtime state of one partition (byte range)."""

    part: FilePart
    offset: int | None = None  # next byte to read; None until aligned to a line start
    line: int = 0  # lines consumed in this range so far
    done: bool = False
    base: int | None = None  # absolute 1-based line number of the range's first line
    pending: Parsed | None = None
    chunk_start: int = 0
    chunk_end: int = 0
    chunk_line: int = 0
    chunk_lines: int = 0
    emitted: int = 0


def schema_with_file_time(
    schema: dict[str, pl.DataType], column: str | None
) -> dict[str, pl.DataType]:
    """``schema`` plus the file-time column, when one is asked for."""
    if column is None:
        return schema
    return {**schema, column: pl.Datetime("us", "UTC")}


def with_file_time(data: pl.DataFrame, path: str, column: str) -> pl.DataFrame:
    """Add the file's modification time (UTC, microseconds) as ``column``."""
    micros = os.stat(path).st_mtime_ns // 1000
    return data.with_columns(
        pl.lit(micros, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")).alias(column)
    )


class LineReader(SourceReader):
    """Reads the byte ranges one worker owns, chunk by chunk, sliced to the batch size."""

    def __init__(
        self,
        ctx: SourceContext,
        parts: list[FilePart],
        parser_for: Callable[[str], Parser],
        *,
        header: bool,
        chunk_bytes: int,
    ) -> None:
        self._ctx = ctx
        self.file_time: str | None = None
        self._parser_for = parser_for
        self._parsers: dict[str, Parser] = {}
        self._header = header
        self._chunk_bytes = chunk_bytes
        self._ranges = [_Range(p) for p in parts]
        self._cur = 0
        self._fd: int | None = None
        self._fd_path: str | None = None
        self._known: dict[str, dict[int, int]] = {}
        for r in self._ranges:
            pos = ctx.resume.get(r.part.key)
            if isinstance(pos, Mapping):
                self._restore(r, pos)
        self._skip_done()

    # -- positions -----------------------------------------------------------------------
    def _restore(self, r: _Range, pos: Mapping[str, Any]) -> None:
        if pos.get("done"):
            r.done = True
            return
        r.offset = int(pos["offset"])
        r.line = int(pos.get("line", 0))
        if "skip" in pos and "chunk_end" in pos:
            end = int(pos["chunk_end"])
            data = os.pread(self._open(r.part.path), end - r.offset, r.offset)
            parsed = self._parser(r.part.path).parse(data)
            parsed.bad = []  # already delivered with the first slice of this chunk
            self._set_pending(r, parsed, r.offset, data)
            r.emitted = int(pos["skip"])

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self._ranges:
            if r.done and r.pending is None:
                out[r.part.key] = {"done": True}
            elif r.pending is not None and r.emitted > 0:
                out[r.part.key] = {
                    "offset": r.chunk_start,
                    "line": r.chunk_line,
                    "chunk_end": r.chunk_end,
                    "skip": r.emitted,
                }
            elif r.pending is not None:
                out[r.part.key] = {"offset": r.chunk_start, "line": r.chunk_line}
            elif r.offset is not None:
                out[r.part.key] = {"offset": r.offset, "line": r.line}
        return out

    # -- reading -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._cur >= len(self._ranges)

    def _open(self, path: str) -> int:
        if self._fd_path != path:
            self.close()
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                msg = f"step {self._ctx.step_id!r}: cannot open {path!r}: {exc}"
                raise ConnectorError(msg) from exc
            self._fd_path = path
        assert self._fd is not None
        return self._fd

    def _parser(self, path: str) -> Parser:
        parser = self._parsers.get(path)
        if parser is None:
            parser = self._parsers[path] = self._parser_for(path)
        return parser

    def _set_pending(self, r: _Range, parsed: Parsed, start: int, data: bytes) -> None:
        r.pending = parsed
        r.chunk_start = start
        r.chunk_end = start + len(data)
        r.chunk_line = r.line
        r.chunk_lines = parsed.lines if parsed.lines is not None else count_lines(data)
        r.emitted = 0

    def _align(self, r: _Range, fd: int) -> None:
        part = r.part
        if part.start > 0:
            start = find_line_start(fd, part.start)
            r.offset = part.end if start is None else start
            return
        head = os.pread(fd, 3, 0)
        r.offset = 3 if head == _BOM else 0
        r.base = 1
        if self._header and r.offset < part.end:
            r.offset = csv_header(r.part.path, ",")[1]
            r.line = 1

    def _read_next(self, r: _Range) -> None:
        fd = self._open(r.part.path)
        if r.offset is None:
            self._align(r, fd)
        assert r.offset is not None
        if r.offset >= r.part.end:
            r.done = True
            return
        data, _ = read_aligned(fd, r.offset, r.part.end, self._chunk_bytes, eof_is_newline=True)
        if not data:
            r.done = True
            return
        self._set_pending(r, self._parser(r.part.path).parse(data), r.offset, data)

    def _newlines_before(self, path: str, offset: int) -> int:
        """Newlines in ``path[:offset]``, counted from the nearest point already known."""
        known = self._known.setdefault(path, {0: 0})
        start = max(k for k in known if k <= offset)
        n = known[start] + count_newlines(path, offset, start)
        known[offset] = n
        return n

    def _base_line(self, r: _Range) -> int:
        if r.base is None:
            if r.part.start == 0:
                r.base = 1
            else:
                first = find_line_start(self._open(r.part.path), r.part.start)
                end = first if first is not None else r.part.end
                r.base = 1 + self._newlines_before(r.part.path, end)
        return r.base

    def _emit(self, r: _Range) -> SourceBatch | None:
        parsed = r.pending
        assert parsed is not None
        n = self._ctx.batch_size
        data = parsed.data.slice(r.emitted, n)
        dead = None
        if parsed.bad:
            dead = parsed.take_dead(
                self._ctx.step_id, r.part.path, self._base_line(r) + r.chunk_line
            )
        r.emitted += data.height
        if r.emitted >= parsed.data.height:
            r.pending = None
            r.offset = r.chunk_end
            r.line = r.chunk_line + r.chunk_lines
            if r.offset >= r.part.end:
                r.done = True
                if r.base is not None:  # the next range of this file can start counting here
                    self._known.setdefault(r.part.path, {0: 0})[r.offset] = r.base - 1 + r.line
                self._skip_done()
        if data.height == 0 and dead is None:
            return None
        if self.file_time is not None and data.height:
            data = with_file_time(data, r.part.path, self.file_time)
        return SourceBatch(data, dead)

    def _skip_done(self) -> None:
        """Move past finished ranges, so ``finished`` turns true with the last batch."""
        while self._cur < len(self._ranges):
            r = self._ranges[self._cur]
            if not (r.done and r.pending is None):
                return
            self._cur += 1
        self.close()

    def poll(self) -> SourceBatch | None:
        while self._cur < len(self._ranges):
            r = self._ranges[self._cur]
            if r.pending is not None:
                batch = self._emit(r)
                if batch is not None:
                    return batch
                continue
            if r.done:
                self._cur += 1
                continue
            self._read_next(r)
        self.close()
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._fd_path = None


@dataclasses.dataclass(frozen=True)
class _LineScan(Source):
    """Common settings of the line-oriented bounded sources."""

    paths: tuple[str, ...]
    split_bytes: int | None = DEFAULT_SPLIT_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: Name of a column to add with the file's modification time (UTC), or None.
    file_time: str | None = None

    _suffixes: tuple[str, ...] = dataclasses.field(default=(), init=False, repr=False)
    _header: bool = dataclasses.field(default=False, init=False, repr=False)

    @property
    def bounded(self) -> bool:
        return True

    def _files(self, step_id: str) -> list[str]:
        return expand_paths(step_id, list(self.paths), self._suffixes)

    def _with_time(self, schema: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
        return schema_with_file_time(schema, self.file_time)

    def validate(self, step_id: str) -> None:
        check_sizes(step_id, self.split_bytes, self.chunk_bytes)
        self._files(step_id)

    def _parser_factory(self, step_id: str, files: list[str]) -> Callable[[str], Parser]:
        raise NotImplementedError

    def build(self, ctx: SourceContext) -> SourceReader:
        self.validate(ctx.step_id)
        files = self._files(ctx.step_id)
        factory = self._parser_factory(ctx.step_id, files)
        parts = assign(plan_ranges(files, self.split_bytes), ctx.worker_index, ctx.worker_count)
        reader = LineReader(ctx, parts, factory, header=self._header, chunk_bytes=self.chunk_bytes)
        reader.file_time = self.file_time
        return reader


@dataclasses.dataclass(frozen=True)
class ScanText(_LineScan):
    """Settings of :func:`tideflow.connectors.files.scan_text`."""

    column: str = "line"

    def validate(self, step_id: str) -> None:
        if not isinstance(self.column, str) or not self.column:
            msg = f"step {step_id!r}: column must be a non-empty string, got {self.column!r}"
            raise ConfigError(msg)
        super().validate(step_id)

    def schema(self) -> dict[str, pl.DataType] | None:
        return self._with_time({self.column: pl.String()})

    def _parser_factory(self, step_id: str, files: list[str]) -> Callable[[str], Parser]:
        parser = TextParser(self.column)
        return lambda path: parser


@dataclasses.dataclass(frozen=True)
class ScanCsv(_LineScan):
    """Settings of :func:`tideflow.connectors.files.scan_csv`."""

    user_schema: Mapping[str, Any] | None = None
    has_header: bool = True
    separator: str = ","

    _suffixes: tuple[str, ...] = dataclasses.field(default=(".csv", ".tsv"), init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_header", bool(self.has_header))

    def validate(self, step_id: str) -> None:
        _check_separator(step_id, self.separator)
        schema = _check_schema(step_id, self.user_schema)
        super().validate(step_id)
        if not self.has_header and schema is None:
            return
        files = self._files(step_id)
        if self.has_header and schema is not None:
            names, _ = csv_header(files[0], self.separator)
            unknown = [n for n in schema if n not in names]
            if unknown:
                msg = (
                    f"step {step_id!r}: the schema names columns {unknown} that the header of "
                    f"{files[0]!r} does not have (it has {names}); fix the schema's names"
                )
                raise ConfigError(msg)

    def _reference(self, step_id: str, files: list[str]) -> tuple[list[str], pl.Schema]:
        """Column names and types: from the first file with a header and the first with data."""
        overrides = _check_schema(step_id, self.user_schema)
        names: list[str] = []
        sample = b""
        for path in files:
            if self.has_header:
                own, header_len = csv_header(path, self.separator)
                if not own or own == [""]:
                    continue  # an empty file
                names = names or own
                if sorted(own) != sorted(names):
                    continue
                sample = sample_lines(path, header_len)
                if own != names and sample:
                    reordered = (
                        CsvParser(
                            own, infer_csv_schema(sample, own, self.separator, None), self.separator
                        )
                        .parse(sample)
                        .data.select(names)
                    )
                    sample = reordered.write_csv(include_header=False).encode()
            else:
                sample = sample_lines(path)
            if sample.strip():
                break
        if not self.has_header:
            if overrides is not None:
                names = list(overrides)
            else:
                line = sample.split(b"\n", 1)[0]
                width = len(split_csv_header(line, self.separator)) if line else 1
                names = [f"column_{i + 1}" for i in range(width)]
        if overrides is not None and all(n in overrides for n in names):
            return names, pl.Schema({n: overrides[n] for n in names})
        return names, infer_csv_schema(sample, names, self.separator, overrides)

    def schema(self) -> dict[str, pl.DataType] | None:
        try:
            files = self._files("?")
        except ConfigError:
            return None
        return self._with_time(dict(self._reference("?", files)[1]))

    def _parser_factory(self, step_id: str, files: list[str]) -> Callable[[str], Parser]:
        names, schema = self._reference(step_id, files)

        def make(path: str) -> Parser:
            if not self.has_header:
                return CsvParser(names, schema, self.separator)
            own, _ = csv_header(path, self.separator)
            if not own or own == [""]:
                return CsvParser(names, schema, self.separator)  # an empty file
            if sorted(own) != sorted(names):
                msg = (
                    f"step {step_id!r}: {path!r} has columns {own} but {files[0]!r} has "
                    f"{names}; every file of one source must have the same columns"
                )
                raise ConnectorError(msg)
            return _Reordered(CsvParser(own, schema, self.separator), names)

        return make


class _Reordered(Parser):
    """Put a parser's columns into the source's column order."""

    def __init__(self, inner: Parser, names: list[str]) -> None:
        self.inner = inner
        self.names = names
        self.schema = pl.Schema({n: inner.schema[n] for n in names})

    def parse(self, chunk: bytes) -> Parsed:
        parsed = self.inner.parse(chunk)
        if parsed.data.columns != self.names:
            parsed.data = parsed.data.select(self.names)
        return parsed


@dataclasses.dataclass(frozen=True)
class ScanJsonl(_LineScan):
    """Settings of :func:`tideflow.connectors.files.scan_jsonl`."""

    user_schema: Mapping[str, Any] | None = None
    required: tuple[str, ...] | None = None

    _suffixes: tuple[str, ...] = dataclasses.field(
        default=(".jsonl", ".ndjson", ".json"), init=False, repr=False
    )

    def validate(self, step_id: str) -> None:
        schema = _check_schema(step_id, self.user_schema)
        if self.required is not None and schema is not None:
            unknown = [n for n in self.required if n not in schema]
            if unknown:
                msg = (
                    f"step {step_id!r}: required fields {unknown} are not in the schema "
                    f"{list(schema)}; add them to the schema or drop them from required"
                )
                raise ConfigError(msg)
        super().validate(step_id)

    def _resolve(self, step_id: str, files: list[str]) -> tuple[pl.Schema, list[str]]:
        overrides = _check_schema(step_id, self.user_schema)
        if overrides is not None:
            schema = overrides
        else:
            schema = pl.Schema()
            for path in files:  # the first file with data
                schema = infer_jsonl_schema(sample_lines(path), None)
                if schema:
                    break
        if self.required is not None:
            required = list(self.required)
        else:
            required = list(overrides) if overrides is not None else []
        return schema, required

    def schema(self) -> dict[str, pl.DataType] | None:
        try:
            files = self._files("?")
        except ConfigError:
            return None
        return self._with_time(dict(self._resolve("?", files)[0]))

    def _parser_factory(self, step_id: str, files: list[str]) -> Callable[[str], Parser]:
        schema, required = self._resolve(step_id, files)
        parser = JsonlParser(schema, required)
        return lambda path: parser


# -- Parquet ---------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Group:
    part: FilePart
    row: int = 0
    done: bool = False
    table: pl.DataFrame | None = None


class ParquetReader(SourceReader):
    """Reads the row groups one worker owns, sliced to the batch size."""

    def __init__(
        self,
        ctx: SourceContext,
        parts: list[FilePart],
        hive: Mapping[str, dict[str, str | None]] | None = None,
        columns: frozenset[str] | None = None,
    ) -> None:
        self._ctx = ctx
        self._hive = hive or {}
        self._columns = columns
        self._groups = [_Group(p) for p in parts]
        self._cur = 0
        self._file: pq.ParquetFile | None = None
        self._file_path: str | None = None
        for g in self._groups:
            pos = ctx.resume.get(g.part.key)
            if isinstance(pos, Mapping):
                g.done = bool(pos.get("done"))
                g.row = int(pos.get("row", 0))

    @property
    def finished(self) -> bool:
        return self._cur >= len(self._groups)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g in self._groups:
            if g.done:
                out[g.part.key] = {"done": True}
            elif g.row:
                out[g.part.key] = {"row": g.row}
        return out

    def _load(self, g: _Group) -> pl.DataFrame:
        if self._file_path != g.part.path:
            self.close()
            try:
                self._file = pq.ParquetFile(g.part.path)
            except (OSError, ValueError) as exc:
                msg = f"step {self._ctx.step_id!r}: cannot read {g.part.path!r}: {exc}"
                raise ConnectorError(msg) from exc
            self._file_path = g.part.path
        assert self._file is not None
        read = None
        if self._columns is not None:
            read = [c for c in self._file.schema_arrow.names if c in self._columns]
        frame = pl.from_arrow(self._file.read_row_group(g.part.start, columns=read))
        assert isinstance(frame, pl.DataFrame)
        cols = self._hive.get(g.part.path)
        if cols:
            frame = frame.with_columns(
                pl.lit(v, dtype=pl.String).alias(k)
                for k, v in cols.items()
                if k not in frame.columns
            )
        return frame

    def poll(self) -> SourceBatch | None:
        while self._cur < len(self._groups):
            g = self._groups[self._cur]
            if g.done:
                self._cur += 1
                continue
            if g.table is None:
                g.table = self._load(g)
            data = g.table.slice(g.row, self._ctx.batch_size)
            g.row += data.height
            if g.row >= g.table.height:
                g.done = True
                g.table = None
                while self._cur < len(self._groups) and self._groups[self._cur].done:
                    self._cur += 1
            if data.height:
                return SourceBatch(data)
        self.close()
        return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._file_path = None


@dataclasses.dataclass(frozen=True)
class ScanParquet(Source):
    """Settings of :func:`tideflow.connectors.files.scan_parquet`."""

    paths: tuple[str, ...]
    #: Read only these columns (None: all); set by the runtime's projection pushdown.
    columns: frozenset[str] | None = None

    def project(self, columns: frozenset[str]) -> ScanParquet:
        """The same files, reading only ``columns``."""
        return dataclasses.replace(self, columns=columns)

    @property
    def bounded(self) -> bool:
        return True

    def _files(self, step_id: str) -> list[str]:
        return expand_paths(step_id, list(self.paths), (".parquet", ".pq"), recursive=True)

    def validate(self, step_id: str) -> None:
        self._files(step_id)

    def _hive(self, files: list[str]) -> dict[str, dict[str, str | None]]:
        """Hive-style ``key=value`` directories below each input directory, per file."""
        roots = [os.path.abspath(p) for p in self.paths if os.path.isdir(p)]
        out: dict[str, dict[str, str | None]] = {}
        for path in files:
            full = os.path.abspath(path)
            for root in roots:
                if full.startswith(root + os.sep):
                    cols: dict[str, str | None] = {}
                    for seg in os.path.relpath(os.path.dirname(full), root).split(os.sep):
                        key, eq, value = seg.partition("=")
                        if eq and key:
                            raw = urllib.parse.unquote(value)
                            cols[key] = None if raw == _NULL_PARTITION else raw
                    if cols:
                        out[path] = cols
                    break
        return out

    def schema(self) -> dict[str, pl.DataType] | None:
        try:
            files = self._files("?")
        except ConfigError:
            return None
        schema = dict(pl.read_parquet_schema(files[0]))
        for key in self._hive(files[:1]).get(files[0], {}):
            schema.setdefault(key, pl.String())
        return schema

    def build(self, ctx: SourceContext) -> SourceReader:
        files = self._files(ctx.step_id)
        parts: list[FilePart] = []
        for order, path in enumerate(files):
            try:
                meta = pq.read_metadata(path)
            except (OSError, ValueError) as exc:
                msg = f"step {ctx.step_id!r}: cannot read Parquet metadata of {path!r}: {exc}"
                raise ConnectorError(msg) from exc
            for i in range(meta.num_row_groups):
                rows = meta.row_group(i).num_rows
                parts.append(FilePart(f"{path}#rg{i}", path, i, i + 1, order, rows))
        mine = assign(parts, ctx.worker_index, ctx.worker_count)
        return ParquetReader(ctx, mine, self._hive(files), self.columns)
