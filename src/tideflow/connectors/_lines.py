"""Shared plumbing of the file sources: path expansion, byte-range plans, aligned chunk reads.

A line-oriented file is cut into byte ranges of ``split_bytes`` (a *partition*, keyed
``"path:start-end"``). A partition owns every line whose first byte lies in ``[start, end)``; so
the ranges of one file, read independently, give every line exactly once. Plans depend only on
the file list, the file sizes and ``split_bytes`` -- never on the worker count -- so positions
from a checkpoint stay valid when a job resumes with a different number of workers.
"""

from __future__ import annotations

import dataclasses
import glob
import heapq
import os
from collections.abc import Iterable, Sequence

from tideflow._errors import ConfigError, ConnectorError

__all__ = [
    "FilePart",
    "assign",
    "count_newlines",
    "expand_paths",
    "find_line_start",
    "plan_ranges",
    "read_aligned",
]

_GLOB_CHARS = frozenset("*?[")
#: Read size when counting lines or looking for a line start.
_SCAN_BLOCK = 16 << 20


def _as_list(path_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(path_or_paths, str | os.PathLike):
        return [os.fspath(path_or_paths)]
    return [os.fspath(p) for p in path_or_paths]


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _matches(name: str, suffixes: tuple[str, ...]) -> bool:
    return not suffixes or name.lower().endswith(suffixes)


def expand_paths(
    step_id: str,
    path_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    suffixes: tuple[str, ...],
    *,
    recursive: bool = False,
) -> list[str]:
    """Resolve files, directories and globs into a sorted, de-duplicated list of files.

    A directory contributes every visible file in it (not starting with ``.`` or ``_``) whose
    name ends with one of ``suffixes`` (all files when ``suffixes`` is empty), sorted by name;
    ``recursive`` descends into sub-directories (hive-style partitions). Raises
    :class:`~tideflow.ConfigError` naming the step when a path matches nothing.
    """
    entries = _as_list(path_or_paths)
    if not entries:
        msg = f"step {step_id!r}: no input path given; pass a file, a directory or a glob"
        raise ConfigError(msg)
    out: list[str] = []
    for entry in entries:
        found: list[str]
        if any(c in entry for c in _GLOB_CHARS) and not os.path.exists(entry):
            found = sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
            if not found:
                msg = f"step {step_id!r}: the glob {entry!r} matches no file; check the pattern"
                raise ConfigError(msg)
        elif os.path.isdir(entry):
            found = _list_dir(entry, suffixes, recursive)
            if not found:
                want = ", ".join(suffixes) if suffixes else "any"
                msg = (
                    f"step {step_id!r}: the directory {entry!r} holds no input file "
                    f"(looked for names ending with: {want}); pass a glob or the files"
                )
                raise ConfigError(msg)
        elif os.path.isfile(entry):
            found = [entry]
        else:
            msg = (
                f"step {step_id!r}: the input path {entry!r} does not exist; check the path, "
                "or use a follow_* source to wait for files to appear"
            )
            raise ConfigError(msg)
        out.extend(found)
    seen: set[str] = set()
    unique = []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _list_dir(directory: str, suffixes: tuple[str, ...], recursive: bool) -> list[str]:
    found: list[str] = []
    if recursive:
        for root, dirs, names in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if _visible(d))
            found.extend(
                os.path.join(root, n) for n in names if _visible(n) and _matches(n, suffixes)
            )
        return sorted(found)
    with os.scandir(directory) as it:
        for e in it:
            if e.is_file() and _visible(e.name) and _matches(e.name, suffixes):
                found.append(os.path.join(directory, e.name))
    return sorted(found)


@dataclasses.dataclass(frozen=True, slots=True)
class FilePart:
    """One partition of the input: a byte range of a file (or a row group, for Parquet)."""

    key: str
    path: str
    start: int
    end: int
    #: Position of the file in the expanded input list (for a stable read order).
    order: int
    weight: int


#: Bounds of the automatic range size (``split_bytes=None``).
AUTO_SPLIT_MIN = 4 << 20
AUTO_SPLIT_MAX = 64 << 20
#: The automatic range size aims at about this many ranges over the whole input.
AUTO_SPLIT_RANGES = 64


def plan_ranges(paths: Sequence[str], split_bytes: int | None) -> list[FilePart]:
    """Cut every file into ranges of at most ``split_bytes`` bytes (one for an empty file).

    ``None`` picks the size from the total input size (about ``AUTO_SPLIT_RANGES`` ranges,
    between ``AUTO_SPLIT_MIN`` and ``AUTO_SPLIT_MAX`` bytes each): it depends on the input only,
    never on the worker count, so the plan stays the same when a job resumes rescaled.
    """
    sizes = []
    for path in paths:
        try:
            sizes.append(os.path.getsize(path))
        except OSError as exc:
            msg = f"cannot read input file {path!r}: {exc}"
            raise ConnectorError(msg) from exc
    if split_bytes is None:
        split_bytes = -(-sum(sizes) // AUTO_SPLIT_RANGES)
        split_bytes = min(max(split_bytes, AUTO_SPLIT_MIN), AUTO_SPLIT_MAX)
    parts: list[FilePart] = []
    for order, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        start = 0
        while True:
            end = min(size, start + split_bytes)
            parts.append(FilePart(f"{path}:{start}-{end}", path, start, end, order, end - start))
            start = end
            if start >= size:
                break
    return parts


def assign(parts: Iterable[FilePart], worker_index: int, worker_count: int) -> list[FilePart]:
    """Deal partitions to workers, largest first to the least loaded (deterministic).

    Returns the partitions of ``worker_index`` in input order.
    """
    ordered = sorted(parts, key=lambda p: (-p.weight, p.order, p.start))
    heap = [(0, w) for w in range(worker_count)]
    mine: list[FilePart] = []
    for part in ordered:
        load, w = heapq.heappop(heap)
        if w == worker_index:
            mine.append(part)
        heapq.heappush(heap, (load + max(part.weight, 1), w))
    mine.sort(key=lambda p: (p.order, p.start))
    return mine


def count_newlines(path: str, end: int, start: int = 0) -> int:
    """Count ``\\n`` bytes in ``path[start:end]``."""
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(_SCAN_BLOCK, left))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def find_line_start(fd: int, start: int) -> int | None:
    """Offset of the first line starting at or after ``start`` (``None`` at end of file)."""
    if start == 0:
        return 0
    pos = start - 1
    while True:
        block = os.pread(fd, 1 << 16, pos)
        if not block:
            return None
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)


def read_aligned(
    fd: int, offset: int, end: int | None, want: int, *, eof_is_newline: bool
) -> tuple[bytes, bool]:
    """Read whole lines from ``offset``: about ``want`` bytes, cut after the last newline.

    With ``end`` set, stop after the line that contains byte ``end - 1`` (the last line owned by
    the range). Returns ``(data, at_end)``: ``at_end`` is true when the range or the file is
    exhausted. At end of file a last line without newline is returned only when
    ``eof_is_newline`` (bounded reads); otherwise it is left for later (follow mode).
    """
    size = want
    while True:
        block = os.pread(fd, size, offset)
        eof = len(block) < size
        if end is not None and offset + len(block) >= end:
            i = block.find(b"\n", max(end - 1 - offset, 0))
            if i >= 0:
                return block[: i + 1], True
            if eof:
                return (block, True) if eof_is_newline else (b"", True)
        else:
            i = block.rfind(b"\n")
            if i >= 0:
                done = eof and i + 1 == len(block)
                return block[: i + 1], done
            if eof:
                if eof_is_newline:
                    return block, True
                return b"", True
        size *= 4
