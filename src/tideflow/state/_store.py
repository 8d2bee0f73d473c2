"""Checkpoint storage: a versioned on-disk format with atomic completion and bounded retention.

Layout of a checkpoint directory (format ``tideflow-checkpoint``, version 1 to 3)::

    <dir>/
      chk-00000007/            a complete checkpoint (id 7)
        worker-0000.json       state of worker 0: step id -> snapshot (JSON)
        worker-0000.bin        binary blobs (Arrow IPC) the JSON refers to
        MANIFEST.json          written last: format, version, id, workers, sizes, checksums
      shared/                  chunks: immutable files shared by several checkpoints
        <uuid>.chunk           one chunk, written once by the first checkpoint that holds it
      .tmp-chk-00000008-1234/  being written (never read; removed on the next start)

Snapshots are JSON objects; a ``bytes`` value (Arrow IPC tables) is stored in the ``.bin`` file
and replaced by ``{"$blob": [offset, length]}``. A :class:`SnapshotFile` value (a file an
operator wrote, e.g. the SQLite database of an on-disk state backend) is moved into the
checkpoint as ``worker-0000.file-<i>`` and replaced by ``{"$file": i}``; its size and checksum
go into the manifest, and the manifest's version is then 2. Nothing is pickled. A checkpoint becomes
visible by renaming its temporary directory, after every file in it is written and synced; a
directory without a valid manifest, or whose files do not match the manifest's sums, is
skipped with a warning and the previous checkpoint is used.

Checksums: every file a checkpoint writes has its size and a checksum in the manifest, and
loading verifies both. The checksum is XXH3 with 128 bits (the ``xxhash`` package), recorded
as ``"xxh3_128": "<32 hex digits>"`` next to ``"size"``. Its purpose is to detect a torn or
corrupted file (a crash mid-write, a bad disk, a file cut short or changed by mistake), for
which a fast non-cryptographic hash is made; it is not a security measure (whoever can write
the checkpoint directory can change the state and its manifest alike). Checkpoints and
savepoints written before it carry ``"sha256"`` instead and are verified with SHA-256; each
entry names its own algorithm, so a manifest may hold both (a resumed job refers to chunks
of an older checkpoint with their recorded SHA-256 sums).

Incremental snapshots (version 3): a :class:`SnapshotChunk` value is a piece of state that
never changes once made (an operator's folded table, the rows appended between two
checkpoints). The first checkpoint whose snapshot holds it writes it to
``shared/<uuid>.chunk`` (written under a temporary name, synced, then renamed, so a chunk file
is only visible once complete); a later checkpoint whose snapshot holds the same object only
refers to it. In the JSON the value is ``{"$chunk": i}``, the index into the worker's
``chunks`` list in the manifest (``name``, ``size`` and checksum of each), and the manifest's
``chunk_dir`` says where the chunk files are (``../shared`` for a checkpoint, ``shared`` for
a savepoint, which holds copies of its chunks). A checkpoint is complete only when its
manifest is, which is written after every chunk it names; loading verifies every chunk's size
and checksum, so a damaged chunk makes its checkpoints skipped like any damaged file. After each
completed checkpoint, the chunks no retained checkpoint names are deleted. Versions 1 and 2
(no chunks) still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import xxhash

from tideflow._errors import ConfigError, StateError

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointSettings",
    "CheckpointStore",
    "SnapshotChunk",
    "SnapshotFile",
    "load_dir",
]

log = logging.getLogger("tideflow.state")

FORMAT = "tideflow-checkpoint"
VERSION = 1
#: The manifest version of checkpoints that hold files (:class:`SnapshotFile`).
VERSION_FILES = 2
#: The manifest version of checkpoints that refer to shared chunks (:class:`SnapshotChunk`).
VERSION_CHUNKS = 3
_DIR = re.compile(r"^chk-(\d{8})$")
_BLOB = "$blob"
_FILE = "$file"
_CHUNK = "$chunk"
#: The directory of a checkpoint store that holds the chunk files.
SHARED = "shared"
_CHUNK_NAME = re.compile(r"^[0-9a-f]{32}\.chunk$")
#: Writes a streamed chunk's bytes to a binary file (:meth:`SnapshotChunk.streamed`).
ChunkWriter = Callable[[BinaryIO], object]


class _Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


#: The checksum written into new manifests (the name of its field in a manifest entry).
CHECKSUM = "xxh3_128"
#: Checksums a manifest entry may carry, in the order they are looked for.
_CHECKSUMS: dict[str, Callable[[], _Hash]] = {
    CHECKSUM: xxhash.xxh3_128,
    "sha256": hashlib.sha256,  # checkpoints written before XXH3 (session 8)
}


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A file that is part of a snapshot: moved into the checkpoint when it is written.

    Operators whose state lives in a file (the on-disk state backend) return one inside their
    snapshot instead of the file's bytes, so the state never has to fit in memory. The file
    must be complete and no longer written to; the checkpoint takes it over (moves it). On
    load, the value is the :class:`~pathlib.Path` of the verified file inside the checkpoint,
    which restoring operators read (never modify).

    Examples
    --------
    >>> SnapshotFile("/tmp/state.sqlite").path.name
    'state.sqlite'
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))


class SnapshotChunk:
    """An immutable piece of a snapshot, written once and shared by later checkpoints.

    An operator whose state only grows (or changes in parts) returns the same chunk object in
    each snapshot for as long as that part of its state is unchanged: the first checkpoint
    writes it into the store's ``shared/`` directory, later ones only refer to it, so a
    checkpoint costs what changed since the previous one. The bytes are released from
    memory once written. On load, the value is a chunk read from the checkpoint (verified);
    an operator that keeps it and returns it again in its next snapshot makes the resumed
    job refer to the same file instead of writing it again.

    A chunk made by :meth:`streamed` holds no bytes: the store calls its writer with the
    chunk's file and hashes what goes through, so a large table goes to disk without a copy
    of it in memory.

    Examples
    --------
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp())
    >>> chunk = SnapshotChunk(b"rows")
    >>> _ = store.write(1, [{"step": {"version": 1, "rows": chunk}}])
    >>> _ = store.write(2, [{"step": {"version": 1, "rows": chunk}}])  # refers, no copy
    >>> back = store.latest().parts[0]["step"]["rows"]
    >>> back.read(), back.name == chunk.name, len(list(store.shared.iterdir()))
    (b'rows', True, 1)
    """

    __slots__ = ("_data", "_writer", "checksum", "name", "path", "size")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data: bytes | None = bytes(data)
        self._writer: ChunkWriter | None = None
        #: File name in a ``shared/`` directory, once written (or read back).
        self.name: str | None = None
        #: Where the chunk file is, once written (or read back).
        self.path: Path | None = None
        #: Bytes in the chunk (0 for a streamed chunk until it is written).
        self.size = len(self._data)
        #: Algorithm and hex digest of the file's checksum, once written (or read back).
        self.checksum: tuple[str, str] | None = None

    @classmethod
    def streamed(cls, write: ChunkWriter) -> SnapshotChunk:
        """A chunk whose bytes ``write(file)`` writes to a binary file, when it is stored.

        ``write`` is called once, by the checkpoint that first holds the chunk (or by
        :meth:`read`, into memory), and dropped after; it must write the same bytes whenever
        it is called and must not keep the file.

        Examples
        --------
        >>> import tempfile
        >>> store = CheckpointStore(tempfile.mkdtemp())
        >>> chunk = SnapshotChunk.streamed(lambda fh: fh.write(b"table"))
        >>> _ = store.write(1, [{"step": {"rows": chunk}}])
        >>> chunk.size, store.latest().parts[0]["step"]["rows"].read()
        (5, b'table')
        """
        chunk = cls(b"")
        chunk._data, chunk._writer = None, write
        return chunk

    @classmethod
    def _stored(cls, path: Path, data: bytes, checksum: tuple[str, str]) -> SnapshotChunk:
        chunk = cls(data)
        chunk.name, chunk.path, chunk.checksum = path.name, path, checksum
        return chunk

    def read(self) -> bytes:
        """The chunk's bytes (from memory, from its file, or from its writer)."""
        if self._data is not None:
            return self._data
        if self.path is None:
            if self._writer is None:  # pragma: no cover - a chunk always has one of the three
                msg = "snapshot chunk has neither bytes, a file nor a writer"
                raise StateError(msg)
            buf = io.BytesIO()
            self._writer(buf)
            self._data, self._writer = buf.getvalue(), None
            self.size = len(self._data)
            return self._data
        try:
            return self.path.read_bytes()
        except OSError as exc:
            msg = f"snapshot chunk {str(self.path)!r} cannot be read: {exc}"
            raise StateError(msg) from exc

    def release(self) -> None:
        """Drop the in-memory bytes of a chunk that is in a file (it is read from there)."""
        if self.path is not None:
            self._data = None
            self._writer = None

    def __repr__(self) -> str:
        return f"SnapshotChunk(name={self.name!r}, size={self.size})"


