"""On-disk keyed aggregation state: a hot set in memory, the rest in SQLite.

:class:`DiskAggState` keeps the most recently touched keys in an in-memory
:class:`~tideflow.runtime._keyed.AggState` (NumPy arrays, vectorized merges) and every other key
in a SQLite table (one row per key: key columns + accumulator columns, ``WITHOUT ROWID``,
primary key on the key columns). Per micro-batch:

1. the batch is reduced to one partial row per key (Polars ``group_by``);
2. the batch's keys that are not in memory are fetched from SQLite in one query (a temporary
   table of the wanted keys joined with the state table) and loaded into the hot set;
3. the partials are merged in memory (as the memory backend does);
4. when the hot set holds more than ``cache_keys`` keys, the least recently touched are written
   back (only those changed since they were last written) and dropped from memory.

Keys with a null (or NaN) component cannot be a SQLite primary key; they stay in memory.

A snapshot writes the changed hot keys back, then copies the database with SQLite's online
backup into a file that the checkpoint takes over (:class:`~tideflow.state.SnapshotFile`).
The snapshot's format: see ``docs/state.md``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tideflow._errors import StateError
from tideflow.api._aggs import AggSpec
from tideflow.api._graph import Node
from tideflow.runtime._keyed import AggState
from tideflow.runtime._operators import OpContext, Operator
from tideflow.state._backends import DiskState
from tideflow.state._store import SnapshotFile

__all__ = ["DiskAggOperator", "DiskAggState", "disk_snapshot_table"]

log = logging.getLogger("tideflow.state")

#: Snapshot format of the on-disk backend (the ``backend`` field of the snapshot).
BACKEND = "sqlite"
SNAPSHOT_VERSION = 1
#: After an eviction the hot set holds this share of ``cache_keys``.
_KEEP_SHARE = 0.6
_CHUNK = 100_000
_STALE = re.compile(r"\.p(\d+)\.(?:sqlite|snap-\d+\.sqlite)(?:-wal|-shm|-journal)?$")


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _from_ipc(data: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(data))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def key_type_ok(dtype: pl.DataType) -> bool:
    """Whether a key column of this type can be a SQLite key (numbers, text, bytes, times)."""
    return (
        dtype.is_integer()
        or dtype.is_float()
        or dtype.is_temporal()
        or isinstance(dtype, pl.String | pl.Boolean | pl.Binary)
    )


def _sql_dtype(dtype: pl.DataType) -> pl.DataType:
    """How a column travels to and from SQLite (64-bit integers for times, booleans, UInt64)."""
    if dtype.is_temporal() or isinstance(dtype, pl.Boolean | pl.UInt64):
        return pl.Int64()
    return dtype


def _to_sql(c: str, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.UInt64):  # SQLite integers are signed 64-bit: same bits
        return pl.col(c).reinterpret(signed=True)
    return pl.col(c).cast(_sql_dtype(dtype))


def _from_sql(c: str, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.UInt64):
        return pl.col(c).reinterpret(signed=False)
    return pl.col(c).cast(dtype)


class _Table:
    """The SQLite table of one step on one worker."""

    def __init__(self, path: Path, keys: tuple[str, ...], cache_mb: int) -> None:
        self.path = path
        self.keys = keys
        self.cache_mb = cache_mb
        self.schema: dict[str, pl.DataType] | None = None
        self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # The working database is not what recovery reads (checkpoints are): no fsyncs.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(f"PRAGMA cache_size=-{int(self.cache_mb) * 1024}")
        db.execute("PRAGMA temp_store=MEMORY")
        return db

    def create(self, schema: dict[str, pl.DataType]) -> None:
        """Create the state table (key columns first) if it does not exist."""
        self.schema = dict(schema)
        cols = ", ".join(_q(c) for c in schema)
        pk = ", ".join(_q(k) for k in self.keys)
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS state ({cols}, PRIMARY KEY ({pk})) WITHOUT ROWID"
        )
        self.db.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS want ({', '.join(_q(k) for k in self.keys)})"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self.db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('format', 'tideflow-agg-state'), ('version', ?)",
            (str(SNAPSHOT_VERSION),),
        )

    def _rows(self, frame: pl.DataFrame) -> Iterator[tuple[Any, ...]]:
        assert self.schema is not None
        phys = frame.select([_to_sql(c, t) for c, t in self.schema.items()])
        return phys.iter_rows()

    def frame(self, rows: list[tuple[Any, ...]]) -> pl.DataFrame:
        """Rows read from SQLite as a frame of the table's schema."""
        assert self.schema is not None
        sql = {c: _sql_dtype(t) for c, t in self.schema.items()}
        raw = pl.DataFrame(rows, schema=sql, orient="row")
        return raw.with_columns([_from_sql(c, t) for c, t in self.schema.items()])

    def put(self, frame: pl.DataFrame) -> None:
        """Insert or replace rows (key + accumulator columns)."""
        if frame.height == 0:
            return
        assert self.schema is not None
        marks = ", ".join("?" * len(self.schema))
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                f"INSERT OR REPLACE INTO state VALUES ({marks})",
                self._rows(frame.sort(list(self.keys))),
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The stored rows of the (distinct) ``keys`` that are stored."""
        assert self.schema is not None
        ks = self.keys
        # Sorted look-ups walk the B-tree in order: fewer page visits than random order.
        phys = keys.select([_to_sql(k, self.schema[k]) for k in ks]).sort(ks)
        if len(ks) == 1 and (phys.dtypes[0].is_integer() or phys.dtypes[0] == pl.String):
            doc = json.dumps(phys.get_column(ks[0]).to_list(), ensure_ascii=False)
            rows = self.db.execute(
                f"SELECT s.* FROM json_each(?) w CROSS JOIN state s ON s.{_q(ks[0])} = w.value",
                (doc,),
            ).fetchall()
            return self.frame(rows)
        marks = ", ".join("?" * len(ks))
        on = " AND ".join(f"s.{_q(k)} = w.{_q(k)}" for k in ks)
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM temp.want")
            self.db.executemany(f"INSERT INTO temp.want VALUES ({marks})", phys.iter_rows())
            rows = self.db.execute(
                f"SELECT s.* FROM temp.want w CROSS JOIN state s ON {on}"
            ).fetchall()
        finally:
            self.db.execute("COMMIT")
        return self.frame(rows)

    def chunks(self, size: int = _CHUNK) -> Iterator[pl.DataFrame]:
        """Every stored row, ``size`` at a time."""
        if self.schema is None:
            return
        cur = self.db.execute("SELECT * FROM state")
        while rows := cur.fetchmany(size):
            yield self.frame(rows)

    def backup(self, dst: Path) -> None:
        """Copy the database, consistently, to ``dst`` (SQLite's online backup)."""
        target = sqlite3.connect(dst)
        try:
            self.db.backup(target)
        finally:
            target.close()

    def replace_with(self, src: Path) -> None:
        """Make the database a copy of ``src`` (a snapshot; never opened for writing)."""
        self.db.close()
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path) + suffix)
        shutil.copyfile(src, self.path)
        self.db = self._connect()

    def close(self) -> None:
        self.db.close()


def _read_snapshot_db(path: Path, schema: dict[str, pl.DataType]) -> Iterator[pl.DataFrame]:
    """The rows of a snapshot database, a chunk at a time (opened read-only)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        sql = {c: _sql_dtype(t) for c, t in schema.items()}
        cur = db.execute(f"SELECT {', '.join(_q(c) for c in schema)} FROM state")
        while rows := cur.fetchmany(_CHUNK):
            raw = pl.DataFrame(rows, schema=sql, orient="row")
            yield raw.with_columns([_from_sql(c, t) for c, t in schema.items()])
    finally:
        db.close()


def _share(frame: pl.DataFrame, keys: list[str], share: list[int] | None) -> pl.DataFrame:
    """Rows of ``frame`` whose key hashes to worker ``share[0]`` of ``share[1]``."""
    if share is None or share[1] == 1 or frame.height == 0:
        return frame
    w, n = share
    h = pl.col(keys[0]).hash(seed=7) if len(keys) == 1 else pl.struct(keys).hash(seed=7)
    return frame.filter((h % n) == w)


def _check_snapshot(snap: dict[str, Any]) -> None:
    if snap.get("backend") != BACKEND or snap.get("version") != SNAPSHOT_VERSION:
        msg = (
            f"on-disk aggregation state {snap.get('backend')!r} version "
            f"{snap.get('version')!r} is not supported (expected {BACKEND!r} version "
            f"{SNAPSHOT_VERSION})"
        )
        raise StateError(msg)


def disk_snapshot_table(snap: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Turn an on-disk snapshot into the memory backend's (version 1, one Arrow table).

    Used when a job that checkpointed with ``DiskState`` resumes with the memory backend.
    """
    _check_snapshot(snap)
    schema = dict(_from_ipc(snap["schema"]).schema)
    share = snap.get("share")
    dbs = snap["dbs"] if "dbs" in snap else [snap["db"]]
    frames = [_share(f, keys, share) for p in dbs for f in _read_snapshot_db(Path(p), schema)]
    frames.append(_from_ipc(snap["pinned"]))
    frames = [f for f in frames if f.height]
    table = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
    return {"version": 1, "table": _ipc(table), "dtypes": snap["dtypes"], "pairs": {}}


