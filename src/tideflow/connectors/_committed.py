"""Exactly-once file output: JSON-lines part files made visible by checkpoints.

A writer appends to ``part-<worker>-<seq>.jsonl.pending``. When a checkpoint is taken
(``pre_commit``) the file is synced and closed; when the checkpoint is complete (``commit``) it
is renamed to ``part-<worker>-<seq>.jsonl``. A restart from checkpoint K renames the files K
had staged (its commit may have been cut short), and deletes every pending file and every part
file written after K, so the visible files hold each result exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import IO, Any

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import Sink, SinkContext, SinkWriter

__all__ = ["SinkJsonlParts"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^part-(\d{4})-(\d{8})\.jsonl(\.pending)?$")


class _PartsWriter(SinkWriter):
    def __init__(self, directory: str, ctx: SinkContext) -> None:
        self._dir = directory
        self._ctx = ctx
        self._me = ctx.worker_index
        self._seq = 0
        self._uncommitted: list[int] = []  # closed files not yet made visible
        self._staged: dict[int, list[int]] = {}  # checkpoint id -> files it will make visible
        self._fh: IO[bytes] | None = None
        os.makedirs(directory, exist_ok=True)
        entries: dict[int, Mapping[str, Any]] = {}
        for key, e in (ctx.resume or {}).items():
            if key.startswith("w") and isinstance(e, Mapping):
                entries[int(key[1:])] = e
        n = ctx.worker_count
        handled = [i for i in entries if i == self._me or (i >= n and self._me == 0)]
        if self._me not in entries:
            handled.append(self._me)  # no checkpointed state: nothing of ours is committed
        for i in handled:
            e = entries.get(i, {"next_seq": 0, "uncommitted": []})
            self._recover(i, int(e["next_seq"]), {int(s) for s in e["uncommitted"]})
        own = entries.get(self._me)
        if own is not None:
            self._seq = int(own["next_seq"])

    def _path(self, worker: int, seq: int, pending: bool) -> str:
        name = f"part-{worker:04d}-{seq:08d}.jsonl" + (".pending" if pending else "")
        return os.path.join(self._dir, name)

    def _recover(self, worker: int, next_seq: int, staged: set[int]) -> None:
        for name in os.listdir(self._dir):
            m = _NAME.match(name)
            if not m or int(m.group(1)) != worker:
                continue
            seq, pending = int(m.group(2)), m.group(3) is not None
            path = os.path.join(self._dir, name)
            if pending and seq in staged:
                os.replace(path, self._path(worker, seq, False))  # roll the commit forward
            elif pending or seq >= next_seq:
                os.remove(path)  # written after the checkpoint: it will be written again
        _fsync_dir(self._dir)

    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        try:
            if self._fh is None:
                self._fh = open(self._path(self._me, self._seq, True), "wb")  # noqa: SIM115
            batch.write_ndjson(self._fh)
        except OSError as exc:
            msg = f"step {self._ctx.step_id!r}: writing to {self._dir!r} failed: {exc}"
            raise ConnectorError(msg) from exc

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def _seal(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            self._uncommitted.append(self._seq)
            self._seq += 1

    def snapshot(self) -> dict[str, Any]:
        return {f"w{self._me:04d}": {"next_seq": self._seq, "uncommitted": list(self._uncommitted)}}

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        self._seal()
        self._staged[checkpoint_id] = list(self._uncommitted)
        return self.snapshot()

    def commit(self, checkpoint_id: int) -> None:
        done = [c for c in self._staged if c <= checkpoint_id]
        seqs = sorted({s for c in done for s in self._staged.pop(c)})
        for seq in seqs:
            src = self._path(self._me, seq, True)
            if os.path.exists(src):
                os.replace(src, self._path(self._me, seq, False))
        if seqs:
            _fsync_dir(self._dir)
        self._uncommitted = [s for s in self._uncommitted if s not in seqs]

    def close(self) -> None:
        self._seal()

    def visible(self) -> list[str]:
        """Committed part files of this worker, in order."""
        return sorted(
            os.path.join(self._dir, n)
            for n in os.listdir(self._dir)
            if (m := _NAME.match(n)) and int(m.group(1)) == self._me and not m.group(3)
        )


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class SinkJsonlParts(Sink):
    """Settings of :func:`tideflow.connectors.files.sink_jsonl_parts`."""

    path: str

    def validate(self, step_id: str) -> None:
        if os.path.isfile(self.path):
            msg = f"step {step_id!r}: {self.path!r} is a file; sink_jsonl_parts writes a directory"
            raise ConfigError(msg)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            msg = f"step {step_id!r}: the directory {parent!r} does not exist; create it first"
            raise ConfigError(msg)

    def build(self, ctx: SinkContext) -> SinkWriter:
        self.validate(ctx.step_id)
        return _PartsWriter(self.path, ctx)
