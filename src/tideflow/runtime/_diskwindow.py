"""Tumbling and sliding window aggregates whose open windows spill to disk.

The memory operator keeps, per open window, a list of partial frames (one row per key). With
:class:`~tideflow.state.DiskState`, once the open windows hold more than ``cache_keys`` partial
rows in memory, every open window's partials are merged and written to Arrow IPC files, split
into ``PARTS`` files by the hash of the key. When the watermark passes a window's end, the
window is finalized one hash part at a time (its files plus the part of what is still in
memory), so memory stays bounded by ``cache_keys`` rows plus one part of one window.

Snapshots add ``spilled``: for each spilled file its window start, part and the file itself
(a :class:`~tideflow.state.SnapshotFile`, a hard link when possible, so the working file stays).
The memory operator can restore such a snapshot (it reads the files into memory).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from tideflow._errors import StateError
from tideflow.api._graph import Node
from tideflow.runtime._operators import OpContext
from tideflow.runtime._windowing import AlignedWindowOperator
from tideflow.state._backends import DiskState
from tideflow.state._store import SnapshotFile

__all__ = ["PARTS", "SpillingWindowOperator"]

#: Hash parts of a spilled window (a window is finalized one part at a time).
PARTS = 8


def _part(keys: list[str]) -> pl.Expr:
    h = pl.col(keys[0]).hash(seed=11) if len(keys) == 1 else pl.struct(keys).hash(seed=11)
    return (h % PARTS).alias("__part")


def _share(frame: pl.DataFrame, keys: list[str], share: list[int] | None) -> pl.DataFrame:
    if share is None or share[1] == 1 or frame.height == 0:
        return frame
    w, n = share
    h = pl.col(keys[0]).hash(seed=7) if len(keys) == 1 else pl.struct(keys).hash(seed=7)
    return frame.filter((h % n) == w)


class SpillingWindowOperator(AlignedWindowOperator):
    """``window(tumbling|sliding).agg(..., state=DiskState(...))``."""

    def __init__(self, node: Node, ctx: OpContext, settings: DiskState) -> None:
        super().__init__(node, ctx)
        self.budget = settings.cache_keys
        self._tmp: str | None = None
        base = settings.directory
        if base is None:
            self._tmp = tempfile.mkdtemp(prefix="tideflow-windows-")
            base = Path(self._tmp)
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", node.step_id)
        self.dir = base / f"{safe}.w{ctx.worker_index}.p{os.getpid()}.spill"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = (
                f"step '{node.step_id}': cannot create the spill directory {str(self.dir)!r}: {exc}"
            )
            raise StateError(msg) from exc
        _sweep_stale(base)
        self.base = base
        #: window start -> [(part, file)]
        self.spilled: dict[int, list[tuple[int, Path]]] = {}
        self.files = 0
        self.spills = 0

    # -- spilling ------------------------------------------------------------------------------
    def _in_memory(self) -> int:
        return sum(f.height for frames in self.pending.values() for f in frames)

    def _write(self, ws: int, frame: pl.DataFrame) -> None:
        """Write one window's partial rows as PARTS files."""
        if frame.height == 0:
            return
        tagged = frame.with_columns(_part(self.keys))
        for (p,), rows in tagged.partition_by("__part", as_dict=True).items():
            self.files += 1
            path = self.dir / f"ws{ws}-f{self.files}-p{p}.arrow"
            rows.drop("__part").write_ipc(path)
            self.spilled.setdefault(ws, []).append((int(p), path))

    def _maybe_spill(self) -> None:
        if self._in_memory() <= self.budget:
            return
        by = [*self.keys, "__ws"]
        for ws in sorted(self.pending):
            frames = [f for f in self.pending.pop(ws) if f.height]
            if frames:
                self._write(ws, self._merge(frames, by))
        self.spills += 1

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        super().on_batch(index, batch)
        self._maybe_spill()

    # -- firing --------------------------------------------------------------------------------
    def _advance(self, wm: int) -> None:
        if wm <= self.wm:
            return
        by = [*self.keys, "__ws"]
        for ws in sorted(w for w in self.spilled if w + self.size <= wm):
            files = self.spilled.pop(ws)
            frames = [f for f in self.pending.pop(ws, []) if f.height]
            self.dirty.discard(ws)
            mem = self._merge(frames, by).with_columns(_part(self.keys)) if frames else None
            fired: list[pl.DataFrame] = []
            for p in range(PARTS):
                parts = [pl.read_ipc(path) for q, path in files if q == p]
                if mem is not None:
                    parts.append(mem.filter(pl.col("__part") == p).drop("__part"))
                parts = [f for f in parts if f.height]
                if not parts:
                    continue
                merged = self._merge(parts, by)
                self._emit_results([self._result(merged)], "final")
                if self.lateness and ws + self.size + self.lateness > wm:
                    fired.append(merged)
            if fired:
                self.fired[ws] = pl.concat(fired, how="vertical_relaxed")
            for _, path in files:
                with contextlib.suppress(OSError):
                    path.unlink()
        super()._advance(wm)

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        entries = []
        for ws, files in sorted(self.spilled.items()):
            for p, path in files:
                link = path.with_name(path.name + f".snap{self.files}")
                self.files += 1
                try:
                    os.link(path, link)
                except OSError:
                    shutil.copyfile(path, link)
                entries.append({"ws": ws, "part": p, "file": SnapshotFile(link)})
        snap["spilled"] = entries
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        snap = dict(snap)
        entries = snap.pop("spilled", None) or []
        share = snap.get("share")
        super().restore(snap)
        for e in entries:
            ws, p, src = int(e["ws"]), int(e["part"]), Path(e["file"])
            self.files += 1
            dst = self.dir / f"ws{ws}-f{self.files}-p{p}.arrow"
            if share is None:
                shutil.copyfile(src, dst)
            else:
                _share(pl.read_ipc(src), self.keys, share).write_ipc(dst)
            self.spilled.setdefault(ws, []).append((p, dst))
        self._maybe_spill()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # a killed run's processes may have outlived our start
            _sweep_stale(self.base)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


_STALE = re.compile(r"\.p(\d+)\.spill$")


def _sweep_stale(directory: Path) -> None:
    """Remove spill directories of processes that no longer run (a SIGKILL)."""
    for d in directory.iterdir():
        m = _STALE.search(d.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass
