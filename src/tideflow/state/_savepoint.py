"""Savepoints: checkpoints taken on demand, kept where the user says, restorable at any scale.

A savepoint is a complete checkpoint copied out of the checkpoint directory (so retention never
deletes it) into a directory the user names, with a ``SAVEPOINT.json`` that identifies it::

    <savepoint>/
      MANIFEST.json, worker-NNNN.json, worker-NNNN.bin    the checkpoint (format version 1-3)
      shared/<uuid>.chunk                                 copies of the chunks it refers to
      SAVEPOINT.json                                      format, id, checkpoint id, flow, ...

A savepoint is self-contained: the chunks of an incremental checkpoint (in the checkpoint
directory's ``shared/``) are copied (hard-linked) into its own ``shared/``, and its manifest
says so (``chunk_dir``).

How a running job is asked for one: a job with a checkpoint directory writes
``<checkpoint_dir>/RUNNING.json`` (its process id) while it runs. :func:`take_savepoint` drops a
request file into ``<checkpoint_dir>/savepoint-requests/`` and sends the job ``SIGUSR1``
(which takes a checkpoint at once). When a checkpoint completes, the job copies it to every
requested directory, answers with a ``.done.json`` file and, for a request with ``stop``, stops
at once, so no output after the savepoint is committed. A job that is not running is saved
from its newest complete checkpoint: that is exactly where it would resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from tideflow._errors import ConfigError, StateError
from tideflow.state._store import SHARED, Checkpoint, CheckpointStore, _fsync_dir, load_dir

__all__ = [
    "SAVEPOINT_FORMAT",
    "fulfil_requests",
    "job_running",
    "load_savepoint",
    "mark_running",
    "take_savepoint",
    "write_savepoint",
]

log = logging.getLogger("tideflow.state")

SAVEPOINT_FORMAT = "tideflow-savepoint"
_VERSION = 1
_RUNNING = "RUNNING.json"
_REQUESTS = "savepoint-requests"


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _started(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks after boot), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _empty_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        msg = (
            f"savepoint: {str(out)!r} already exists and is not an empty directory; name a new one"
        )
        raise ConfigError(msg)


def write_savepoint(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Copy the complete checkpoint directory ``checkpoint`` to a new savepoint ``out``.

    Files are hard-linked when possible (checkpoint files are never changed once written, and
    deleting the checkpoint later leaves the savepoint whole), copied otherwise. The savepoint
    appears by an atomic rename once verified.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> chk = CheckpointStore(d / "ck").write(4, [{"step": {"version": 1, "n": 2}}], {"flow": "f"})
    >>> sp = write_savepoint(chk, d / "sp")
    >>> cp, info = load_savepoint(sp)
    >>> cp.id, cp.parts[0]["step"]["n"], info["flow"]
    (4, 2, 'f')
    """
    src, dst = Path(checkpoint), Path(out).absolute()
    cp = load_dir(src)  # verify before copying
    _empty_target(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".tmp-{dst.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for f in sorted(src.iterdir()):
            if f.is_file():
                _link_or_copy(f, tmp / f.name)
        _own_chunks(src, tmp)
        info = {
            "format": SAVEPOINT_FORMAT,
            "version": _VERSION,
            "id": uuid.uuid4().hex,
            "checkpoint": cp.id,
            "flow": cp.meta.get("flow"),
            "workers": cp.workers,
            "created": time.time(),
            "taken_from": str(src.absolute()),
        }
        (tmp / "SAVEPOINT.json").write_text(json.dumps(info, indent=1))
        _fsync_dir(tmp)
        load_dir(tmp)
        if dst.exists():
            dst.rmdir()
        os.rename(tmp, dst)
        _fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("savepoint of checkpoint %d written to %s", cp.id, dst)
    return dst


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _own_chunks(src: Path, tmp: Path) -> None:
    """Copy the chunks a checkpoint refers to into the savepoint; its manifest says where."""
    manifest = json.loads((src / "MANIFEST.json").read_bytes())
    names = [c["name"] for e in manifest["parts"].values() for c in e.get("chunks", [])]
    if not names:
        return
    chunk_dir = src / str(manifest.get("chunk_dir", SHARED))
    (tmp / SHARED).mkdir()
    for name in sorted(set(names)):
        _link_or_copy(chunk_dir / name, tmp / SHARED / name)
    manifest["chunk_dir"] = SHARED
    (tmp / "MANIFEST.json").unlink()  # a hard link to the checkpoint's: never write through it
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp / SHARED)


def load_savepoint(path: str | os.PathLike[str]) -> tuple[Checkpoint, dict[str, Any]]:
    """Read and verify a savepoint: the checkpoint and the contents of its ``SAVEPOINT.json``."""
    d = Path(path)
    try:
        info = json.loads((d / "SAVEPOINT.json").read_text())
    except (OSError, ValueError) as exc:
        msg = f"{str(d)!r} is not a savepoint (no readable SAVEPOINT.json): {exc}"
        raise ConfigError(msg) from exc
    if not isinstance(info, dict) or info.get("format") != SAVEPOINT_FORMAT:
        msg = f"{str(d)!r} is not a savepoint ({SAVEPOINT_FORMAT} expected in SAVEPOINT.json)"
        raise ConfigError(msg)
    if info.get("version") != _VERSION:
        msg = f"savepoint {str(d)!r} has version {info.get('version')!r}; this tideflow reads 1"
        raise StateError(msg)
    return load_dir(d), info


