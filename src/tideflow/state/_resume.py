"""Turning a checkpoint into what each worker of a (possibly rescaled) run resumes from."""

from __future__ import annotations

import io
from typing import Any

import polars as pl

from tideflow._errors import StateError
from tideflow.state._store import Checkpoint, SnapshotChunk

__all__ = ["FINISHED", "JOB", "finished", "resume_for"]

#: Node kinds whose state is keyed by positions (merged over workers): sources and sinks.
_MERGED = ("source", "sink")

#: What a checkpoint taken after the job finished holds for each operator: every result went
#: out (and the sinks hold it), so there is no state to keep, only the fact.
FINISHED: dict[str, Any] = {"finished": True}


#: The entry of a checkpoint part about the whole job, beside the steps':
#: ``{"ended": true}`` when the worker had ended every step (every result went out).
JOB = "__job__"


def finished(snap: dict[str, Any] | None) -> bool:
    """Whether ``snap`` is the :data:`FINISHED` marker.

    Examples
    --------
    >>> finished(FINISHED), finished({"version": 2}), finished(None)
    (True, False, False)
    """
    return snap is not None and snap.get("finished") is True and len(snap) == 1


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _own_share(frame: pl.DataFrame, keys: list[str], worker: int, count: int) -> pl.DataFrame:
    """Rows of ``frame`` whose key hashes to ``worker`` (the exchange's partitioning)."""
    if frame.height == 0 or count == 1:
        return frame
    h = pl.col(keys[0]).hash(seed=7) if len(keys) == 1 else pl.struct(keys).hash(seed=7)
    return frame.filter((h % count) == worker)


def _flat(values: list[Any]) -> list[bytes]:
    """Arrow IPC bytes of snapshot table fields: bytes, chunks (read), lists of them, None."""
    out: list[bytes] = []
    for value in values:
        if isinstance(value, list):
            out.extend(_flat(value))
        elif isinstance(value, SnapshotChunk):
            out.append(value.read())
        elif value is not None:
            out.append(value)
    return out


def _union(frames: list[Any]) -> pl.DataFrame | None:
    """All rows of some snapshot table fields (see :func:`_flat`), None without columns."""
    got = [pl.read_ipc(io.BytesIO(f)) for f in _flat(frames)]
    got = [f for f in got if f.width]
    return pl.concat(got, how="vertical_relaxed") if got else None


def _share(frames: list[Any], keys: list[str], w: int, n: int) -> bytes | None:
    frame = _union(frames)
    return None if frame is None else _ipc(_own_share(frame, keys, w, n))


_JOINS = ("join_window", "join_interval", "join_table", "lookup")


def _rescale_join(
    kind: str, keys: list[str], snaps: list[dict[str, Any]], w: int, n: int
) -> dict[str, Any]:
    """Join state for worker ``w`` of ``n``: rows by key hash, watermarks merged.

    Version 2 holds each table as Arrow IPC bytes, version 3 as a list of chunks (a regular
    join's side: every chunk of its snapshots, with right rows met since by their unique left
    record, which the restore drops); either way the new worker's share is one IPC value.
    """
    first = snaps[0]
    out = dict(first)
    if kind in ("join_window", "join_interval"):
        out["wm"] = min(int(s["wm"]) for s in snaps)
        if "idle_seen" in first:  # a window's combiner: any idle worker makes all pass records
            out["idle_seen"] = any(bool(s.get("idle_seen")) for s in snaps)
        out["schemas"] = [
            next((s["schemas"][i] for s in snaps if s["schemas"][i] is not None), None)
            for i in (0, 1)
        ]
        for side in ("left", "right", "pending"):
            if side in first or side != "pending":
                out[side] = _share([s.get(side) for s in snaps], keys, w, n)
    elif kind == "join_table":
        for field in ("table", "pending"):
            out[field] = _share([s.get(field) for s in snaps], keys, w, n)
        out["table_ended"] = all(bool(s.get("table_ended")) for s in snaps)
        held = [s["held_wm"] for s in snaps if s.get("held_wm") is not None]
        out["held_wm"] = min(held) if held else None
    else:
        # A lookup is not keyed (any record may reach any worker): every worker gets the whole
        # cache, the newest entry per key; its size bound applies again at the next batch.
        cache = _union([s.get("cache") for s in snaps])
        if cache is not None:
            cache = cache.sort("__at", maintain_order=True).unique(
                subset=keys, keep="last", maintain_order=True
            )
        out["cache"] = None if cache is None else _ipc(cache)
        out["tick"] = max(int(s.get("tick", 0)) for s in snaps)
        for counter in ("calls", "hits", "misses"):
            out[counter] = sum(int(s.get(counter, 0)) for s in snaps) if w == 0 else 0
    return out


