"""Chunk parsers for line-oriented formats: text, CSV and JSON lines.

A parser turns a chunk of whole lines (bytes) into a :class:`Parsed`: a typed DataFrame of the
good rows plus the bad lines (index within the chunk, reason, raw text). The common case is one
strict, vectorized Polars/Arrow parse of the whole chunk; only when that fails (or a cheap check
says some line is malformed) does the parser look at the chunk line by line to find the bad
ones, so the cost of bad data is paid only by the chunks that contain it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.connectors._base import dead_letters

__all__ = [
    "CsvParser",
    "JsonlParser",
    "Parsed",
    "Parser",
    "TextParser",
    "count_lines",
    "infer_csv_schema",
    "infer_jsonl_schema",
    "normalize_schema",
    "split_csv_header",
]


@dataclasses.dataclass(slots=True)
class Parsed:
    """Result of parsing one chunk."""

    data: pl.DataFrame
    #: Bad lines: (0-based line index within the chunk, reason, raw text).
    bad: list[tuple[int, str, str]]
    #: Lines in the chunk, when the parser knows it without counting.
    lines: int | None = None

    def take_dead(self, step: str, source: str, first_line: int) -> pl.DataFrame | None:
        """The bad lines as dead letters with origin ``source:line`` (``first_line`` is the
        1-based number of the chunk's first line); clears them so they are sent once."""
        if not self.bad:
            return None
        dead = dead_letters(
            step,
            [f"{source}:{first_line + i}" for i, _, _ in self.bad],
            [reason for _, reason, _ in self.bad],
            [raw for _, _, raw in self.bad],
        )
        self.bad = []
        return dead


class Parser:
    """Base class of the chunk parsers."""

    schema: pl.Schema

    def parse(self, chunk: bytes) -> Parsed:  # pragma: no cover - interface
        raise NotImplementedError

    def empty(self) -> pl.DataFrame:
        """A frame with no rows and the parser's schema."""
        return pl.DataFrame(schema=self.schema)


def count_lines(chunk: bytes) -> int:
    """Number of lines in a chunk (a last line without newline counts)."""
    if not chunk:
        return 0
    return chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)


def normalize_schema(schema: Mapping[str, Any] | None) -> pl.Schema | None:
    """Turn a user schema (names to Polars types or type classes) into a ``pl.Schema``."""
    if schema is None:
        return None
    return pl.Schema(schema)


def _lines(chunk: bytes) -> list[bytes]:
    lines = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        lines.pop()
    return lines


def _temporal_names(schema: pl.Schema) -> list[str]:
    return [n for n, t in schema.items() if isinstance(t, pl.Datetime | pl.Date | pl.Time)]


def _convert_temporal(
    df: pl.DataFrame, schema: pl.Schema, names: Sequence[str], *, strict: bool
) -> pl.DataFrame:
    """Convert text columns ``names`` to their temporal types in ``schema``.

    The CSV and NDJSON readers parse timestamps several times slower than
    ``str.to_datetime``, so temporal columns are read as text and converted here. With
    ``strict``, a value that does not convert raises ``ComputeError``; otherwise it is null.
    """
    if not names:
        return df
    converted = []
    for name in names:
        raw = df[name]
        out = _to_temporal(raw, schema[name])
        if strict and (out.is_null() & raw.is_not_null()).any():
            msg = f"column {name!r}: values that do not convert to {schema[name]}"
            raise pl.exceptions.ComputeError(msg)
        converted.append(out)
    return df.with_columns(converted)


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


def _binary_array(view: memoryview) -> pa.Array:
    """A one-element large_binary array over ``view`` without copying it."""
    offsets = pa.py_buffer(np.array([0, len(view)], dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(view)])


