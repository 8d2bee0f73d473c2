"""Follow mode: an unbounded source over a growing file, directory or glob."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import time
import zlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal, get_args

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import (
    Source,
    SourceBatch,
    SourceContext,
    SourceReader,
)
from tideflow.connectors._lines import read_aligned
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
from tideflow.connectors._scan import DEFAULT_CHUNK_BYTES, schema_with_file_time, with_file_time

__all__ = ["DEFAULT_POLL_INTERVAL", "Follow", "FollowFormat", "FollowReader"]

logger = logging.getLogger(__name__)

FollowFormat = Literal["text", "jsonl", "csv"]
DEFAULT_POLL_INTERVAL = timedelta(milliseconds=200)
_GLOB_CHARS = frozenset("*?[")
_BOM = b"\xef\xbb\xbf"


def _owner(path: str, worker_count: int) -> int:
    return zlib.crc32(os.path.basename(path).encode("utf-8", "surrogateescape")) % worker_count


@dataclasses.dataclass(frozen=True)
class Follow(Source):
    """Settings of the ``follow_*`` sources in :mod:`tideflow.connectors.files`."""

    path: str
    format: str
    poll_interval: timedelta = DEFAULT_POLL_INTERVAL
    column: str = "line"
    user_schema: Mapping[str, Any] | None = None
    required: tuple[str, ...] | None = None
    has_header: bool = True
    separator: str = ","
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: Name of a column to add with the file's modification time (UTC), or None.
    file_time: str | None = None

    @property
    def bounded(self) -> bool:
        return False

    def _mode(self) -> Literal["dir", "file", "glob"]:
        if os.path.isdir(self.path):
            return "dir"
        if any(c in self.path for c in _GLOB_CHARS) and not os.path.exists(self.path):
            return "glob"
        return "file"

    def validate(self, step_id: str) -> None:
        if self.format not in get_args(FollowFormat):
            msg = (
                f"step {step_id!r}: unknown follow format {self.format!r}; "
                f"use one of {list(get_args(FollowFormat))}"
            )
            raise ConfigError(msg)
        if not isinstance(self.poll_interval, timedelta) or self.poll_interval <= timedelta(0):
            msg = (
                f"step {step_id!r}: poll_interval must be a positive timedelta, got "
                f"{self.poll_interval!r}; pass for example timedelta(milliseconds=200)"
            )
            raise ConfigError(msg)
        if not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 1:
            msg = f"step {step_id!r}: chunk_bytes must be a positive integer"
            raise ConfigError(msg)
        if self.user_schema is not None:
            try:
                pl.Schema(self.user_schema)
            except (TypeError, ValueError) as exc:
                msg = f"step {step_id!r}: schema must map column names to Polars types: {exc}"
                raise ConfigError(msg) from exc
        if self.format == "csv" and (len(self.separator) != 1 or self.separator in '\r\n"'):
            msg = f"step {step_id!r}: separator must be one character, got {self.separator!r}"
            raise ConfigError(msg)
        mode = self._mode()
        parent = self.path if mode == "dir" else os.path.dirname(self.path) or "."
        if mode == "glob":
            parent = os.path.dirname(self.path.split("*")[0].split("?")[0].split("[")[0]) or "."
        if not os.path.isdir(parent):
            msg = (
                f"step {step_id!r}: cannot follow {self.path!r}: the directory {parent!r} does "
                "not exist; create it first or fix the path"
            )
            raise ConfigError(msg)

    def schema(self) -> dict[str, pl.DataType] | None:
        if self.format == "text":
            return self._with_time({self.column: pl.String()})
        if self.user_schema is not None and self.format == "jsonl":
            return self._with_time(dict(pl.Schema(self.user_schema)))
        return None

    def _with_time(self, schema: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
        return schema_with_file_time(schema, self.file_time)

    def list_files(self) -> list[str]:
        """The files the source follows right now, sorted."""
        mode = self._mode()
        if mode == "file":
            return [self.path] if os.path.isfile(self.path) else []
        if mode == "glob":
            return sorted(p for p in glob.glob(self.path) if os.path.isfile(p))
        try:
            with os.scandir(self.path) as it:
                return sorted(
                    e.path for e in it if e.is_file() and not e.name.startswith((".", "_"))
                )
        except FileNotFoundError:
            return []

    def build(self, ctx: SourceContext) -> SourceReader:
        self.validate(ctx.step_id)
        return FollowReader(self, ctx)


@dataclasses.dataclass(slots=True)
class _File:
    path: str
    offset: int = 0
    line: int = 0
    parser: Parser | None = None
    names: list[str] | None = None
    fd: int | None = None
    pending: Parsed | None = None
    chunk_start: int = 0
    chunk_end: int = 0
    chunk_line: int = 0
    chunk_lines: int = 0
    emitted: int = 0


class FollowReader(SourceReader):
    """Tails the files one worker owns; emits complete lines only."""

    def __init__(self, settings: Follow, ctx: SourceContext) -> None:
        self._s = settings
        self._ctx = ctx
        self._interval = settings.poll_interval.total_seconds()
        self._files: dict[str, _File] = {}
        self._hot: list[str] = []
        self._next_scan = 0.0
        self._schema: pl.Schema | None = (
            pl.Schema(settings.user_schema) if settings.user_schema is not None else None
        )
        for key, pos in ctx.resume.items():
            if isinstance(pos, Mapping) and _owner(key, ctx.worker_count) == ctx.worker_index:
                f = self._files[key] = _File(key, int(pos["offset"]), int(pos.get("line", 0)))
                if "skip" in pos and "chunk_end" in pos and os.path.isfile(key):
                    data = os.pread(self._fd(f), int(pos["chunk_end"]) - f.offset, f.offset)
                    fd = self._fd(f)
                    parsed = self._make_parser(f, fd, data).parse(data)
                    parsed.bad = []
                    self._set_pending(f, parsed, data)
                    f.emitted = int(pos["skip"])

    @property
    def finished(self) -> bool:
        return False

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self._files.values():
            if f.pending is not None and f.emitted > 0:
                out[f.path] = {
                    "offset": f.chunk_start,
                    "line": f.chunk_line,
                    "chunk_end": f.chunk_end,
                    "skip": f.emitted,
                }
            elif f.pending is not None:
                out[f.path] = {"offset": f.chunk_start, "line": f.chunk_line}
            else:
                out[f.path] = {"offset": f.offset, "line": f.line}
        return out

    # -- files ---------------------------------------------------------------------------
    def _fd(self, f: _File) -> int:
        if f.fd is None:
            try:
                f.fd = os.open(f.path, os.O_RDONLY)
            except OSError as exc:
                msg = f"step {self._ctx.step_id!r}: cannot open {f.path!r}: {exc}"
                raise ConnectorError(msg) from exc
        return f.fd

    def _scan(self) -> None:
        listed = self._s.list_files()
        w, n = self._ctx.worker_index, self._ctx.worker_count
        for path in listed:
            if path not in self._files and _owner(path, n) == w:
                self._files[path] = _File(path)
        present = set(listed)
        gone = {p for p in self._files if p not in present}
        for p in gone:
            f = self._files[p]
            if f.pending is None and f.fd is not None:
                os.close(f.fd)
                f.fd = None
        self._hot = [p for p in sorted(self._files) if p not in gone or self._files[p].pending]

    def _make_parser(self, f: _File, fd: int, data: bytes) -> Parser:
        s = self._s
        if s.format == "text":
            f.parser = TextParser(s.column)
        elif s.format == "jsonl":
            if self._schema is None:
                self._schema = infer_jsonl_schema(data, None)
            if s.required is not None:
                required: list[str] = list(s.required)
            else:
                required = list(s.user_schema) if s.user_schema is not None else []
            f.parser = JsonlParser(self._schema, required)
        else:
            f.parser = self._csv_parser(f, fd, data)
        return f.parser

    def _csv_parser(self, f: _File, fd: int, data: bytes) -> Parser:
        sep = self._s.separator
        names = f.names
        if names is None:
            if self._s.has_header:
                head = os.pread(fd, 1 << 16, 0)
                names = split_csv_header(head.split(b"\n", 1)[0], sep)
            elif self._s.user_schema is not None:
                names = list(pl.Schema(self._s.user_schema))
            else:
                width = len(split_csv_header(data.split(b"\n", 1)[0], sep))
                names = [f"column_{i + 1}" for i in range(width)]
            f.names = names
        known = self._schema or pl.Schema()
        schema = dict(known)
        if any(n not in known for n in names):
            schema.update(infer_csv_schema(data, names, sep, pl.Schema(known)))
            self._schema = pl.Schema(schema)
        return CsvParser(names, pl.Schema({n: schema[n] for n in names}), sep)

    def _set_pending(self, f: _File, parsed: Parsed, data: bytes) -> None:
        f.pending = parsed
        f.chunk_start = f.offset
        f.chunk_end = f.offset + len(data)
        f.chunk_line = f.line
        f.chunk_lines = parsed.lines if parsed.lines is not None else count_lines(data)
        f.emitted = 0

    def _read(self, f: _File) -> bool:
        """Read the next complete lines of ``f``; true when it has something pending."""
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            return False
        size = st.st_size
        replaced = f.fd is not None and os.fstat(f.fd).st_ino != st.st_ino
        if size < f.offset or replaced:
            logger.warning(
                "step %r: %s was %s; reading it again from the start",
                self._ctx.step_id,
                f.path,
                "replaced" if replaced else f"truncated to {size} bytes",
            )
            f.offset, f.line, f.parser, f.names = 0, 0, None, None
            if f.fd is not None:
                os.close(f.fd)
                f.fd = None
        if size == f.offset:
            return False
        fd = self._fd(f)
        if f.offset == 0:
            if os.pread(fd, 3, 0) == _BOM:
                f.offset = 3
            if self._s.format == "csv" and self._s.has_header:
                head, _ = read_aligned(fd, f.offset, None, 1 << 16, eof_is_newline=False)
                if not head:
                    return False
                first = head[: head.index(b"\n") + 1]
                f.names = split_csv_header(first, self._s.separator)
                f.offset += len(first)
                f.line = 1
        data, _ = read_aligned(fd, f.offset, None, self._s.chunk_bytes, eof_is_newline=False)
        if not data:
            return False
        parser = f.parser or self._make_parser(f, fd, data)
        self._set_pending(f, parser.parse(data), data)
        return True

    def _emit(self, f: _File) -> SourceBatch | None:
        parsed = f.pending
        assert parsed is not None
        data = parsed.data.slice(f.emitted, self._ctx.batch_size)
        dead = None
        if parsed.bad:
            dead = parsed.take_dead(self._ctx.step_id, f.path, f.chunk_line + 1)
        f.emitted += data.height
        if f.emitted >= parsed.data.height:
            f.pending = None
            f.offset = f.chunk_end
            f.line = f.chunk_line + f.chunk_lines
        if data.height == 0 and dead is None:
            return None
        if self._s.file_time is not None and data.height:
            data = with_file_time(data, f.path, self._s.file_time)
        return SourceBatch(data, dead)

    def poll(self) -> SourceBatch | None:
        now = time.monotonic()
        if now >= self._next_scan:
            self._scan()
            self._next_scan = now + self._interval
        while self._hot:
            f = self._files[self._hot[0]]
            if f.pending is None and not self._read(f):
                self._hot.pop(0)
                continue
            batch = self._emit(f)
            if f.pending is None:
                # round-robin: give the other files a turn before reading more of this one
                self._hot.append(self._hot.pop(0))
            if batch is not None:
                return batch
        return None

    def close(self) -> None:
        for f in self._files.values():
            if f.fd is not None:
                os.close(f.fd)
                f.fd = None