def _agg_pairs_with_keys(snap: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """A version-3, 4 or 5 aggregation snapshot in the version-2 layout (one table; pairs with
    keys).

    Versions 3 to 5 keep the table as chunks of changed rows and each ``n_unique``'s pairs
    as chunks of (key id, value) rows (3) or of pair codes with their encoding (4; 5: one set
    per family of aggregates), the id being the key's row in the table; a rescaled restore
    needs the table and the pairs' key columns to split them by key hash (each aggregate's
    pairs apart again).
    """
    from tideflow.runtime._keyed import pair_frames, table_of_rows

    table = table_of_rows(list(snap.get("rows") or []))
    key_rows = table.select(keys) if table.width else pl.DataFrame(schema=dict.fromkeys(keys))
    pairs: dict[str, bytes] = {}
    frames: dict[str, pl.DataFrame | None] = {}
    for name, parts in (snap.get("pairs") or {}).items():
        if snap.get("version") in (4, 5):  # 5: one entry per family of aggregates
            got = pair_frames(name, parts)
            frames.update({m: f.rename({"value": "__value"}) for m, f in got.items()})
        else:
            frames[name] = _union(parts)
    for name, frame in frames.items():
        if frame is None or not frame.height:
            pairs[name] = _ipc(pl.DataFrame())
            continue
        rows = key_rows[frame.get_column("__id")]
        pairs[name] = _ipc(rows.with_columns(frame.get_column("__value")))
    out = {k: v for k, v in snap.items() if k != "rows"}
    return {**out, "version": 2, "table": _ipc(table), "pairs": pairs}


def _keys(node: Any) -> list[str]:
    spec = node.spec
    if node.kind in ("join_table", "lookup"):
        return list(spec.on)
    return list(getattr(spec, "keys", None) or [])


def _rescale(
    step: str,
    kind: str,
    keys: list[str],
    snaps: list[dict[str, Any]],
    w: int,
    n: int,
    spec: Any = None,
) -> dict[str, Any]:
    """Redistribute keyed state written by other workers to worker ``w`` of ``n``."""
    first = snaps[0]
    if kind == "custom":
        rescaled: dict[str, Any] = spec.rescale(snaps, w, n)
        return rescaled
    if kind in _JOINS:
        if first.get("version") == 1:  # a summary without state (older tideflow)
            return first
        if first.get("version") in (2, 3):
            return _rescale_join(kind, keys, snaps, w, n)
    if kind == "event_time":
        # Downstream of the exchange the watermark was the minimum over the workers: resuming
        # from the largest time any worker saw would make the others' next records late. Times
        # per part (``per=``) are learnt again from the data: a new worker reads other parts.
        seen = [int(s["max_seen"]) for s in snaps if s.get("max_seen") is not None]
        return {"version": 1, "max_seen": min(seen) if seen else None}
    if kind == "window" and first.get("version") == 2:
        out = dict(first)
        out["wm"] = min(int(s["wm"]) for s in snaps)
        if "idle_seen" in first:  # a window's combiner: any idle worker makes all pass records
            out["idle_seen"] = any(bool(s.get("idle_seen")) for s in snaps)
        for field in ("pending", "fired", "open", "counts"):
            if field in first:
                frame = _union([s.get(field) for s in snaps])
                out[field] = None if frame is None else _ipc(_own_share(frame, keys, w, n))
        if "dirty" in first and isinstance(first["dirty"], list):
            out["dirty"] = sorted({d for s in snaps for d in s["dirty"]})
        spilled = [e for s in snaps for e in s.get("spilled") or []]
        if spilled or "spilled" in first:
            # Files of on-disk windows: every new worker reads them all and keeps its share.
            out["spilled"] = spilled
            out["share"] = [w, n]
        return out
    if kind == "agg" and any(s.get("version") in (3, 4, 5) for s in snaps):
        snaps = [
            _agg_pairs_with_keys(s, keys) if s.get("version") in (3, 4, 5) else s for s in snaps
        ]
        first = snaps[0]
    if kind == "agg" and any(s.get("backend") == "sqlite" for s in snaps):
        # On-disk state: every worker's database is read by each new worker, which keeps its
        # share; rows held in memory (memory-format snapshots, pinned keys) travel as a table.
        disk = [s for s in snaps if s.get("backend") == "sqlite"]
        out = {k: v for k, v in disk[0].items() if k != "db"}
        out["dbs"] = [s["db"] for s in disk if "db" in s] + [
            p for s in disk for p in s.get("dbs", [])
        ]
        rows = _union(
            [s.get("pinned") for s in disk] + [s.get("table") for s in snaps if "table" in s]
        )
        out["pinned"] = _ipc(pl.DataFrame() if rows is None else _own_share(rows, keys, w, n))
        out["share"] = [w, n]
        return out
    if kind == "top_n" and first.get("version") == 2:
        # Each key was on one worker, whose chunks hold its rows in arrival order; the new
        # worker folds its share (the old workers' chunks are read, not shared).
        rows = _union([s["chunks"] for s in snaps])
        share = [] if rows is None else [_ipc(_own_share(rows, keys, w, n))]
        return {"version": 2, "kind": "top_n", "chunks": share}
    if kind == "top_n" and first.get("version") == 1:
        rows = _union([s.get("table") for s in snaps])
        out = dict(first)
        out["table"] = _ipc(pl.DataFrame() if rows is None else _own_share(rows, keys, w, n))
        return out
    old_pairs = first.get("version") == 1 and any(s.get("pairs") for s in snaps)
    if kind == "agg" and first.get("version") in (1, 2) and not old_pairs:
        # Version 2 keeps the distinct pairs of n_unique with their key columns.
        table = _union([s["table"] for s in snaps])
        out = dict(first)
        out["table"] = _ipc(pl.DataFrame() if table is None else _own_share(table, keys, w, n))
        names = {name for s in snaps for name in s.get("pairs", {})}
        out["pairs"] = {
            name: _share([s.get("pairs", {}).get(name) for s in snaps], keys, w, n)
            or _ipc(pl.DataFrame())
            for name in sorted(names)
        }
        return out
    msg = (
        f"step '{step}' ({kind}) has state that cannot be redistributed to a different number "
        f"of workers ({len(snaps)} -> {n}); resume with workers={len(snaps)}"
    )
    raise StateError(msg)


def resume_for(
    cp: Checkpoint, nodes: list[Any], worker: int, count: int
) -> dict[str, dict[str, Any]]:
    """What worker ``worker`` of ``count`` resumes from: step id -> snapshot.

    Source positions and sink states are merged over all workers of the checkpoint (they are
    keyed by partition). Operator state is the worker's own part when the worker count is
    unchanged; otherwise keyed state is redistributed by the hash the exchange uses.
    """
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        step = node.step_id
        snaps = [p[step] for p in cp.parts if step in p]
        if not snaps:
            continue
        if node.kind in _MERGED:
            merged: dict[str, Any] = {}
            for snap in snaps:
                merged.update(snap)
            out[step] = merged
        elif cp.workers == count:
            if step in cp.parts[worker]:
                out[step] = cp.parts[worker][step]
        elif all(finished(s) for s in snaps):
            out[step] = FINISHED
        else:
            # Workers that finished hold no state; the others' is redistributed.
            live = [s for s in snaps if not finished(s)]
            out[step] = _rescale(step, node.kind, _keys(node), live, worker, count, node.spec)
    if cp.parts and all(p.get(JOB, {}).get("ended") for p in cp.parts):
        out[JOB] = {"ended": True}  # taken after the job's end: its results are all out
    return out