class _HashingFile(io.RawIOBase):
    """A write-only binary file that hashes and counts what it passes on to another file."""

    def __init__(self, out: io.BufferedWriter) -> None:
        super().__init__()
        self._out = out
        self.hash = _CHECKSUMS[CHECKSUM]()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._out.write(view)
        self.hash.update(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size


def _encode(
    value: Any,
    blobs: bytearray,
    files: list[Path] | None = None,
    chunks: dict[int, tuple[int, SnapshotChunk]] | None = None,
) -> Any:
    if isinstance(value, SnapshotChunk):
        if chunks is None:
            msg = f"a snapshot chunk ({value!r}) cannot be stored here"
            raise StateError(msg)
        index, _ = chunks.setdefault(id(value), (len(chunks), value))
        return {_CHUNK: index}
    if isinstance(value, SnapshotFile):
        if files is None:
            msg = f"a snapshot file ({value.path}) cannot be stored here"
            raise StateError(msg)
        files.append(value.path)
        return {_FILE: len(files) - 1}
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        ref = {_BLOB: [len(blobs), len(data)]}
        blobs.extend(data)
        return ref
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                msg = f"snapshot keys must be strings, got {k!r} ({type(k).__name__})"
                raise StateError(msg)
            out[k] = _encode(v, blobs, files, chunks)
        return out
    if isinstance(value, list | tuple):
        return [_encode(v, blobs, files, chunks) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    msg = f"snapshot value of type {type(value).__name__} is not plain data: {value!r:.80}"
    raise StateError(msg)


def _decode(
    value: Any,
    blobs: bytes,
    files: list[Path] | None = None,
    chunks: list[SnapshotChunk] | None = None,
) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _CHUNK in value:
            return _listed("chunk", value[_CHUNK], chunks)
        if len(value) == 1 and _BLOB in value:
            start, length = value[_BLOB]
            return blobs[start : start + length]
        if len(value) == 1 and _FILE in value:
            return _listed("file", value[_FILE], files)
        return {k: _decode(v, blobs, files, chunks) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, blobs, files, chunks) for v in value]
    return value


def _listed(kind: str, index: Any, items: list[Any] | None) -> Any:
    """Item ``index`` of what the manifest lists (files, chunks); StateError if it is not."""
    if items is None or not isinstance(index, int) or not 0 <= index < len(items):
        msg = f"snapshot refers to {kind} {index!r}, which the manifest does not list"
        raise StateError(msg)
    return items[index]


def _entry(size: int, checksum: tuple[str, str]) -> dict[str, Any]:
    """A manifest entry's size and checksum: ``{"size": n, "<algorithm>": "<hex digest>"}``."""
    algorithm, digest = checksum
    return {"size": size, algorithm: digest}


def _digest(data: bytes | bytearray, algorithm: str = CHECKSUM) -> tuple[str, str]:
    """The checksum of ``data`` (algorithm, hex digest)."""
    h = _CHECKSUMS[algorithm]()
    h.update(data)
    return algorithm, h.hexdigest()


def _digest_file(path: Path, algorithm: str = CHECKSUM) -> tuple[int, tuple[str, str]]:
    """Size and checksum of a file, read in pieces."""
    h = _CHECKSUMS[algorithm]()
    size = 0
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 20):
            h.update(piece)
            size += len(piece)
    return size, (algorithm, h.hexdigest())


