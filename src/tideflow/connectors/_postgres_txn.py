"""Exactly-once and at-most-once PostgreSQL output: a checkpoint's rows in one transaction.

With checkpoints, the writer keeps the rows it receives in memory until the checkpoint that
covers them completes; ``commit`` then writes them in one transaction. With
``delivery="exactly-once"`` that transaction also moves the writer's *progress row* (in a small
table the sink owns: job, sink, worker, token -> last committed checkpoint id), and the rows of
the open interval are part of the checkpoint, so a restart from checkpoint K whose commit was
cut short writes K's rows again in the same kind of transaction. The progress row decides,
inside that transaction, whether K's rows are already there: they are never written twice.
With ``delivery="at-most-once"`` the checkpoint holds no rows and there is no progress table:
a crash between a checkpoint and its commit loses that interval's rows, and nothing is ever
written twice.

Why not PostgreSQL's two-phase commit (``PREPARE TRANSACTION``)? It needs
``max_prepared_transactions > 0`` on the server (0 by default, and on most managed servers), a
prepared transaction left by a dead job holds its locks and the server's oldest transaction id
until someone resolves it, and the rows would cross the network twice anyway on a roll-forward.
Keeping the interval's rows in the checkpoint works on any server; the cost is checkpoint size.

Without checkpoints (a bounded job), every row goes into one transaction committed when the
input ends: a crash leaves nothing, and running the job again writes everything once.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import polars as pl

from tideflow._errors import ConnectorError, StateError
from tideflow.connectors._base import CheckpointHold, SinkContext, worker_entries
from tideflow.connectors._postgres_sink import PostgresSink, PostgresWriter, qualified

__all__ = ["SNAPSHOT_VERSION", "TransactionalWriter", "progress_ddl"]

logger = logging.getLogger(__name__)

#: Version of the snapshot this writer stores in checkpoints.
SNAPSHOT_VERSION = 1


def progress_ddl(table: str) -> str:
    """The statement that creates the progress table of exactly-once PostgreSQL sinks.

    One row per sink, worker and start of the writer (``token``): the newest checkpoint whose
    rows it committed.

    Examples
    --------
    >>> from tideflow.connectors.postgres import progress_ddl
    >>> print(progress_ddl("tideflow_sink_progress").splitlines()[0])
    CREATE TABLE IF NOT EXISTS "tideflow_sink_progress" (
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(table)} (\n"
        "    job text NOT NULL,\n"
        "    sink text NOT NULL,\n"
        "    worker integer NOT NULL,\n"
        "    token text NOT NULL,\n"
        "    output text NOT NULL,\n"
        "    checkpoint_id bigint NOT NULL,\n"
        "    row_count bigint NOT NULL,\n"
        "    committed_at timestamptz NOT NULL DEFAULT now(),\n"
        "    PRIMARY KEY (sink, worker, token)\n"
        ")"
    )


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")


def _ipc(frames: list[pl.DataFrame]) -> bytes:
    buf = io.BytesIO()
    _concat(frames).write_ipc(buf, compression="lz4")
    return buf.getvalue()