# -- the running job's side --------------------------------------------------------------------
@contextlib.contextmanager
def mark_running(checkpoint_dir: Path, flow: str, *, signals: bool) -> Any:
    """Write ``RUNNING.json`` (process id, whether SIGUSR1 is handled) while the block runs."""
    path = checkpoint_dir / _RUNNING
    pid = os.getpid()
    doc = {"pid": pid, "flow": flow, "signal": signals, "started": time.time()}
    doc["process_start"] = _started(pid)
    try:
        _write_atomic(path, doc)
    except OSError as exc:
        log.warning("could not write %s (savepoints need it): %s", path, exc)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def fulfil_requests(checkpoint_dir: Path, checkpoint: Path) -> bool:
    """Copy the just completed ``checkpoint`` to every requested savepoint directory.

    Returns True when a request asked the job to stop after its savepoint.
    """
    requests = checkpoint_dir / _REQUESTS
    if not requests.is_dir():
        return False
    stop = False
    for req in sorted(requests.glob("*.request.json")):
        try:
            doc = json.loads(req.read_text())
            out = Path(doc["out"])
            expires = float(doc.get("expires", "inf"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable savepoint request %s: %s", req, exc)
            continue
        if time.time() > expires:  # its requester gave up (or was killed) long ago
            log.warning("dropping the expired savepoint request for %s", out)
            req.unlink(missing_ok=True)
            continue
        done = req.with_name(req.name.replace(".request.json", ".done.json"))
        result: dict[str, Any]
        try:
            path = write_savepoint(checkpoint, out)
            result = {"path": str(path), "checkpoint": load_dir(path).id}
            stop = stop or bool(doc.get("stop"))
        except (OSError, ConfigError, StateError) as exc:
            log.warning("savepoint to %s failed: %s", out, exc)
            result = {"error": str(exc)}
        try:
            _write_atomic(done, result)
            req.unlink()
        except OSError as exc:
            log.warning("could not answer the savepoint request %s: %s", req, exc)
    return stop


# -- the requesting side ------------------------------------------------------------------------
def job_running(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``RUNNING.json`` of the job using ``checkpoint_dir`` if its process is alive."""
    path = Path(checkpoint_dir) / _RUNNING
    try:
        doc = json.loads(path.read_text())
        pid = int(doc["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a job that was killed
    except PermissionError:
        pass  # alive, another user's
    recorded = doc.get("process_start")
    if recorded is not None and _started(pid) not in (None, recorded):
        return None  # the pid was reused by another process after the job was killed
    return dict(doc)


def take_savepoint(
    checkpoint_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    stop: bool = False,
    timeout: timedelta = timedelta(seconds=60),
) -> Path:
    """Take a savepoint of the job that checkpoints into ``checkpoint_dir``; returns its path.

    A running job takes a checkpoint now (``SIGUSR1``) and copies it to ``out``; with
    ``stop=True`` it then stops without committing anything after it (restore the savepoint to
    continue). A job that is not running is saved from its newest complete checkpoint.

    Parameters
    ----------
    checkpoint_dir
        The job's checkpoint directory.
    out
        The savepoint directory to create (missing or empty).
    stop
        Stop the job right after the savepoint.
    timeout
        How long to wait for a running job to answer.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = CheckpointStore(d / "ck").write(3, [{"s": {"version": 1}}], {"flow": "f"})
    >>> sp = take_savepoint(d / "ck", d / "sp")  # no job running: its newest checkpoint
    >>> load_savepoint(sp)[1]["checkpoint"]
    3
    """
    ck, target = Path(checkpoint_dir), Path(out).absolute()
    if not ck.is_dir():
        msg = f"savepoint: the checkpoint directory {str(ck)!r} does not exist"
        raise ConfigError(msg)
    _empty_target(target)
    running = job_running(ck)
    if running is None:
        return _from_latest(ck, target)
    requests = ck / _REQUESTS
    requests.mkdir(exist_ok=True)
    nonce = uuid.uuid4().hex
    req, done = requests / f"{nonce}.request.json", requests / f"{nonce}.done.json"
    now = time.time()
    doc = {"out": str(target), "stop": stop, "requested": now}
    doc["expires"] = now + timeout.total_seconds()
    _write_atomic(req, doc)
    pid = int(running["pid"])
    # Signal only a job still running now: its handler outlives its RUNNING.json.
    if running.get("signal") and hasattr(signal, "SIGUSR1") and job_running(ck) is not None:
        os.kill(pid, signal.SIGUSR1)
    log.info("asked job %d for a savepoint to %s", pid, target)
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        if done.exists():
            result = json.loads(done.read_text())
            done.unlink()
            if "error" in result:
                msg = f"savepoint: the job could not write {str(target)!r}: {result['error']}"
                raise StateError(msg)
            return Path(result["path"])
        if job_running(ck) is None and not done.exists():
            # The job ended (its input ran out, or it was stopped) before answering.
            req.unlink(missing_ok=True)
            return _from_latest(ck, target)
        time.sleep(0.05)
    req.unlink(missing_ok=True)
    msg = (
        f"savepoint: job {pid} did not take a savepoint within {timeout.total_seconds():g} s "
        "(it takes one at its next checkpoint; is it stuck?)"
    )
    raise StateError(msg)


def _from_latest(ck: Path, target: Path) -> Path:
    cp = CheckpointStore(ck).latest()
    if cp is None:
        msg = (
            f"savepoint: no job is running with checkpoint directory {str(ck)!r} and it holds "
            "no complete checkpoint"
        )
        raise ConfigError(msg)
    log.info("no job running: saving its newest checkpoint %d", cp.id)
    return write_savepoint(cp.path, target)
