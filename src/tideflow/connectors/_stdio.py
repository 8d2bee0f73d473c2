"""Standard input source and standard output sink."""

from __future__ import annotations

import dataclasses
import io
import os
import queue
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any, Literal, get_args

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import (
    Sink,
    SinkContext,
    SinkWriter,
    Source,
    SourceBatch,
    SourceContext,
    SourceReader,
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

__all__ = ["ScanStdin", "SinkStdout", "StdinFormat", "StdoutFormat"]

StdinFormat = Literal["text", "jsonl", "csv"]
StdoutFormat = Literal["jsonl", "table"]
_READ = 1 << 20


class _Pump(threading.Thread):
    """Reads a binary stream in the background so ``poll`` never blocks."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(name="tideflow-stdin", daemon=True)
        self.stream = stream
        self.chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=64)

    def run(self) -> None:
        read = getattr(self.stream, "read1", self.stream.read)
        try:
            while True:
                data = read(_READ)
                if not data:
                    break
                self.chunks.put(data)
        except (OSError, ValueError) as exc:
            self.chunks.put(exc)
        self.chunks.put(None)


class StdinReader(SourceReader):
    """Parses complete lines from standard input on worker 0."""

    def __init__(self, settings: ScanStdin, ctx: SourceContext, stream: IO[bytes] | None) -> None:
        self._s = settings
        self._ctx = ctx
        self._buf = b""
        self._eof = stream is None
        self._offset = 0
        self._line = 0
        self._parser: Parser | None = None
        self._pending: Parsed | None = None
        self._pending_line = 0
        self._emitted = 0
        self._pump: _Pump | None = None
        if stream is not None:
            self._pump = _Pump(stream)
            self._pump.start()

    @property
    def finished(self) -> bool:
        return self._eof and not self._buf and self._pending is None

    def snapshot(self) -> dict[str, Any]:
        if self._ctx.worker_index != 0:
            return {}
        return {"stdin": {"offset": self._offset, "line": self._line}}

    def _make_parser(self, data: bytes) -> Parser:
        s = self._s
        schema = pl.Schema(s.user_schema) if s.user_schema is not None else None
        if s.format == "text":
            return TextParser(s.column)
        if s.format == "jsonl":
            resolved = schema if schema is not None else infer_jsonl_schema(data, None)
            return JsonlParser(resolved, list(schema) if schema is not None else [])
        if s.has_header:
            raise AssertionError("the header is handled in _take")
        if schema is not None:
            return CsvParser(list(schema), schema, s.separator)
        width = len(split_csv_header(data.split(b"\n", 1)[0], s.separator))
        names = [f"column_{i + 1}" for i in range(width)]
        return CsvParser(names, infer_csv_schema(data, names, s.separator, None), s.separator)

    def _fill(self) -> None:
        if self._pump is None:
            return
        while True:
            try:
                item = self._pump.chunks.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._eof = True
                return
            if isinstance(item, BaseException):
                msg = f"step {self._ctx.step_id!r}: reading standard input failed: {item}"
                raise ConnectorError(msg) from item
            self._buf += item

    def _take(self) -> bytes:
        """Complete lines from the buffer (everything at end of input)."""
        cut = self._buf.rfind(b"\n") + 1
        if self._eof:
            cut = len(self._buf)
        data, self._buf = self._buf[:cut], self._buf[cut:]
        if data and self._parser is None and self._s.format == "csv" and self._s.has_header:
            end = data.find(b"\n")
            header = data if end < 0 else data[: end + 1]
            names = split_csv_header(header, self._s.separator)
            data = data[len(header) :]
            self._offset += len(header)
            self._line += 1
            schema = pl.Schema(self._s.user_schema) if self._s.user_schema is not None else None
            if schema is None or any(n not in schema for n in names):
                full = infer_csv_schema(data, names, self._s.separator, schema)
            else:
                full = schema
            self._parser = CsvParser(names, full, self._s.separator)
        return data

    def poll(self) -> SourceBatch | None:
        while True:
            if self._pending is not None:
                batch = self._emit()
                if batch is not None:
                    return batch
                continue
            self._fill()
            data = self._take()
            if not data:
                return None
            if self._parser is None:
                self._parser = self._make_parser(data)
            self._pending = self._parser.parse(data)
            self._pending_line = self._line
            self._offset += len(data)
            self._line += count_lines(data)
            self._emitted = 0

    def _emit(self) -> SourceBatch | None:
        parsed = self._pending
        assert parsed is not None
        data = parsed.data.slice(self._emitted, self._ctx.batch_size)
        dead = None
        if parsed.bad:
            dead = parsed.take_dead(self._ctx.step_id, "stdin", self._pending_line + 1)
        self._emitted += data.height
        if self._emitted >= parsed.data.height:
            self._pending = None
        if data.height == 0 and dead is None:
            return None
        return SourceBatch(data, dead)


@dataclasses.dataclass(frozen=True)
class ScanStdin(Source):
    """Settings of :func:`tideflow.connectors.stdio.scan_stdin`."""

    format: str = "text"
    column: str = "line"
    user_schema: Mapping[str, Any] | None = None
    has_header: bool = True
    separator: str = ","
    #: Read this stream instead of ``sys.stdin.buffer`` (tests, embedding).
    stream: IO[bytes] | None = dataclasses.field(default=None, compare=False)

    @property
    def bounded(self) -> bool:
        return True

    def validate(self, step_id: str) -> None:
        if self.format not in get_args(StdinFormat):
            msg = (
                f"step {step_id!r}: unknown stdin format {self.format!r}; use one of "
                f"{list(get_args(StdinFormat))}"
            )
            raise ConfigError(msg)
        if self.user_schema is not None:
            try:
                pl.Schema(self.user_schema)
            except (TypeError, ValueError) as exc:
                msg = f"step {step_id!r}: schema must map column names to Polars types: {exc}"
                raise ConfigError(msg) from exc

    def schema(self) -> dict[str, pl.DataType] | None:
        if self.format == "text":
            return {self.column: pl.String()}
        return None

    def build(self, ctx: SourceContext) -> SourceReader:
        self.validate(ctx.step_id)
        stream: IO[bytes] | None = None
        if ctx.worker_index == 0:
            # File descriptor 0 itself: worker processes inherit it, while multiprocessing
            # replaces their sys.stdin with /dev/null.
            stream = self.stream if self.stream is not None else _stdin_fd()
        return StdinReader(self, ctx, stream)


def _stdin_fd() -> IO[bytes]:
    try:
        return os.fdopen(0, "rb", buffering=0, closefd=False)
    except OSError:
        return sys.stdin.buffer


class _StdoutWriter(SinkWriter):
    def __init__(self, settings: SinkStdout) -> None:
        self._s = settings

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        out = self._s.stream if self._s.stream is not None else sys.stdout
        if self._s.format == "jsonl":
            buf = io.StringIO()
            batch.write_ndjson(buf)
            out.write(buf.getvalue())
        else:
            with pl.Config(
                tbl_rows=batch.height,
                tbl_cols=-1,
                tbl_hide_dataframe_shape=True,
                fmt_str_lengths=80,
            ):
                out.write(f"{batch}\n")

    def flush(self) -> None:
        out = self._s.stream if self._s.stream is not None else sys.stdout
        out.flush()

    def close(self) -> None:
        self.flush()


@dataclasses.dataclass(frozen=True)
class SinkStdout(Sink):
    """Settings of :func:`tideflow.connectors.stdio.sink_stdout`."""

    format: str = "jsonl"
    #: Write to this text stream instead of ``sys.stdout``.
    stream: IO[str] | None = dataclasses.field(default=None, compare=False)
    single_writer = True

    def validate(self, step_id: str) -> None:
        if self.format not in get_args(StdoutFormat):
            msg = (
                f"step {step_id!r}: unknown stdout format {self.format!r}; use one of "
                f"{list(get_args(StdoutFormat))}"
            )
            raise ConfigError(msg)

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        return _StdoutWriter(self)
