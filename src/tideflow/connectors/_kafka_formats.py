"""Value formats of the Kafka source: raw bytes, UTF-8 text, JSON, and the Deserializer hook."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal, Protocol, runtime_checkable

import polars as pl

__all__ = [
    "BytesFormat",
    "Decoded",
    "Deserializer",
    "JsonFormat",
    "TextFormat",
    "ValueFormat",
    "decode_utf8",
]

ValueFormat = Literal["json", "text", "bytes"]


@dataclasses.dataclass(frozen=True, slots=True)
class Decoded:
    """What a :class:`Deserializer` returns for one batch of message values.

    ``data`` has one row per value that decoded, in input order; ``errors`` maps the index (in
    the input) of every value that did not to the reason.
    """

    data: pl.DataFrame
    errors: dict[int, str] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Deserializer(Protocol):
    """Turns a batch of raw Kafka message values into columns.

    The extension point for Avro or Protobuf with a schema registry: pass an object with these
    two methods as ``format=`` to :func:`~tideflow.connectors.kafka.follow_kafka`. It must be
    picklable (it is sent to worker processes) and should decode the whole batch at once.

    Examples
    --------
    >>> import polars as pl
    >>> class Upper:
    ...     def schema(self):
    ...         return {"word": pl.String()}
    ...     def deserialize(self, values):
    ...         return Decoded(pl.DataFrame({"word": values.cast(pl.String).str.to_uppercase()}))
    >>> isinstance(Upper(), Deserializer)
    True
    >>> Upper().deserialize(pl.Series([b"a", b"b"])).data["word"].to_list()
    ['A', 'B']
    """

    def schema(self) -> dict[str, pl.DataType] | None:
        """The columns :meth:`deserialize` produces, when known in advance."""
        ...

    def deserialize(self, values: pl.Series) -> Decoded:
        """Decode ``values`` (a ``Binary`` series, nulls for tombstones)."""
        ...


def _sample(raw: bytes | None, limit: int = 2000) -> str | None:
    if raw is None:
        return None
    return raw[:limit].decode("utf-8", errors="replace")


def decode_utf8(values: pl.Series) -> tuple[pl.Series, dict[int, str]]:
    """Decode a ``Binary`` series as UTF-8 text: vectorized; per value only when that fails.

    Examples
    --------
    >>> text, errors = decode_utf8(pl.Series([b"ok", b"\\xff"]))
    >>> text.to_list(), errors
    (['ok', None], {1: 'value is not valid UTF-8'})
    """
    try:
        return values.cast(pl.String), {}
    except pl.exceptions.PolarsError:
        pass
    out: list[str | None] = []
    errors: dict[int, str] = {}
    for i, raw in enumerate(values.to_list()):
        if raw is None:
            out.append(None)
            continue
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)
            errors[i] = "value is not valid UTF-8"
    return pl.Series(values.name, out, dtype=pl.String), errors


@dataclasses.dataclass(frozen=True, slots=True)
class BytesFormat:
    """Values as they are: a ``value`` column of type ``Binary``."""

    def schema(self) -> dict[str, pl.DataType] | None:
        return {"value": pl.Binary()}

    def deserialize(self, values: pl.Series) -> Decoded:
        return Decoded(pl.DataFrame({"value": values}))


@dataclasses.dataclass(frozen=True, slots=True)
class TextFormat:
    """UTF-8 values: a ``value`` column of type ``String``; invalid UTF-8 is a dead letter."""

    def schema(self) -> dict[str, pl.DataType] | None:
        return {"value": pl.String()}

    def deserialize(self, values: pl.Series) -> Decoded:
        text, errors = decode_utf8(values)
        if errors:
            keep = [i for i in range(len(text)) if i not in errors]
            text = text.gather(keep)
        return Decoded(pl.DataFrame({"value": text}), errors)


@dataclasses.dataclass(frozen=True)
class JsonFormat:
    """One JSON object per message; its fields become columns.

    With a ``schema`` the columns and their types are fixed; without one they are inferred
    from the first batch that decodes and then kept for the rest of the stream.
    """

    fields: tuple[tuple[str, pl.DataType], ...] | None = None

    def schema(self) -> dict[str, pl.DataType] | None:
        return None if self.fields is None else dict(self.fields)

    def deserialize(self, values: pl.Series) -> Decoded:
        return self.decode(values, self.schema())

    def decode(self, values: pl.Series, schema: dict[str, pl.DataType] | None) -> Decoded:
        """Decode with ``schema`` (or inferring one when ``None``)."""
        text, errors = decode_utf8(values)
        good = text
        if errors:
            good = text.gather([i for i in range(len(text)) if i not in errors])
        try:
            frame = _json_frame(good, schema)
        except (pl.exceptions.PolarsError, ValueError):
            return self._per_value(text, errors, schema)
        if errors:
            return Decoded(frame, errors)
        return Decoded(frame)

    def _per_value(
        self, text: pl.Series, errors: dict[int, str], schema: dict[str, pl.DataType] | None
    ) -> Decoded:
        """The slow path for a batch that failed as a whole: find the bad values one by one."""
        errors = dict(errors)
        keep: list[int] = []
        for i, value in enumerate(text.to_list()):
            if i in errors:
                continue
            if value is None:
                errors[i] = "empty message (tombstone): no JSON value"
                continue
            try:
                obj = json.loads(value)
            except ValueError as exc:
                errors[i] = f"invalid JSON: {exc}"
                continue
            if not isinstance(obj, dict):
                errors[i] = f"expected a JSON object, got {type(obj).__name__}"
                continue
            try:
                _json_frame(pl.Series([value]), schema)
            except (pl.exceptions.PolarsError, ValueError) as exc:
                errors[i] = f"JSON does not match the schema: {str(exc).splitlines()[0]}"
                continue
            keep.append(i)
        frame = _json_frame(text.gather(keep), schema) if keep else _empty(schema)
        return Decoded(frame, errors)


def _empty(schema: dict[str, pl.DataType] | None) -> pl.DataFrame:
    return pl.DataFrame(schema=schema or {})


def _json_frame(text: pl.Series, schema: dict[str, pl.DataType] | None) -> pl.DataFrame:
    """Vectorized: decode JSON objects into a struct column and unnest it."""
    if text.len() == 0:
        return _empty(schema)
    if text.null_count():
        msg = "empty message (tombstone): no JSON value"
        raise ValueError(msg)
    stripped = text.str.strip_chars_start()
    if not stripped.str.starts_with("{").all():
        msg = "expected JSON objects"
        raise ValueError(msg)
    if schema is None:
        decoded = text.str.json_decode(infer_schema_length=None)
    else:
        decoded = text.str.json_decode(pl.Struct(schema))
    if not isinstance(decoded.dtype, pl.Struct):
        msg = "expected JSON objects"
        raise ValueError(msg)
    return decoded.struct.unnest()


def sample(raw: bytes | None) -> str | None:
    """The raw value as text for a dead letter (truncated, undecodable bytes replaced)."""
    return _sample(raw)