def _sweep_stale(directory: Path) -> None:
    """Remove working files left behind by processes that no longer run (a SIGKILL)."""
    for f in directory.iterdir():
        m = _STALE.search(f.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                f.unlink()
        except OSError:
            pass


class DiskAggState:
    """Keyed aggregation state with a bounded hot set in memory and the rest in SQLite.

    Parameters
    ----------
    keys, specs
        Key columns and (combinable) aggregates, as for ``AggState``.
    path
        The working database file (created, replaced if present).
    cache_keys
        Most keys held in memory.
    cache_mb
        SQLite page cache in MiB.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from tideflow.api._aggs import AggSpec
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> st = DiskAggState(("k",), (AggSpec("sum", "v", "v"),), d / "s.sqlite", cache_keys=1000)
    >>> for i in range(3):
    ...     _ = st.update(pl.DataFrame({"k": list(range(i * 1000, i * 1000 + 1000)), "v": [1] * 1000}))
    >>> st.hot_keys, st.evicted_total, st.all_values().height
    (1600, 1400, 3000)
    >>> st.close()
    """

    def __init__(
        self,
        keys: tuple[str, ...],
        specs: tuple[AggSpec, ...],
        path: Path,
        cache_keys: int,
        cache_mb: int = 64,
    ) -> None:
        bad = [s.name for s in specs if s.kind in ("n_unique", "top_k")]
        if bad:
            msg = f"the on-disk state backend cannot hold n_unique/top_k aggregates {bad}"
            raise StateError(msg)
        self.keys = keys
        self.specs = specs
        self.path = Path(path)
        self.cache_keys = cache_keys
        self.cache_mb = cache_mb
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path) + suffix)
        self.table = _Table(self.path, keys, cache_mb)
        self.mem = AggState(keys, specs)
        #: Batch number when each hot key (by id) was last changed.
        self.touched = np.zeros(0, dtype=np.int64)
        self.seq = 0
        #: Keys changed after this batch number are not yet written to SQLite.
        self.written_seq = 0
        self.on_disk = False
        self.snapshots = 0
        self.evicted_total = 0
        self.loaded_total = 0

    @property
    def hot_keys(self) -> int:
        """Keys held in memory."""
        return len(self.mem.index)

    # -- schemas -----------------------------------------------------------------------------
    def _ensure_table(self) -> None:
        if self.table.schema is not None:
            return
        sample = self.mem.export(np.zeros(0, dtype=np.int64))
        self.table.create(dict(sample.schema))

    def _check_keys(self, frame: pl.DataFrame) -> None:
        bad = {k: str(frame.schema[k]) for k in self.keys if not key_type_ok(frame.schema[k])}
        if bad:
            msg = (
                f"key columns {bad} cannot be stored on disk (numbers, strings, booleans, bytes "
                "and times can); use state='memory' for this step"
            )
            raise StateError(msg)

    # -- batches -----------------------------------------------------------------------------
    def update(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
        """Fold raw rows in; the batch's distinct keys and their (hot) ids."""
        partial = batch.group_by(self.keys).agg(self.mem.partial_exprs())
        return self._fold(partial, batch)

    def merge(self, partials: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
        """Fold partial rows (from a combiner) in."""
        partial = partials.group_by(self.keys).agg(self.mem.merge_exprs())
        return self._fold(partial, None)

    def merge_values(self, partials: pl.DataFrame) -> pl.DataFrame:
        """Fold partial rows in and return the new values of their keys."""
        keys, ids = self.merge(partials)
        return self.values(keys, ids)

    def values(self, keys: pl.DataFrame, ids: np.ndarray) -> pl.DataFrame:
        """Current aggregates of the hot keys at ``ids`` (valid until the next fold)."""
        return self.mem.values(keys, ids)

    def _fold(
        self, partial: pl.DataFrame, batch: pl.DataFrame | None
    ) -> tuple[pl.DataFrame, np.ndarray]:
        if self.seq == 0 and self.table.schema is None:
            self._check_keys(partial)
        self._evict()
        start = len(self.mem.index)
        ids, _ = self.mem.index.lookup(partial)
        self._grow_touched()
        if self.on_disk and len(self.mem.index) > start:
            self._fault_in(partial, ids, start)
        keys, ids = self.mem._fold(partial, batch, ids)
        self.seq += 1
        self.touched[ids] = self.seq
        return keys, ids

    def _grow_touched(self) -> None:
        n = len(self.mem.index)
        if n > len(self.touched):
            grown = np.zeros(max(n, 2 * len(self.touched), 1024), dtype=np.int64)
            grown[: len(self.touched)] = self.touched
            self.touched = grown

    def _fault_in(self, partial: pl.DataFrame, ids: np.ndarray, start: int) -> None:
        """Load the stored accumulators of the batch's keys that just got fresh ids."""
        fresh = np.flatnonzero(ids >= start)
        want = partial.select(self.keys)[fresh]
        found = self.table.get(want)
        if found.height == 0:
            return
        hit = want.with_row_index("__i").join(found, on=list(self.keys), how="inner")
        found_ids = ids[fresh[hit.get_column("__i").to_numpy()]]
        self.mem.load(hit.drop("__i"), found_ids)
        self.loaded_total += found.height
        self.touched[found_ids] = self.written_seq  # as stored: clean until changed

    def _pinned(self, frame: pl.DataFrame) -> pl.Series:
        """Rows whose key cannot live in SQLite (a null or NaN component)."""
        conds = []
        for k in self.keys:
            c = pl.col(k).is_null()
            if frame.schema[k].is_float():
                c = c | pl.col(k).is_nan()
            conds.append(c)
        return frame.select(pl.any_horizontal(conds)).to_series()

    def _write_back(self, ids: np.ndarray) -> None:
        """Write the changed keys among ``ids`` to SQLite."""
        dirty = ids[self.touched[ids] > self.written_seq]
        if len(dirty) == 0:
            return
        rows = self.mem.export(dirty)
        rows = rows.filter(~self._pinned(rows))
        if rows.height:
            self._ensure_table()
            self.table.put(rows)
            self.on_disk = True

    def _evict(self) -> None:
        n = len(self.mem.index)
        if n <= self.cache_keys:
            return
        target = int(self.cache_keys * _KEEP_SHARE)
        touched = self.touched[:n].copy()
        pinned = self._pinned(self.mem.index.frame()).to_numpy()
        touched[pinned] = np.iinfo(np.int64).max
        count = n - target
        victims = np.argpartition(touched, count - 1)[:count]
        victims = victims[~pinned[victims]]
        self._write_back(np.sort(victims))
        keep = np.ones(n, dtype=np.bool_)
        keep[victims] = False
        kept = self.mem.compact(keep)
        self.touched = self.touched[kept].copy()
        self.evicted_total += len(victims)
        log.debug(
            "state %s: %d keys written to disk, %d hot", self.path.name, len(victims), len(kept)
        )

    def flush(self) -> None:
        """Write every changed hot key to SQLite (the hot set stays)."""
        n = len(self.mem.index)
        if n:
            self._write_back(np.arange(n, dtype=np.int64))
        self.written_seq = self.seq

    # -- output ------------------------------------------------------------------------------
    def iter_values(self) -> Iterator[pl.DataFrame]:
        """Every key with its aggregates, a chunk at a time (the end of a bounded input)."""
        n = len(self.mem.index)
        if not self.on_disk:
            if n:
                yield self.mem.all_values()
            return
        self.flush()
        if n:
            pinned = self._pinned(self.mem.index.frame()).to_numpy()
            if pinned.any():
                ids = np.flatnonzero(pinned)
                yield self.mem.values(self.mem.index.frame()[ids], ids)
        for chunk in self.table.chunks():
            tmp = AggState(self.keys, self.specs)
            tmp._dtypes = dict(self.mem._dtypes)
            tmp.load(chunk)
            yield tmp.all_values()

    def all_values(self) -> pl.DataFrame:
        """Every key with its aggregates (all in memory at once: for tests and small states)."""
        frames = [f for f in self.iter_values() if f.height]
        return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data + the database copy (a :class:`SnapshotFile` the checkpoint takes over)."""
        if not self.on_disk:
            return self.mem.snapshot()  # everything is in memory: the memory backend's format
        self.flush()
        self._ensure_table()
        n = len(self.mem.index)
        if n:
            hot = self.mem.export(np.arange(n, dtype=np.int64))
            pinned = hot.filter(self._pinned(hot))
        else:
            pinned = self.mem.export(np.zeros(0, dtype=np.int64))
        self.snapshots += 1
        for old in self.path.parent.glob(self.path.name.removesuffix(".sqlite") + ".snap-*"):
            with contextlib.suppress(OSError):
                old.unlink()  # a snapshot file a failed checkpoint did not take over
        dst = self.path.with_name(
            self.path.name.removesuffix(".sqlite") + f".snap-{self.snapshots}.sqlite"
        )
        self.table.backup(dst)
        assert self.table.schema is not None
        return {
            "version": SNAPSHOT_VERSION,
            "backend": BACKEND,
            "db": SnapshotFile(dst),
            "pinned": _ipc(pinned),
            "schema": _ipc(pl.DataFrame(schema=self.table.schema)),
            "dtypes": _ipc(pl.DataFrame(schema=self.mem._dtypes)),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a snapshot: this backend's, or the memory backend's (version 1 table).

        A snapshot with ``dbs`` and ``share`` (a rescaled restore) holds the databases of all
        workers of the checkpoint; only this worker's share of the keys is loaded.
        """
        self.mem = AggState(self.keys, self.specs)
        self.touched = np.zeros(0, dtype=np.int64)
        self.seq = self.written_seq = 0
        self.on_disk = False
        if snap.get("backend") is None:  # the memory backend's snapshot
            self.mem.restore(snap)
            n = len(self.mem.index)
            self.seq, self.touched = 1, np.ones(n, dtype=np.int64)
            self._evict()  # what does not fit in memory goes to disk
            return
        _check_snapshot(snap)
        schema = dict(_from_ipc(snap["schema"]).schema)
        self.mem._dtypes = dict(_from_ipc(snap["dtypes"]).schema)
        self.table.schema = None
        if "db" in snap:
            self.table.replace_with(Path(snap["db"]))
            self.table.create(schema)
        else:
            self.table.create(schema)
            share = snap.get("share")
            for p in snap["dbs"]:
                for chunk in _read_snapshot_db(Path(p), schema):
                    self.table.put(_share(chunk, list(self.keys), share))
        self.on_disk = True
        pinned = _from_ipc(snap["pinned"])
        if pinned.height:
            ids = self.mem.load(pinned)
            self.touched = np.zeros(len(self.mem.index), dtype=np.int64)
            self.touched[ids] = 0

    def close(self) -> None:
        """Close and delete the working database."""
        self.table.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path) + suffix)