def _algorithm(d: Path, name: str, entry: dict[str, Any]) -> str:
    """The checksum algorithm of a manifest entry; StateError if it names none this reads."""
    for algorithm in _CHECKSUMS:
        if isinstance(entry.get(algorithm), str):
            return algorithm
    msg = (
        f"checkpoint {str(d)!r}: the manifest entry of {name} has no checksum this tideflow "
        f"verifies (fields {sorted(entry)}; it reads {sorted(_CHECKSUMS)}); was it written by "
        "a newer tideflow?"
    )
    raise StateError(msg)


def _verify(d: Path, name: str, entry: dict[str, Any], data: bytes) -> tuple[str, str]:
    """Check ``data`` against its manifest entry (size, checksum); the checksum it has."""
    checksum = _digest(data, _algorithm(d, name, entry))
    if len(data) != entry["size"] or checksum[1] != entry[checksum[0]]:
        msg = f"checkpoint {str(d)!r}: {name} does not match its manifest sum"
        raise StateError(msg)
    return checksum


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """A complete checkpoint read back from disk.

    ``parts[i]`` is worker ``i``'s state: step id -> snapshot.
    """

    id: int
    path: Path
    workers: int
    parts: list[dict[str, dict[str, Any]]]
    meta: dict[str, Any]


