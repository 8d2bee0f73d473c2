"""Small, cheap frame operations for the per-batch hot path.

Polars' eager ``DataFrame`` methods run through a lazy plan and its optimizer: about 20-60 us
each, whatever the frame's size. Micro-batches of a low-latency job hold tens of rows, where
that fixed cost is all there is, so the operators' per-batch bookkeeping (time arithmetic,
adding a helper column, masks) uses these instead: NumPy on the physical values and column
swaps that share the data (about 1-10 us).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from tideflow.state._store import SnapshotChunk

__all__ = [
    "concat",
    "epoch_us",
    "filter_mask",
    "frame_chunk",
    "frame_of",
    "read_part",
    "read_parts",
    "series_of",
    "set_column",
    "without",
]

#: Up to this many rows a frame is filtered column by column (a direct call per column),
#: beyond it by Polars' planner (parallel over columns).
_SMALL = 4096


def frame_of(columns: list[pl.Series]) -> pl.DataFrame:
    """A frame of ``columns`` (equal lengths, distinct names), as ``pl.DataFrame(columns)``.

    Examples
    --------
    >>> frame_of([pl.Series("a", [1, 2]), pl.Series("b", ["x", "y"])]).columns
    ['a', 'b']
    """
    return pl.DataFrame(columns)


try:  # Polars' own constructor, without the public one's checks (about 1 us, not 8)
    from polars._plr import PyDataFrame

    def _fast_frame(columns: list[pl.Series]) -> pl.DataFrame:
        return pl.DataFrame._from_pydf(PyDataFrame([c._s for c in columns]))

    _probe = [pl.Series("x", [1.5, -0.0], dtype=pl.Float32), pl.Series("y", ["a", None])]
    if _fast_frame(_probe).equals(frame_of(_probe)):
        frame_of = _fast_frame
except Exception:  # another Polars: the public constructor  # pragma: no cover
    pass


def series_of(name: str, values: npt.NDArray[Any]) -> pl.Series:
    """A Series of a one-dimensional NumPy array of numbers or Booleans, as
    ``pl.Series(name, values)``.

    Examples
    --------
    >>> series_of("a", np.array([3, 4], dtype=np.uint16)).to_list()
    [3, 4]
    """
    return pl.Series(name, values)


try:  # Polars' typed constructors, without the public one's dispatch (about 0.6 us, not 3.5)
    from polars._plr import PySeries

    _NEW = {
        np.dtype(np.int8): PySeries.new_i8,
        np.dtype(np.int16): PySeries.new_i16,
        np.dtype(np.int32): PySeries.new_i32,
        np.dtype(np.int64): PySeries.new_i64,
        np.dtype(np.uint8): PySeries.new_u8,
        np.dtype(np.uint16): PySeries.new_u16,
        np.dtype(np.uint32): PySeries.new_u32,
        np.dtype(np.uint64): PySeries.new_u64,
        np.dtype(np.float32): PySeries.new_f32,
        np.dtype(np.float64): PySeries.new_f64,
        np.dtype(np.bool_): PySeries.new_bool,
    }

    def _fast_series(name: str, values: npt.NDArray[Any]) -> pl.Series:
        new = _NEW.get(values.dtype)
        if new is None or values.ndim != 1:
            return pl.Series(name, values)
        return pl.Series._from_pyseries(new(name, np.ascontiguousarray(values), False))

    _probes = [np.array([1.5, np.nan], dtype=np.float32), np.array([-3, 2**40]), np.arange(4)[::2]]
    _probes += [np.array([True, False]), np.array([255], dtype=np.uint8)]
    if all(_fast_series("x", a).equals(pl.Series("x", a), check_dtypes=True) for a in _probes):
        series_of = _fast_series
except Exception:  # another Polars: the public constructor  # pragma: no cover
    pass


def concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames one after the other; their dtypes are widened to a common one only if they differ.

    Partials and polls of one step nearly always share a schema, and the plain concat is then
    about twenty times cheaper than the relaxed one (which resolves a supertype per column and
    frame: a millisecond for 80 small frames).

    Examples
    --------
    >>> concat([pl.DataFrame({"a": [1]}), pl.DataFrame({"a": [2]})])["a"].to_list()
    [1, 2]
    >>> concat([pl.DataFrame({"a": [1]}), pl.DataFrame({"a": [2.5]})])["a"].to_list()
    [1.0, 2.5]
    """
    if len(frames) == 1:
        return frames[0]
    try:
        return pl.concat(frames, how="vertical")
    except pl.exceptions.SchemaError:
        return pl.concat(frames, how="vertical_relaxed")


