"""Checkpoint storage: a versioned on-disk format with atomic completion and bounded retention.

Layout of a checkpoint directory (format ``tideflow-checkpoint``, version 1)::

    <dir>/
      chk-00000007/            a complete checkpoint (id 7)
        worker-0000.json       state of worker 0: step id -> snapshot (JSON)
        worker-0000.bin        binary blobs (Arrow IPC) the JSON refers to
        MANIFEST.json          written last: format, version, id, workers, sizes, SHA-256 sums
      .tmp-chk-00000008-1234/  being written (never read; removed on the next start)

Snapshots are JSON objects; a ``bytes`` value (Arrow IPC tables) is stored in the ``.bin`` file
and replaced by ``{"$blob": [offset, length]}``. A :class:`SnapshotFile` value (a file an
operator wrote, e.g. the SQLite database of an on-disk state backend) is moved into the
checkpoint as ``worker-0000.file-<i>`` and replaced by ``{"$file": i}``; its size and SHA-256
sum go into the manifest, and the manifest's version is then 2. Nothing is pickled. A checkpoint becomes
visible by renaming its temporary directory, after every file in it is written and synced; a
directory without a valid manifest, or whose files do not match the manifest's sums, is
skipped with a warning and the previous checkpoint is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from tideflow._errors import ConfigError, StateError

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "CheckpointSettings",
    "CheckpointStore",
    "SnapshotFile",
    "load_dir",
]

log = logging.getLogger("tideflow.state")

FORMAT = "tideflow-checkpoint"
VERSION = 1
#: The manifest version of checkpoints that hold files (:class:`SnapshotFile`).
VERSION_FILES = 2
_DIR = re.compile(r"^chk-(\d{8})$")
_BLOB = "$blob"
_FILE = "$file"


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


def _encode(value: Any, blobs: bytearray, files: list[Path] | None = None) -> Any:
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
            out[k] = _encode(v, blobs, files)
        return out
    if isinstance(value, list | tuple):
        return [_encode(v, blobs, files) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    msg = f"snapshot value of type {type(value).__name__} is not plain data: {value!r:.80}"
    raise StateError(msg)


def _decode(value: Any, blobs: bytes, files: list[Path] | None = None) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BLOB in value:
            start, length = value[_BLOB]
            return blobs[start : start + length]
        if len(value) == 1 and _FILE in value:
            index = value[_FILE]
            if files is None or not isinstance(index, int) or not 0 <= index < len(files):
                msg = f"snapshot refers to file {index!r}, which the manifest does not list"
                raise StateError(msg)
            return files[index]
        return {k: _decode(v, blobs, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, blobs, files) for v in value]
    return value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_file(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


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

    # -- writing ------------------------------------------------------------------------------
    def _write_file(self, path: Path, data: bytes) -> None:
        """Write and fsync one file (the seam tests use to inject faults such as ENOSPC)."""
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

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
        doc = json.dumps(_encode(state, blobs, files), separators=(",", ":")).encode()
        name = f"worker-{worker:04d}"
        entry: dict[str, Any] = {}
        if files:
            entry["files"] = [
                self._take_file(src, tmp / f"{name}.file-{i}") for i, src in enumerate(files)
            ]
        self._write_file(tmp / f"{name}.json", doc)
        self._write_file(tmp / f"{name}.bin", bytes(blobs))
        entry["json"] = {"size": len(doc), "sha256": _sha(doc)}
        entry["bin"] = {"size": len(blobs), "sha256": _sha(bytes(blobs))}
        return entry

    def _take_file(self, src: Path, dst: Path) -> dict[str, Any]:
        """Move a snapshot file into a checkpoint being written; fsync it; its manifest entry."""
        try:
            os.replace(src, dst)
        except OSError:  # another file system: copy, then drop the original
            shutil.copyfile(src, dst)
            src.unlink()
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())
        size, sha = _sha_file(dst)
        return {"name": dst.name, "size": size, "sha256": sha}

    def complete(
        self, tmp: Path, checkpoint_id: int, entries: list[dict[str, Any]], meta: dict[str, Any]
    ) -> Path:
        """Write the manifest last and make the checkpoint visible by an atomic rename."""
        manifest = {
            "format": FORMAT,
            "version": VERSION_FILES if any(e.get("files") for e in entries) else VERSION,
            "id": checkpoint_id,
            "workers": len(entries),
            "created": time.time(),
            "meta": meta,
            "parts": {f"worker-{i:04d}": e for i, e in enumerate(entries)},
        }
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
    if manifest.get("version") not in (VERSION, VERSION_FILES):
        msg = (
            f"checkpoint {str(d)!r} has format version {manifest.get('version')!r}; this "
            f"tideflow reads versions {VERSION} and {VERSION_FILES}"
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
            if len(data) != entry[kind]["size"] or _sha(data) != entry[kind]["sha256"]:
                msg = f"checkpoint {str(d)!r}: {name}.{kind} does not match its manifest sum"
                raise StateError(msg)
            files[kind] = data
        paths = [_check_file(d, f) for f in entry.get("files", [])]
        parts.append(_decode(json.loads(files["json"]), files["bin"], paths))
    return Checkpoint(
        int(manifest["id"]), d, int(manifest["workers"]), parts, dict(manifest.get("meta", {}))
    )


def _check_file(d: Path, entry: dict[str, Any]) -> Path:
    """Verify a snapshot file of a checkpoint against its manifest entry; its path."""
    path = d / str(entry["name"])
    try:
        size, sha = _sha_file(path)
    except OSError as exc:
        msg = f"checkpoint {str(d)!r}: cannot read {path.name}: {exc}"
        raise StateError(msg) from exc
    if size != entry["size"] or sha != entry["sha256"]:
        msg = f"checkpoint {str(d)!r}: {path.name} does not match its manifest sum"
        raise StateError(msg)
    return path.resolve()


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