class TransactionalWriter(PostgresWriter):
    """Rows become visible when their checkpoint completes, in one transaction.

    States: *idle* (no rows waiting), *collecting* (rows since the last commit, in memory),
    *staged* (checkpoint K's cut is taken: its rows are in K's snapshot; rows that arrive
    before K commits wait for the next checkpoint). ``commit(c)`` writes the staged rows only
    if they are staged under a checkpoint ``<= c``.
    """

    def __init__(self, s: PostgresSink, ctx: SinkContext) -> None:
        super().__init__(s, ctx)
        self._me = ctx.worker_index
        self._job = ctx.job
        self._exact = s.delivery == "exactly-once"
        self._keep = ctx.checkpointing
        # New at every start: within one start checkpoint ids only grow, so "the progress row of
        # this token is at K or later" proves K's rows are in. Restores of an older checkpoint
        # or a savepoint (whose ids may repeat ones used after it) never mix with it.
        self._token = uuid.uuid4().hex
        self._progress_name = s.progress()
        self._progress = qualified(self._progress_name)
        self._hold = CheckpointHold()  # with checkpoints: rows until their checkpoint commits
        self._open = False  # without checkpoints: the one transaction holds rows
        self._closed = False
        self.delivered = 0  # rows this writer committed
        if not self._keep:
            logger.warning(
                "step %r: delivery=%r without checkpoints: the rows are written in one "
                "transaction committed when the bounded input ends; pass checkpoint_dir= to "
                "commit with every checkpoint",
                self._step,
                s.delivery,
            )
        entries = worker_entries(ctx)
        n = ctx.worker_count
        # worker i restores entry i; rescaled down, worker 0 adopts those of workers now gone
        mine = [i for i in sorted(entries) if i == self._me or (i >= n and self._me == 0)]
        try:
            if self._exact and (self._keep or entries):
                self._ensure_progress_table()
            for i in mine:
                self._recover(i, entries[i])
        except BaseException:
            self._conn.close()
            raise

    # -- the progress table and the one transaction -----------------------------------------
    def _ensure_progress_table(self) -> None:
        try:
            with self._conn.transaction():
                self._conn.execute(progress_ddl(self._progress_name))
        except self._pg.Error as exc:
            # Another worker may have created it at the same moment (IF NOT EXISTS is not
            # atomic); anything else (no CREATE privilege, ...) is for the user to fix.
            with self._conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (self._progress,))
                row = cur.fetchone()
            self._conn.rollback()
            if row is None or row[0] is None:
                msg = (
                    f"step {self._step!r}: cannot create the progress table "
                    f"{self._progress_name!r} of delivery='exactly-once' ({exc}); create it "
                    f"with\n{progress_ddl(self._progress_name)}\nor pass progress_table= naming "
                    "a table this user may write"
                )
                raise ConnectorError(msg) from exc

    def _deliver(self, worker: int, token: str, checkpoint: int, frame: pl.DataFrame) -> int | None:
        """Write ``frame`` as checkpoint ``checkpoint``'s rows of (``worker``, ``token``), in
        one transaction with the progress row. Returns None when written, or the checkpoint the
        progress row already holds when it is at ``checkpoint`` or later (nothing written)."""
        if self._conn.closed:
            self._conn = self._connect()
        frame = self._checked(frame)
        done: int | None = None
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                if self._exact:
                    # The upsert locks the progress row first: a concurrent writer of the same
                    # row (a leftover process) waits, then sees the newer checkpoint.
                    cur.execute(
                        f"INSERT INTO {self._progress} AS p (job, sink, worker, token, output, "
                        "checkpoint_id, row_count) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (sink, worker, token) DO UPDATE SET "
                        "checkpoint_id = EXCLUDED.checkpoint_id, "
                        "row_count = p.row_count + EXCLUDED.row_count, committed_at = now() "
                        "WHERE p.checkpoint_id < EXCLUDED.checkpoint_id RETURNING 1",
                        (
                            self._job,
                            self._step,
                            worker,
                            token,
                            self._s.table,
                            checkpoint,
                            frame.height,
                        ),
                    )
                    if cur.fetchone() is None:
                        cur.execute(
                            f"SELECT checkpoint_id FROM {self._progress} "
                            "WHERE sink = %s AND worker = %s AND token = %s",
                            (self._step, worker, token),
                        )
                        row = cur.fetchone()
                        done = int(row[0]) if row is not None else checkpoint
                        raise self._pg.Rollback()
                self._copy(cur, frame)
        except self._pg.Error as exc:
            raise self._error("writing to", exc) from exc
        return done

    # -- recovery --------------------------------------------------------------------------
    def _recover(self, worker: int, e: Mapping[str, Any]) -> None:
        if e.get("version") != SNAPSHOT_VERSION:
            msg = (
                f"step {self._step!r}: PostgreSQL sink state version {e.get('version')!r} is "
                f"not supported (this tideflow writes version {SNAPSHOT_VERSION})"
            )
            raise StateError(msg)
        rows, cid = int(e["rows"]), int(e["checkpoint"])
        if not rows or not self._exact or e.get("delivery") != "exactly-once":
            return  # nothing staged, or at-most-once: a cut-short commit is not redone
        frame = pl.read_ipc(io.BytesIO(e["records"]))
        done = self._deliver(worker, str(e["token"]), cid, frame)
        if done is None:
            logger.info(
                "step %r: rolled forward checkpoint %d: %d row(s) written to %s (worker %d)",
                self._step,
                cid,
                frame.height,
                self._s.table,
                worker,
            )
            return
        if done > cid:
            logger.warning(
                "step %r: rows of checkpoint %d are already in %s, but the job resumes from "
                "checkpoint %d (a savepoint, or the newer checkpoint was damaged): rows written "
                "between the two will be written again",
                self._step,
                done,
                self._s.table,
                cid,
            )
        logger.info(
            "step %r: rows of checkpoint %d (worker %d) had been committed; nothing to redo",
            self._step,
            cid,
            worker,
        )

    # -- writing ---------------------------------------------------------------------------
    def write(self, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        batch = self._checked(batch)
        if self._keep:
            self._hold.hold(batch)
            return
        try:  # no checkpoints: into the one transaction committed at the end
            with self._conn.cursor() as cur:
                self._copy(cur, batch)
        except self._pg.Error as exc:
            self._conn.rollback()
            self._open = False
            raise self._error("writing to", exc) from exc
        self._open = True
        self._rows += batch.height

    def flush(self) -> None:
        """Nothing to do: rows become visible when their checkpoint completes."""

    def snapshot(self) -> dict[str, Any]:
        hold = self._hold
        rows = hold.rows()
        return {
            f"w{self._me:04d}": {
                "version": SNAPSHOT_VERSION,
                "delivery": self._s.delivery,
                "token": self._token,
                "checkpoint": hold.staged if hold.staged is not None else -1,
                "rows": rows,
                "records": _ipc(hold.pending) if rows and self._exact else b"",
            }
        }

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        if not self._keep:
            return {}
        self._hold.cut(checkpoint_id)
        return self.snapshot()

    def commit(self, checkpoint_id: int) -> None:
        if not self._keep:
            if self._open:
                try:
                    self._conn.commit()
                except self._pg.Error as exc:
                    raise self._error("committing to", exc) from exc
                self._open = False
                self.delivered += self._rows
            if self._closed:
                self._conn.close()
            return
        staged = self._hold.staged
        frames = self._hold.take(checkpoint_id)
        if staged is None or frames is None:
            return  # nothing staged, or staged under a checkpoint not yet complete
        frame = _concat(frames)
        done = self._deliver(self._me, self._token, staged, frame)
        if done is not None:
            msg = (
                f"step {self._step!r}: checkpoint {done} of this writer is already committed to "
                f"{self._s.table!r} by another process (a restart of this job?); this one stops"
            )
            raise ConnectorError(msg)
        self.delivered += frame.height
        self._rows += frame.height
        if self._closed:
            self._conn.close()  # a commit after close reconnected

    def close(self) -> None:
        """End of input: waiting rows stay until their checkpoint commits (with checkpoints
        in memory, and the commit connects again; without, in the open transaction)."""
        if self._closed:
            return
        self._closed = True
        if not self._open:
            self._conn.close()
        logger.info(
            "step %r: %d row(s) committed to %s (delivery=%r)",
            self._step,
            self.delivered,
            self._s.table,
            self._s.delivery,
        )