def epoch_us(col: pl.Series) -> npt.NDArray[np.int64]:
    """A timestamp column as int64 epoch microseconds in NumPy (no copy when already in us).

    The column must hold no nulls (event times have been checked by then).

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> s = pl.Series([datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)])
    >>> epoch_us(s.cast(pl.Datetime("ms", "UTC"))).tolist()
    [1000000]
    """
    dtype = col.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_unit != "us":
        col = col.cast(pl.Datetime("us", dtype.time_zone))
    values = col.cast(pl.Int64).to_numpy()
    if values.dtype != np.int64:
        msg = f"column {col.name!r} holds nulls where event times were expected"
        raise ValueError(msg)
    return values


def set_column(frame: pl.DataFrame, col: pl.Series) -> pl.DataFrame:
    """``frame`` with ``col`` replacing the column of its name, or appended; ``frame`` itself
    is left as it was and no column data is copied.

    Examples
    --------
    >>> df = pl.DataFrame({"a": [1, 2], "b": [3, 4]})
    >>> set_column(df, pl.Series("a", [9, 9])).rows(), df.rows()
    ([(9, 3), (9, 4)], [(1, 3), (2, 4)])
    >>> set_column(df, pl.Series("c", [5, 6])).columns
    ['a', 'b', 'c']
    """
    out = frame.clone()
    if col.name in frame.columns:
        out.replace_column(frame.get_column_index(col.name), col)
    else:
        out.insert_column(frame.width, col)
    return out


def filter_mask(frame: pl.DataFrame, mask: npt.NDArray[np.bool_]) -> pl.DataFrame:
    """Rows of ``frame`` where the NumPy ``mask`` is true (whole frame or none without a copy).

    Examples
    --------
    >>> df = pl.DataFrame({"a": [1, 2, 3]})
    >>> filter_mask(df, np.array([True, False, True]))["a"].to_list()
    [1, 3]
    """
    kept = int(mask.sum())
    if kept == frame.height:
        return frame
    if kept == 0:
        return frame.clear()
    series = pl.Series(mask)
    if frame.height > _SMALL:
        return frame.filter(series)  # large: Polars filters the columns in parallel
    return frame_of([c.filter(series) for c in frame.iter_columns()])


def without(frame: pl.DataFrame, *names: str) -> pl.DataFrame:
    """``frame`` without the columns ``names`` (those it has), sharing the data of the rest.

    Examples
    --------
    >>> without(pl.DataFrame({"a": [1], "b": [2], "c": [3]}), "b", "x").columns
    ['a', 'c']
    """
    drop = set(names)
    kept = [c for c in frame.iter_columns() if c.name not in drop]
    return frame_of(kept) if kept else frame.clear().select()


def frame_chunk(frame: pl.DataFrame, compression: Any = "uncompressed") -> SnapshotChunk:
    """A snapshot chunk of ``frame`` as Arrow IPC, written by Polars straight into its file.

    No copy of the table is made in memory: the checkpoint that first holds the chunk streams
    it to disk and hashes it on the way (a restore reads it with ``pl.read_ipc``).

    Examples
    --------
    >>> import io
    >>> chunk = frame_chunk(pl.DataFrame({"k": [1, 2]}))
    >>> pl.read_ipc(io.BytesIO(chunk.read()))["k"].to_list()
    [1, 2]
    """
    return SnapshotChunk.streamed(lambda fh: frame.write_ipc(fh, compression=compression))


def read_part(part: SnapshotChunk | bytes | None) -> pl.DataFrame | None:
    """The frame of a snapshot part: a chunk (whose bytes are then dropped from memory: they
    stay in its file), or Arrow IPC bytes (an older snapshot, a rescaled one); None for none
    or a frame without columns.

    Examples
    --------
    >>> read_part(frame_chunk(pl.DataFrame({"k": [1, 2]})))["k"].to_list()
    [1, 2]
    >>> read_part(None) is None
    True
    """
    if part is None:
        return None
    if isinstance(part, SnapshotChunk):
        frame = pl.read_ipc(io.BytesIO(part.read()))
        part.release()
    else:
        frame = pl.read_ipc(io.BytesIO(part))
    return frame if frame.width else None


def read_parts(
    parts: Sequence[SnapshotChunk | bytes | None],
) -> tuple[list[pl.DataFrame], list[SnapshotChunk | bytes]]:
    """The frames of snapshot parts (those with columns), and the parts they were read from.

    Examples
    --------
    >>> frames, kept = read_parts([None, frame_chunk(pl.DataFrame({"k": [1]}))])
    >>> [f.height for f in frames], len(kept)
    ([1], 1)
    """
    frames: list[pl.DataFrame] = []
    kept: list[SnapshotChunk | bytes] = []
    for part in parts:
        frame = read_part(part)
        if frame is not None:
            frames.append(frame)
            kept.append(part)  # type: ignore[arg-type]
    return frames, kept