class CheckpointStore:
    """Writes and reads checkpoints of one job in a directory.

    Parameters
    ----------
    path
        The checkpoint directory (created if missing).
    keep
        How many complete checkpoints to retain (older ones are deleted), at least 1.

    Examples
    --------
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), keep=2)
    >>> for i in (1, 2, 3):
    ...     _ = store.write(i, [{"count": {"version": 1, "n": i, "ipc": b"\\x00\\x01"}}])
    >>> [c for c in store.ids()], store.latest().parts[0]["count"]["n"]
    ([2, 3], 3)
    """

    def __init__(self, path: str | os.PathLike[str], *, keep: int = 3) -> None:
        if not isinstance(keep, int) or keep < 1:
            msg = f"checkpoints: keep must be a whole number >= 1, got {keep!r}"
            raise ConfigError(msg)
        self.path = Path(path)
        self.keep = keep
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"checkpoints: cannot create the checkpoint directory {str(self.path)!r}: {exc}"
            raise ConfigError(msg) from exc
        self._shared = (self.path / SHARED).resolve()

    @property
    def shared(self) -> Path:
        """The directory of the chunk files (created when the first chunk is written)."""
        return self._shared

    # -- writing ------------------------------------------------------------------------------
    def _write_file(self, path: Path, data: bytes | bytearray) -> None:
        """Write and fsync one file (the seam tests use to inject faults such as ENOSPC)."""
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def _stream_file(self, path: Path, write: ChunkWriter) -> tuple[int, tuple[str, str]]:
        """Write a file by ``write(file)``, fsync it; its size and checksum (a fault seam too)."""
        with open(path, "wb") as fh:
            hashing = _HashingFile(fh)
            write(cast(BinaryIO, hashing))  # a raw file that only writes
            fh.flush()
            os.fsync(fh.fileno())
        return hashing.size, (CHECKSUM, hashing.hash.hexdigest())

    def tmp_path(self, checkpoint_id: int, owner: int | None = None) -> Path:
        """The temporary directory of a checkpoint written by process ``owner`` (default: this)."""
        return self.path / f".tmp-chk-{checkpoint_id:08d}-{owner or os.getpid()}"

    def begin(self, checkpoint_id: int) -> Path:
        """Create the temporary directory of a checkpoint being written."""
        tmp = self.tmp_path(checkpoint_id)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def write_part(
        self, tmp: Path, worker: int, state: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """Write one worker's state into a checkpoint being written; returns its manifest entry."""
        blobs = bytearray()
        files: list[Path] = []
        chunks: dict[int, tuple[int, SnapshotChunk]] = {}
        doc = json.dumps(_encode(state, blobs, files, chunks), separators=(",", ":")).encode()
        name = f"worker-{worker:04d}"
        entry: dict[str, Any] = {}
        if chunks:
            entry["chunks"] = [self._put_chunk(c) for _, c in sorted(chunks.values())]
        if files:
            entry["files"] = [
                self._take_file(src, tmp / f"{name}.file-{i}") for i, src in enumerate(files)
            ]
        self._write_file(tmp / f"{name}.json", doc)
        self._write_file(tmp / f"{name}.bin", blobs)  # the buffer itself: no copy
        entry["json"] = _entry(len(doc), _digest(doc))
        entry["bin"] = _entry(len(blobs), _digest(blobs))
        return entry

    def _put_chunk(self, chunk: SnapshotChunk) -> dict[str, Any]:
        """Make sure a chunk is in ``shared/`` (write it once); its manifest entry."""
        shared = self.shared
        if chunk.path is not None and chunk.path.parent == shared and chunk.path.exists():
            assert chunk.checksum is not None  # set with its path
            return {"name": chunk.name, **_entry(chunk.size, chunk.checksum)}
        shared.mkdir(exist_ok=True)
        name = f"{uuid.uuid4().hex}.chunk"
        tmp = shared / f".tmp-{name}-{os.getpid()}"
        try:
            checksum: tuple[str, str]
            if chunk._data is not None:
                self._write_file(tmp, chunk._data)
                checksum = _digest(chunk._data)
            elif chunk._writer is not None:  # hashed on its way to the file: no copy in memory
                chunk.size, checksum = self._stream_file(tmp, chunk._writer)
            else:  # read back from another directory (a savepoint, another store): copy it
                assert chunk.path is not None and chunk.checksum is not None
                try:
                    os.link(chunk.path, tmp)
                except OSError:
                    shutil.copyfile(chunk.path, tmp)
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
                checksum = chunk.checksum  # as verified when it was read (its algorithm)
            os.rename(tmp, shared / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(shared)
        chunk.name, chunk.path, chunk.checksum = name, shared / name, checksum
        chunk.release()
        return {"name": name, **_entry(chunk.size, checksum)}

    def _take_file(self, src: Path, dst: Path) -> dict[str, Any]:
        """Move a snapshot file into a checkpoint being written; fsync it; its manifest entry."""
        try:
            os.replace(src, dst)
        except OSError:  # another file system: copy, then drop the original
            shutil.copyfile(src, dst)
            src.unlink()
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())
        size, checksum = _digest_file(dst)
        return {"name": dst.name, **_entry(size, checksum)}

    def complete(
        self, tmp: Path, checkpoint_id: int, entries: list[dict[str, Any]], meta: dict[str, Any]
    ) -> Path:
        """Write the manifest last and make the checkpoint visible by an atomic rename."""
        version = VERSION_FILES if any(e.get("files") for e in entries) else VERSION
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION_CHUNKS if any(e.get("chunks") for e in entries) else version,
            "id": checkpoint_id,
            "workers": len(entries),
            "created": time.time(),
            "meta": meta,
            "parts": {f"worker-{i:04d}": e for i, e in enumerate(entries)},
        }
        if manifest["version"] == VERSION_CHUNKS:
            manifest["chunk_dir"] = f"../{SHARED}"
        self._write_file(tmp / "MANIFEST.json", json.dumps(manifest, indent=1).encode())
        final = self.path / f"chk-{checkpoint_id:08d}"
        if final.exists():  # a checkpoint of an earlier attempt with the same id: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(self.path)
        self._retain()
        return final

    def write(
        self,
        checkpoint_id: int,
        parts: list[dict[str, dict[str, Any]]],
        meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write a whole checkpoint (every worker's state); returns its directory.

        On failure (disk full, ...) the partial checkpoint is removed and the error raised;
        earlier checkpoints are untouched.
        """
        tmp = self.begin(checkpoint_id)
        try:
            entries = [self.write_part(tmp, i, state) for i, state in enumerate(parts)]
            return self.complete(tmp, checkpoint_id, entries, meta or {})
        except BaseException:
            self.abort(tmp)
            raise

    def abort(self, tmp: Path) -> None:
        """Remove a checkpoint that could not be completed."""
        shutil.rmtree(tmp, ignore_errors=True)

    def _retain(self) -> None:
        ids = self.ids()
        for old in ids[: -self.keep]:
            shutil.rmtree(self.path / f"chk-{old:08d}", ignore_errors=True)
        for p in self.path.glob(".tmp-chk-*"):
            if not p.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(p, ignore_errors=True)
        self._collect_chunks()

    def _collect_chunks(self) -> None:
        """Delete the chunk files that no checkpoint left in the directory names.

        Runs after a checkpoint completes, when no other checkpoint is being written (the
        runtime writes them one after another), so a chunk not named by a manifest is one of
        a checkpoint that was deleted, aborted or cut short by a crash.
        """
        if not self.shared.is_dir():
            return
        named: set[str] = set()
        for cid in self.ids():
            try:
                manifest = json.loads((self.path / f"chk-{cid:08d}" / "MANIFEST.json").read_bytes())
                for entry in manifest.get("parts", {}).values():
                    named.update(str(c["name"]) for c in entry.get("chunks", []))
            except (OSError, ValueError, AttributeError, TypeError, KeyError):
                continue  # a damaged checkpoint is never loaded: its chunks are not needed
        for f in self.shared.iterdir():
            if f.name not in named and (_CHUNK_NAME.match(f.name) or f.name.startswith(".tmp-")):
                f.unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------
    def ids(self) -> list[int]:
        """Ids of the checkpoint directories present (complete or not validated), ascending."""
        out = []
        for p in self.path.iterdir():
            m = _DIR.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def load(self, checkpoint_id: int) -> Checkpoint:
        """Read and verify one checkpoint; :class:`~tideflow.StateError` if it is damaged."""
        return load_dir(self.path / f"chk-{checkpoint_id:08d}")

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; damaged newer ones are skipped with a warning."""
        for cid in reversed(self.ids()):
            try:
                return self.load(cid)
            except StateError as exc:
                log.warning("skipping damaged checkpoint %d, using an earlier one: %s", cid, exc)
        return None


def load_dir(d: Path) -> Checkpoint:
    """Read and verify the checkpoint in directory ``d`` (a ``chk-*`` directory or a savepoint).

    Raises :class:`~tideflow.StateError` if it is missing, damaged or of another version.
    """
    try:
        manifest = json.loads((d / "MANIFEST.json").read_bytes())
    except (OSError, ValueError) as exc:
        msg = f"checkpoint {str(d)!r} has no readable manifest: {exc}"
        raise StateError(msg) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        msg = f"checkpoint {str(d)!r}: not a {FORMAT} manifest"
        raise StateError(msg)
    if manifest.get("version") not in (VERSION, VERSION_FILES, VERSION_CHUNKS):
        msg = (
            f"checkpoint {str(d)!r} has format version {manifest.get('version')!r}; this "
            f"tideflow reads versions {VERSION} to {VERSION_CHUNKS}"
        )
        raise StateError(msg)
    parts: list[dict[str, dict[str, Any]]] = []
    for i in range(int(manifest["workers"])):
        name = f"worker-{i:04d}"
        entry = manifest["parts"][name]
        files = {}
        for kind in ("json", "bin"):
            try:
                data = (d / f"{name}.{kind}").read_bytes()
            except OSError as exc:
                msg = f"checkpoint {str(d)!r}: cannot read {name}.{kind}: {exc}"
                raise StateError(msg) from exc
            _verify(d, f"{name}.{kind}", entry[kind], data)
            files[kind] = data
        paths = [_check_file(d, f) for f in entry.get("files", [])]
        chunk_dir = d / str(manifest.get("chunk_dir", SHARED))
        chunks = [_check_chunk(d, chunk_dir, c) for c in entry.get("chunks", [])]
        parts.append(_decode(json.loads(files["json"]), files["bin"], paths, chunks))
    return Checkpoint(
        int(manifest["id"]), d, int(manifest["workers"]), parts, dict(manifest.get("meta", {}))
    )


def _check_file(d: Path, entry: dict[str, Any]) -> Path:
    """Verify a snapshot file of a checkpoint against its manifest entry; its path."""
    path = d / str(entry["name"])
    algorithm = _algorithm(d, path.name, entry)
    try:
        size, (_, digest) = _digest_file(path, algorithm)
    except OSError as exc:
        msg = f"checkpoint {str(d)!r}: cannot read {path.name}: {exc}"
        raise StateError(msg) from exc
    if size != entry["size"] or digest != entry[algorithm]:
        msg = f"checkpoint {str(d)!r}: {path.name} does not match its manifest sum"
        raise StateError(msg)
    return path.resolve()


def _check_chunk(d: Path, chunk_dir: Path, entry: dict[str, Any]) -> SnapshotChunk:
    """Read and verify a chunk a checkpoint names (kept in memory until its user drops it)."""
    name = str(entry["name"])
    if not _CHUNK_NAME.match(name):
        msg = f"checkpoint {str(d)!r}: {name!r} is not a chunk name"
        raise StateError(msg)
    path = (chunk_dir / name).resolve()
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"checkpoint {str(d)!r}: cannot read its chunk {name}: {exc}"
        raise StateError(msg) from exc
    return SnapshotChunk._stored(path, data, _verify(d, f"chunk {name}", entry, data))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointSettings:
    """Checkpointing of a job: where, how often, how many kept.

    A pipeline file run by ``tideflow run`` may assign one to a module-level variable named
    ``checkpoints``; ``tf.run`` takes the same values as ``checkpoint_dir``,
    ``checkpoint_interval`` and ``checkpoint_keep``.

    Examples
    --------
    >>> from datetime import timedelta
    >>> CheckpointSettings("/tmp/ck", timedelta(seconds=5)).run_kwargs()["checkpoint_keep"]
    3
    """

    path: str | os.PathLike[str]
    interval: timedelta = timedelta(seconds=10)
    keep: int = 3

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`tideflow.run`."""
        return {
            "checkpoint_dir": Path(self.path),
            "checkpoint_interval": self.interval,
            "checkpoint_keep": self.keep,
        }