def _safe(step_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", step_id)


class DiskAggOperator(Operator):
    """``key_by(...).agg(...)`` with :class:`~tideflow.state.DiskState`."""

    def __init__(self, node: Node, ctx: OpContext, emit: str, settings: DiskState) -> None:
        super().__init__(node, ctx)
        op = node.spec
        self.updates = emit == "updates"
        self.combined = op.combined
        self._tmpdir: str | None = None
        directory = settings.directory
        if directory is None:
            self._tmpdir = tempfile.mkdtemp(prefix="tideflow-state-")
            directory = Path(self._tmpdir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"step '{node.step_id}': cannot create the state directory {str(directory)!r}: {exc}"
            raise StateError(msg) from exc
        _sweep_stale(directory)
        self.directory = directory
        name = f"{_safe(node.step_id)}.w{ctx.worker_index}.p{os.getpid()}.sqlite"
        self.state = DiskAggState(
            op.keys, op.aggs, directory / name, settings.cache_keys, settings.cache_mb
        )

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        try:
            keys, ids = self.state.merge(batch) if self.combined else self.state.update(batch)
        except StateError as exc:
            msg = f"step '{self.node.step_id}': {exc}"
            raise StateError(msg) from exc
        if self.updates:
            self.ctx.emit(self.state.values(keys, ids))

    def on_end(self) -> None:
        if not self.updates:
            for out in self.state.iter_values():
                if out.height:
                    self.ctx.emit(out)

    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot()

    def state_table(self) -> pl.DataFrame:
        return self.state.all_values()

    def restore(self, snap: dict[str, Any]) -> None:
        try:
            self.state.restore(snap)
        except (sqlite3.Error, OSError) as exc:
            msg = f"step '{self.node.step_id}': cannot restore the on-disk state: {exc}"
            raise StateError(msg) from exc

    def close(self) -> None:
        self.state.close()
        # Again at the end: files of a killed run whose processes were still exiting at start.
        with contextlib.suppress(OSError):
            _sweep_stale(self.directory)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