class TextParser(Parser):
    """Lines of UTF-8 text (undecodable bytes replaced), one column, vectorized split."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.schema = pl.Schema({column: pl.String()})

    def parse(self, chunk: bytes) -> Parsed:
        if not chunk:
            return Parsed(self.empty(), [])
        view = memoryview(chunk)
        if chunk.endswith(b"\n"):
            view = view[:-1]
        lines = pc.split_pattern(_binary_array(view), b"\n").values
        try:
            text = lines.cast(pa.large_string())
        except pa.ArrowInvalid:
            decoded = bytes(view).decode("utf-8", errors="replace")
            text = pc.split_pattern(pa.array([decoded], pa.large_string()), "\n").values
        series = pl.Series(self.column, text)
        if b"\r" in chunk:
            series = series.str.strip_suffix("\r")
        return Parsed(series.to_frame(), [], len(series))


def split_csv_header(line: bytes, separator: str) -> list[str]:
    """Column names from a CSV header line (BOM and line end removed)."""
    text = line.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    return next(csv.reader([text], delimiter=separator))


def infer_csv_schema(
    sample: bytes, names: Sequence[str], separator: str, overrides: pl.Schema | None
) -> pl.Schema:
    """Infer column types from a sample of data lines (no header), applying ``overrides``."""
    inferred: dict[str, pl.DataType] = dict.fromkeys(names, pl.String())
    if sample.strip():
        try:
            df = pl.read_csv(
                io.BytesIO(sample),
                has_header=False,
                new_columns=list(names),
                separator=separator,
                infer_schema_length=None,
                ignore_errors=True,
                truncate_ragged_lines=True,
            )
            for name in names:
                if name in df.columns:
                    inferred[name] = df.schema[name]
        except pl.exceptions.PolarsError:
            pass
    for name, dtype in inferred.items():
        if dtype == pl.Null():
            inferred[name] = pl.String()
    if overrides:
        inferred.update(overrides)
    return pl.Schema({n: inferred[n] for n in names})


class CsvParser(Parser):
    """Delimited lines with a fixed column list; bad rows become dead letters."""

    def __init__(self, names: Sequence[str], schema: pl.Schema, separator: str) -> None:
        self.names = list(names)
        self.schema = pl.Schema({n: schema[n] for n in self.names})
        self.separator = separator
        self._sep = separator.encode()
        self._strings = pl.Schema(dict.fromkeys(self.names, pl.String()))
        self._temporal = _temporal_names(self.schema)
        self._read_schema = pl.Schema(
            {n: (pl.String() if n in self._temporal else t) for n, t in self.schema.items()}
        )

    def _read(self, data: bytes, schema: pl.Schema, *, ignore_errors: bool) -> pl.DataFrame:
        typed = schema is self.schema
        df = pl.read_csv(
            io.BytesIO(data),
            has_header=False,
            schema=self._read_schema if typed else schema,
            separator=self.separator,
            ignore_errors=ignore_errors,
            raise_if_empty=False,
        )
        if typed:
            df = _convert_temporal(df, self.schema, self._temporal, strict=not ignore_errors)
        return df

    def _counts_ok(self, chunk: bytes, rows: int) -> bool:
        lines = count_lines(chunk)
        if rows != lines:
            return False
        n = len(self.names)
        if n == 1:
            return True
        if b'"' not in chunk:
            return chunk.count(self._sep) == lines * (n - 1)
        series = pl.Series(_lines(chunk), dtype=pl.Binary).cast(pl.String, strict=False)
        if series.null_count():
            return False
        fields = series.str.replace_all(r'"[^"]*"', "").str.count_matches(
            self.separator, literal=True
        )
        return bool((fields == n - 1).all())

    def parse(self, chunk: bytes) -> Parsed:
        if not chunk:
            return Parsed(self.empty(), [])
        try:
            df = self._read(chunk, self.schema, ignore_errors=False)
        except pl.exceptions.PolarsError:
            return self._fallback(chunk)
        if self._counts_ok(chunk, df.height):
            return Parsed(df, [])
        return self._fallback(chunk)

    def _fallback(self, chunk: bytes) -> Parsed:
        n = len(self.names)
        bad: list[tuple[int, str, str]] = []
        good_idx: list[int] = []
        good_lines: list[bytes] = []
        lines = _lines(chunk)
        texts = [_text(line) for line in lines]
        for i, fields in enumerate(csv.reader(texts, delimiter=self.separator)):
            if not texts[i]:
                continue  # blank line: no record
            if len(fields) != n:
                bad.append((i, f"expected {n} fields, got {len(fields)}", texts[i]))
                continue
            good_idx.append(i)
            good_lines.append(lines[i])
        if not good_lines:
            return Parsed(self.empty(), bad)
        data = b"\n".join(good_lines) + b"\n"
        typed = self._read(data, self.schema, ignore_errors=True)
        raw = self._read(data, self._strings, ignore_errors=True)
        failed = np.zeros(typed.height, dtype=bool)
        reasons: dict[int, str] = {}
        for name in self.names:
            if self.schema[name] == pl.String():
                continue
            given = raw[name].is_not_null() & (raw[name].str.strip_chars() != "")
            mask = (typed[name].is_null() & given).to_numpy()
            if not mask.any():
                continue
            values = raw[name].to_list()
            for r in np.flatnonzero(mask & ~failed):
                reasons[int(r)] = (
                    f"column {name!r}: cannot parse {values[r]!r} as {self.schema[name]}"
                )
            failed |= mask
        for r in np.flatnonzero(failed):
            i = good_idx[r]
            bad.append((i, reasons[int(r)], texts[i]))
        bad.sort()
        return Parsed(typed.filter(pl.Series(~failed)), bad)


def infer_jsonl_schema(sample: bytes, overrides: pl.Schema | None) -> pl.Schema:
    """Infer field types from the valid JSON-object lines of a sample."""
    good = []
    for line in _lines(sample):
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line), dict):
                good.append(line)
        except ValueError:
            continue
    inferred: dict[str, pl.DataType] = {}
    if good:
        df = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
        inferred = {n: (pl.String() if t == pl.Null() else t) for n, t in df.schema.items()}
    if overrides:
        inferred.update(overrides)
    return pl.Schema(inferred)


class JsonlParser(Parser):
    """One JSON object per line; fields in ``required`` must be present (null is allowed)."""

    def __init__(self, schema: pl.Schema, required: Sequence[str]) -> None:
        self.schema = schema
        self.required = list(required)
        self._temporal = _temporal_names(schema)
        self._read_schema = pl.Schema(
            {n: (pl.String() if n in self._temporal else t) for n, t in schema.items()}
        )

    def _read(self, data: bytes, *, strict: bool) -> pl.DataFrame:
        """Parse JSON lines; temporal fields are read as text and converted vectorized.

        (The NDJSON reader parses timestamps an order of magnitude slower than
        ``str.to_datetime``.) With ``strict``, a value that does not convert raises.
        """
        df = pl.read_ndjson(io.BytesIO(data), schema=self._read_schema, ignore_errors=not strict)
        return _convert_temporal(df, self.schema, self._temporal, strict=strict)

    def parse(self, chunk: bytes) -> Parsed:
        if not chunk.strip():
            return Parsed(self.empty(), [])
        if not self.schema:
            return self._fallback(chunk)
        try:
            df = self._read(chunk, strict=True)
        except pl.exceptions.PolarsError:
            return self._fallback(chunk)
        if (
            self.required
            and df.select(pl.any_horizontal(pl.col(self.required).is_null()).any()).item()
        ):
            return self._fallback(chunk)
        return Parsed(df, [])

    def _fallback(self, chunk: bytes) -> Parsed:
        bad: list[tuple[int, str, str]] = []
        good_idx: list[int] = []
        good_lines: list[bytes] = []
        objects: list[dict[str, Any]] = []
        for i, line in enumerate(_lines(chunk)):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                reason = f"invalid JSON: {getattr(exc, 'msg', exc)} at column {_col(exc)}"
                bad.append((i, reason, _text(line)))
                continue
            if not isinstance(obj, dict):
                bad.append((i, f"expected a JSON object, got {type(obj).__name__}", _text(line)))
                continue
            missing = [k for k in self.required if k not in obj]
            if missing:
                names = ", ".join(repr(k) for k in missing)
                bad.append((i, f"missing required field {names}", _text(line)))
                continue
            good_idx.append(i)
            good_lines.append(line)
            objects.append(obj)
        if not good_lines or not self.schema:
            return Parsed(self.empty(), bad)
        typed = self._read(b"\n".join(good_lines), strict=False)
        failed = np.zeros(typed.height, dtype=bool)
        for name in self.schema:
            nulls = typed[name].is_null().to_numpy()
            for r in np.flatnonzero(nulls & ~failed):
                value = objects[r].get(name)
                if value is not None:
                    failed[r] = True
                    i = good_idx[r]
                    reason = (
                        f"field {name!r}: cannot convert {json.dumps(value)[:80]} "
                        f"to {self.schema[name]}"
                    )
                    bad.append((i, reason, _text(good_lines[r])))
        bad.sort()
        return Parsed(typed.filter(pl.Series(~failed)), bad)


def _to_temporal(raw: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Convert ISO-8601 text to ``dtype`` (null where it does not parse)."""
    if raw.dtype != pl.String():
        raw = raw.cast(pl.String, strict=False)
    if raw.null_count() == raw.len():
        return pl.Series(raw.name, [None] * raw.len(), dtype=dtype)
    if isinstance(dtype, pl.Date):
        return raw.str.to_date(strict=False)
    if isinstance(dtype, pl.Time):
        return raw.str.to_time(strict=False)
    assert isinstance(dtype, pl.Datetime)
    try:
        out = raw.str.to_datetime(time_unit=dtype.time_unit, strict=False)
    except pl.exceptions.PolarsError:
        return pl.Series(raw.name, [None] * raw.len(), dtype=dtype)
    assert isinstance(out.dtype, pl.Datetime)
    parsed_tz = out.dtype.time_zone
    if parsed_tz is None and dtype.time_zone is not None:
        out = out.dt.replace_time_zone(dtype.time_zone)
    elif parsed_tz is not None:
        out = out.dt.convert_time_zone(dtype.time_zone or "UTC")
        if dtype.time_zone is None:
            out = out.dt.replace_time_zone(None)
    return out.cast(dtype)


def _col(exc: BaseException) -> object:
    return getattr(exc, "colno", "?")
