"""Runtime operators: the objects that hold state and process micro-batches on one worker.

Each logical node becomes one operator per worker. Operators receive batches with
``on_batch(input_index, batch)``, the end of an input with ``on_end()``, and emit through the
:class:`OpContext` they were built with. Stateful operators implement ``snapshot()`` returning
plain data (Arrow tables, numbers, strings) with a version, never pickled objects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from tideflow._errors import DataError, JobError, StateError
from tideflow.api._dataflow import AggOp, StatefulMapOp, TopNOp, TransformOp
from tideflow.api._graph import FrameOp, Node, RecordOp, fn_location
from tideflow.api._smallbatch import SMALL_BATCH_ROWS
from tideflow.connectors._base import DEAD_LETTER_SCHEMA, SinkContext, dead_letters
from tideflow.runtime._frames import concat, read_parts
from tideflow.runtime._keyed import AggState, KeyedTable
from tideflow.runtime._keyindex import (
    ChunkLog,
    CodeKind,
    Codes,
    KeyedRows,
    LogRows,
    Positions,
    codes_exact,
    key_codes,
    stable_lexsort,
)
from tideflow.runtime._toptable import MOST_N, TopTable, order_values
from tideflow.state._resume import FINISHED

if TYPE_CHECKING:
    from tideflow.connectors._base import SinkWriter

__all__ = ["OpContext", "Operator", "build_operator"]

log = logging.getLogger("tideflow.runtime")


class OpContext(Protocol):
    """What an operator can do to the world around it."""

    worker_index: int
    worker_count: int

    def emit(self, batch: pl.DataFrame, port: str = "out") -> None:
        """Send a batch downstream on ``port``."""

    def dead(self, batch: pl.DataFrame) -> None:
        """Send dead letters (rows of ``DEAD_LETTER_SCHEMA``)."""

    def publish(self, topic: str, rows: pl.DataFrame) -> None:
        """Send rows to the run's observers (in the driver process)."""

    def watermark(self, wm: int, idle: bool = False) -> None:
        """Announce this step's output watermark (int64 µs since the epoch) or idleness."""

    def now(self) -> float:
        """Processing time, seconds since the epoch (the run's clock)."""
        ...

    @property
    def current_watermark(self) -> int:
        """The watermark this step last announced."""
        ...


class Operator:
    """Base operator: passes batches through."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        self.node = node
        self.ctx = ctx

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        """Process one batch from input ``index``."""
        self.ctx.emit(batch)

    def on_end(self) -> None:
        """All inputs ended (bounded input exhausted): emit final results."""

    def on_watermark(self, wm: int, idle: bool) -> None:
        """The combined watermark of the inputs advanced (or all inputs went idle)."""
        self.ctx.watermark(wm, idle)

    def on_tick(self) -> None:
        """Called about every 20 ms when overridden (timers, idleness, processing time)."""

    def flush(self) -> None:
        """Periodic hook (sinks make data visible)."""

    def close(self) -> None:
        """Release resources (also on abort)."""

    def snapshot(self) -> dict[str, Any]:
        """Return the operator state as plain data (empty for stateless operators)."""
        return {}

    def restore(self, snap: dict[str, Any]) -> None:
        """Load state written by :meth:`snapshot`."""

    def state_table(self) -> pl.DataFrame | None:
        """Keyed state as rows (key columns and values), for SQL; None when not queryable."""
        return None


class FinishedOperator(Operator):
    """Stands for a step restored from a checkpoint taken after the job finished.

    Every result of the step went out before that checkpoint (and the sinks committed it), so
    the checkpoint kept no state. The sources resume at their end: nothing reaches the step,
    which passes watermarks on and emits nothing at the end. Input that does arrive (a source
    that has more now) cannot be combined with the state that was not kept: an error.
    """

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        step = self.node.step_id
        msg = (
            f"step '{step}' is resumed from a checkpoint taken after the job finished (all "
            f"its results were written and no state was kept), and got {batch.height} more "
            "records; to process new input, run without that checkpoint directory (or with "
            "an empty one)"
        )
        raise StateError(msg)

    def snapshot(self) -> dict[str, Any]:
        return dict(FINISHED)


def _raw(rec: dict[str, Any]) -> str:
    return json.dumps(rec, default=str, ensure_ascii=False)


class FrameOperator(Operator):
    """Vectorized step; on failure, isolates the failing rows into dead letters by bisection."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: FrameOp = node.spec
        self.small = self.op.small

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        out = None
        if self.small is not None and 0 < batch.height <= SMALL_BATCH_ROWS:
            out = self._small(batch)  # no planner; None: the batch needs Polars
        try:
            if out is None:
                out = self.op.apply(batch)
        except pl.exceptions.PolarsError as exc:
            if self.op.user_fn or batch.height == 0:
                msg = f"step '{self.node.step_id}' ({self.op.description}) failed: {exc}"
                raise JobError(msg, step_id=self.node.step_id) from exc
            out = self._isolate(batch)
        if not isinstance(out, pl.DataFrame):
            msg = (
                f"step '{self.node.step_id}' ({self.op.description}) must return a "
                f"polars.DataFrame, returned {type(out).__name__}"
            )
            raise JobError(msg, step_id=self.node.step_id)
        self.ctx.emit(out)

    def _small(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """The small-batch path; should it ever fail, Polars runs the step from then on."""
        assert self.small is not None
        try:
            out: pl.DataFrame | None = self.small(batch)
        except Exception:
            log.warning(
                "step '%s' (%s): the small-batch path failed; Polars evaluates the step "
                "from now on",
                self.node.step_id,
                self.op.description,
                exc_info=True,
            )
            self.small = None
            return None
        return out

    def _isolate(self, batch: pl.DataFrame) -> pl.DataFrame:
        good: list[pl.DataFrame] = []
        bad_rows: list[str] = []
        reasons: list[str] = []
        stack = [batch]
        while stack:
            part = stack.pop()
            try:
                good.append(self.op.apply(part))
            except pl.exceptions.PolarsError as exc:
                if part.height <= 1:
                    bad_rows.extend(_raw(r) for r in part.to_dicts())
                    reasons.append(str(exc).strip().splitlines()[0])
                else:
                    half = part.height // 2
                    stack.append(part.slice(half))
                    stack.append(part.slice(0, half))
        if bad_rows:
            self.ctx.dead(
                dead_letters(
                    self.node.step_id, [self.node.step_id] * len(bad_rows), reasons, bad_rows
                )
            )
        good = [g for g in good if g.height]
        if not good:
            return self.op.apply(batch.clear())
        return pl.concat(good, how="vertical_relaxed")


class RecordOperator(Operator):
    """Per-record Python step (map, flat_map, filter with a function)."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: RecordOp = node.spec
        self.where = fn_location(self.op.fn)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        fn, mode = self.op.fn, self.op.mode
        out: list[dict[str, Any]] = []
        keep: list[bool] = []
        bad: list[str] = []
        reasons: list[str] = []
        for rec in batch.iter_rows(named=True):
            try:
                res = fn(rec)
                if mode == "filter":
                    keep.append(bool(res))
                elif mode == "map":
                    if res is not None:
                        if not isinstance(res, dict):
                            msg = (
                                f"map function must return a dict or None, got {type(res).__name__}"
                            )
                            raise DataError(msg)
                        out.append(res)
                else:
                    out.extend(res)
            except Exception as exc:
                if self.op.on_error == "raise":
                    msg = f"step '{self.node.step_id}': {self.where} raised {exc!r} on {_raw(rec)}"
                    raise JobError(msg, step_id=self.node.step_id) from exc
                if mode == "filter":
                    keep.append(False)
                bad.append(_raw(rec))
                reasons.append(f"{self.where} raised {type(exc).__name__}: {exc}")
        if bad:
            self.ctx.dead(
                dead_letters(self.node.step_id, [self.node.step_id] * len(bad), reasons, bad)
            )
        if mode == "filter":
            self.ctx.emit(batch.filter(pl.Series(keep, dtype=pl.Boolean)))
        elif out:
            self.ctx.emit(_frame(out, self.op.schema, self.node.step_id))


def _frame(
    rows: list[dict[str, Any]], schema: dict[str, pl.DataType] | None, step: str
) -> pl.DataFrame:
    try:
        if schema is not None:
            return pl.DataFrame(rows, schema=schema)
        return pl.from_dicts(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        msg = f"step '{step}': cannot build a batch from the function's records: {exc}"
        raise JobError(msg, step_id=step) from exc


class SplitOperator(Operator):
    """Routes rows to named ports by predicate; unmatched rows go to ``rest``."""

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        preds: dict[str, pl.Expr] = self.node.spec
        masks = batch.select([pl.coalesce(p, pl.lit(False)).alias(n) for n, p in preds.items()])
        any_match = pl.Series([False] * batch.height, dtype=pl.Boolean)
        for name in preds:
            m = masks.get_column(name)
            any_match = any_match | m
            self.ctx.emit(batch.filter(m), name)
        self.ctx.emit(batch.filter(~any_match), "rest")


class ValidateOperator(Operator):
    """Rows breaking a rule become dead letters naming the broken rules."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.rules: dict[str, pl.Expr] = node.spec
        self.checks = [
            pl.coalesce(p, pl.lit(False)).alias(f"__r{i}")
            for i, p in enumerate(self.rules.values())
        ]

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        masks = batch.select(self.checks)
        ok = masks.select(pl.all_horizontal(pl.all())).to_series()
        if ok.all():
            self.ctx.emit(batch)
            return
        self.ctx.emit(batch.filter(ok))
        bad = batch.filter(~ok)
        bad_masks = masks.filter(~ok)
        reasons = bad_masks.select(
            pl.concat_list(
                [pl.when(~pl.col(f"__r{i}")).then(pl.lit(r)) for i, r in enumerate(self.rules)]
            )
            .list.drop_nulls()
            .list.join("; ")
        ).to_series()
        raws = bad.select(pl.struct(pl.all()).struct.json_encode()).to_series()
        step = self.node.step_id
        self.ctx.dead(dead_letters(step, [step] * bad.height, reasons.to_list(), raws.to_list()))


class AggOperator(Operator):
    """Keyed incremental aggregation; emits updates per batch or finals at the end."""

    def __init__(self, node: Node, ctx: OpContext, emit: str) -> None:
        super().__init__(node, ctx)
        op: AggOp = node.spec
        self.updates = emit == "updates"
        # Emitted only at the end: n_unique's pairs are deduplicated many batches at a time.
        self.state = AggState(op.keys, op.aggs, deferred=not self.updates)
        self.combined = op.combined

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        keys, ids = self.state.merge(batch) if self.combined else self.state.update(batch)
        if self.updates:
            self.ctx.emit(self.state.values(keys, ids))

    def on_end(self) -> None:
        if not self.updates:
            out = self.state.all_values()
            if out.height:
                self.ctx.emit(out)

    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot()

    def state_table(self) -> pl.DataFrame:
        return self.state.all_values()

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("backend") is not None:  # checkpointed with the on-disk backend
            from tideflow.runtime._diskagg import disk_snapshot_table

            snap = disk_snapshot_table(snap, list(self.state.keys))
        self.state.restore(snap)


class StatefulMapOperator(Operator):
    """Per-key Python state machine (the per-record keyed path)."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: StatefulMapOp = node.spec
        self.states: dict[Any, Any] = {}
        self.last: dict[Any, list[dict[str, Any]]] = {}
        self.where = fn_location(self.op.fn)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        keys = self.op.keys
        single = len(keys) == 1
        out: list[dict[str, Any]] = []
        bad: list[str] = []
        reasons: list[str] = []
        states, fn, init = self.states, self.op.fn, self.op.init
        final = self.op.emit == "final"
        for rec in batch.iter_rows(named=True):
            key = rec[keys[0]] if single else tuple(rec[k] for k in keys)
            state = states.get(key)
            if state is None:
                state = init()
            try:
                new, res = fn(state, rec)
            except Exception as exc:
                if self.op.on_error == "raise":
                    msg = f"step '{self.node.step_id}': {self.where} raised {exc!r} on {_raw(rec)}"
                    raise JobError(msg, step_id=self.node.step_id) from exc
                bad.append(_raw(rec))
                reasons.append(f"{self.where} raised {type(exc).__name__}: {exc}")
                continue
            if new is None:
                states.pop(key, None)
            else:
                states[key] = new
            if res is None:
                continue
            recs = [res] if isinstance(res, dict) else list(res)
            if final:
                self.last[key] = recs
            else:
                out.extend(recs)
        if bad:
            self.ctx.dead(
                dead_letters(self.node.step_id, [self.node.step_id] * len(bad), reasons, bad)
            )
        if out:
            self.ctx.emit(_frame(out, self.op.schema, self.node.step_id))

    def on_end(self) -> None:
        if self.op.emit == "final" and self.last:
            rows = [r for recs in self.last.values() for r in recs]
            self.ctx.emit(_frame(rows, self.op.schema, self.node.step_id))

    def snapshot(self) -> dict[str, Any]:
        try:
            items = [[_jsonable_key(k), v] for k, v in self.states.items()]
            last = [[_jsonable_key(k), v] for k, v in self.last.items()]
            return {
                "version": 1,
                "states": json.dumps(items),
                "last": json.dumps(last, default=str),
            }
        except TypeError as exc:
            msg = (
                f"step '{self.node.step_id}': the state returned by {self.where} is not plain "
                f"data (numbers, strings, lists, dicts): {exc}"
            )
            raise StateError(msg) from exc

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("version") != 1:
            msg = f"step '{self.node.step_id}': state version {snap.get('version')!r} unsupported"
            raise StateError(msg)
        single = len(self.op.keys) == 1
        self.states = {(k if single else tuple(k)): v for k, v in json.loads(snap["states"])}
        self.last = {(k if single else tuple(k)): v for k, v in json.loads(snap["last"])}


def _jsonable_key(key: Any) -> Any:
    return list(key) if isinstance(key, tuple) else key


class TransformOperator(Operator):
    """Vectorized keyed state: the user function sees the batch and its keys' state rows."""

    def __init__(self, node: Node, ctx: OpContext) -> None:
        super().__init__(node, ctx)
        self.op: TransformOp = node.spec
        self.table = KeyedTable(self.op.keys, self.op.state)
        self.where = fn_location(self.op.fn)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        keys = list(self.op.keys)
        state = self.table.get(batch.select(keys).unique(maintain_order=True))
        result = self.op.fn(batch, state)
        if not (isinstance(result, tuple) and len(result) == 2):
            msg = f"step '{self.node.step_id}': {self.where} must return (output, new_state)"
            raise JobError(msg, step_id=self.node.step_id)
        out, new_state = result
        want = [*keys, *self.op.state]
        missing = [c for c in want if c not in new_state.columns]
        if missing:
            msg = (
                f"step '{self.node.step_id}': the new state from {self.where} lacks columns "
                f"{missing}; it needs {want}"
            )
            raise JobError(msg, step_id=self.node.step_id)
        self.table.put(new_state.select(want))
        if out.height:
            self.ctx.emit(out)

    def snapshot(self) -> dict[str, Any]:
        return self.table.snapshot()

    def restore(self, snap: dict[str, Any]) -> None:
        self.table.restore(snap)


class TopNOperator(Operator):
    """Keyed top-N rows, vectorized, with per-batch work proportional to the batch.

    The state is the kept rows (at most ``n`` per key) in a key-indexed row store
    (:class:`~tideflow.runtime._keyindex.KeyedRows`, null keys being key values like any
    other). A batch is merged in three steps: its own top rows per key (a sort of the batch's
    key and order columns), a probe of the index for the kept rows of those keys only, and
    the top rows of those two sets together; kept rows that lost their place are removed (a
    tombstone), batch rows that won one are appended. Nothing is sorted or copied in
    proportion to the whole state, except the store's geometric merges (a row is copied
    O(log n) times in its life) and the compaction once half of the rows are removed.

    Ties: rows that compare equal rank in arrival order. Kept rows are appended in arrival
    order per key (a row's position in the store), and a merge puts a key's kept rows, by
    position, before the batch's rows, then sorts stably.

    With ``emit="updates"`` each batch emits the new top rows of every key it holds; with
    ``emit="final"`` batches are merged once they hold :attr:`FOLD_ROWS` rows (nothing is
    emitted before the end). With ``emit="final"`` and a rank column, each kept row's rank
    is remembered by its position in the store (set by the merge that last touched its key,
    which ranks all of that key's kept rows), so the end emits them without sorting the
    whole state again.

    With ``emit="final"``, ``n <= 32`` and order columns of integers, times or Booleans
    without nulls, the kept rows are a :class:`~tideflow.runtime._toptable.TopTable`
    instead: each key's order values and row references in NumPy slots, ranked by NumPy
    alone, the rows themselves (every column) appended once per merge and never moved
    again until half of them are removed. The first batch that does not fit (a null or a
    float in an order column, another order type) moves the rows to the store above.

    Snapshots are incremental (:class:`~tideflow.state.SnapshotChunk`): the top rows of
    ``a + b`` are the top rows of ``top(a) + top(b)`` (ties keep their arrival order), so
    the state is saved as a list of chunks, one per checkpoint: the kept rows appended since
    the previous one (a superset of what is new in the top rows, in arrival order). A
    checkpoint writes one chunk of what is new and refers to the earlier ones; once the
    chunks hold more than twice the kept rows (keys updated again and again) or number more
    than 32, the kept rows replace them as one chunk (a compaction, amortized; see
    :class:`~tideflow.runtime._keyindex.ChunkLog`). A restore folds the chunks.
    """

    #: With emit="final", merge appended batches into the state once they hold this many rows.
    FOLD_ROWS = 262_144

    def __init__(self, node: Node, ctx: OpContext, emit: str) -> None:
        super().__init__(node, ctx)
        self.op: TopNOp = node.spec
        self.keys = list(self.op.keys)
        self.narrow = [*self.keys, *(c for c in self.op.by if c not in self.keys)]
        self.final = emit == "final"
        self.rows = self._store()
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = 0
        # What the checkpoints hold: chunks whose rows, in order, have the same top rows as
        # everything before the last snapshot; the store's rows at positions >= ``mark``
        # arrived since (a store compaction moves ``mark`` with the rows).
        self.log = ChunkLog(slack=self.FOLD_ROWS)
        # emit="final" with a rank: the 0-based rank of the kept row at each store position
        # (the first ``rows.size`` entries of a buffer grown by doubling).
        self.track_ranks = self.final and self.op.rank is not None
        self.rank_of: npt.NDArray[Any] = self._no_ranks()
        # emit="final" on integer or time order columns: the kept rows ranked in NumPy slots,
        # their wide columns written once (see :class:`~tideflow.runtime._toptable.TopTable`);
        # None: the key-indexed store above (for good, once a batch does not fit the table).
        self.table: TopTable | None = None
        self.table_ok = self.final and self.op.n <= MOST_N
        self.order_schema: dict[str, pl.DataType] | None = None

    def _no_ranks(self) -> npt.NDArray[Any]:
        return np.zeros(0, np.min_scalar_type(max(self.op.n - 1, 0)))

    def _set_ranks(self, positions: Positions, ranks: Positions) -> None:
        """Remember the ranks of the kept rows at store ``positions`` (see the class notes)."""
        if not self.track_ranks:
            return
        if self.rows.size > self.rank_of.size:
            grown = np.zeros(max(self.rows.size, 2 * self.rank_of.size), self.rank_of.dtype)
            grown[: self.rank_of.size] = self.rank_of
            self.rank_of = grown
        self.rank_of[positions] = ranks

    def _append(
        self,
        rows: pl.DataFrame,
        ranks: Positions,
        codes: tuple[Codes, npt.NDArray[np.bool_], CodeKind] | None = None,
    ) -> None:
        """Append kept rows (key by key, in rank order) with their ranks."""
        start = self.rows.size
        self.rows.append(rows, codes=codes)
        self._set_ranks(np.arange(start, self.rows.size, dtype=np.int64), ranks)

    def _store(self) -> KeyedRows:
        # With emit="final" the probes gather only the key and order columns: only those are
        # copied together when segments merge; the wide ones are written once per row.
        return KeyedRows(
            self.keys, nulls_equal=True, contiguous=self.narrow if self.final else None
        )

    def _best(
        self, narrow: pl.DataFrame, group: Codes | None = None
    ) -> tuple[Positions, Positions]:
        """Row numbers of each key's first ``n`` rows of ``narrow``, and their 0-based ranks.

        The rows come key by key, each key's in rank order (ties in the order of ``narrow``).
        With ``n > 1`` one stable sort by key and order columns gives both: a key's rank is
        its distance from the first row of its run. With ``n == 1``, a sort by the order
        columns and the first row of each key. ``group``: one integer per row standing for
        its key exactly (equal keys, equal integers), when the caller has it; the key is then
        that integer, and order columns of integers (or times) without nulls are sorted by
        NumPy, no Polars row encoding of several columns.
        """
        by, desc = list(self.op.by), list(self.op.descending)
        sort_keys = _sort_keys(narrow, by, desc)
        if self.op.n == 1:
            if sort_keys is not None:
                order = pl.Series(stable_lexsort(sort_keys))
            else:
                order = narrow.select(
                    pl.arg_sort_by(by, descending=desc, nulls_last=True, maintain_order=True)
                ).to_series()
            if group is not None:
                first = pl.Series(group[order.to_numpy()]).is_first_distinct()
            else:
                keys = narrow.select(pl.col(self.keys).gather(order))
                first = keys.select(
                    pl.struct(self.keys).is_first_distinct()
                    if len(self.keys) > 1
                    else pl.col(self.keys[0]).is_first_distinct()
                ).to_series()
            rows = order.filter(first).to_numpy().astype(np.int64, copy=False)
            return rows, np.zeros(rows.size, np.int64)
        if group is not None and sort_keys is not None:
            at_order = stable_lexsort([group, *sort_keys])
            return self._ranks(at_order, _run_starts(group[at_order]))
        order = narrow.select(
            pl.arg_sort_by(
                [*self.keys, *by],
                descending=[False] * len(self.keys) + desc,
                nulls_last=True,
                maintain_order=True,
            )
        ).to_series()
        keys = narrow.select(pl.col(self.keys).gather(order))
        one = keys.to_series() if len(self.keys) == 1 else None
        if one is not None and one.dtype.is_numeric() and one.null_count() == 0:
            starts = _run_starts(one.to_numpy())
        else:
            starts = (
                keys.select(
                    pl.any_horizontal(pl.col(k).ne_missing(pl.col(k).shift(1)) for k in self.keys)
                    .fill_null(True)
                    .alias("s")
                )
                .to_series()
                .to_numpy()
            )
        return self._ranks(order.to_numpy().astype(np.int64, copy=False), starts)

    def _group(self, narrow: pl.DataFrame) -> Codes | None:
        """The rows' key codes when they stand for the keys exactly (see :meth:`_best`)."""
        codes, _, kind = key_codes(narrow, self.keys, nulls_equal=True)
        return codes if codes_exact(codes, kind, nulls_equal=True) else None

    def _ranks(
        self, order: Positions, starts: npt.NDArray[np.bool_]
    ) -> tuple[Positions, Positions]:
        """The rows of ``order`` (sorted key by key) within the top ``n``, and their ranks."""
        at = np.arange(starts.size, dtype=np.int64)
        ranks = at - np.maximum.accumulate(np.where(starts, at, 0))
        keep = ranks < self.op.n
        return order[keep], ranks[keep]

    def _top(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Each key's first ``n`` rows of ``frame``, ranked (when the step has a rank)."""
        # Order only the key and order columns, then gather the kept rows: wide rows (long
        # strings) are copied once, not moved around by the sort.
        narrow = frame.select(self.narrow)
        rows, ranks = self._best(narrow, self._group(narrow))
        return self._ranked(frame[rows], ranks)

    def _ranked(self, rows: pl.DataFrame, ranks: Positions) -> pl.DataFrame:
        if self.op.rank is None:
            return rows
        return rows.with_columns(pl.Series(self.op.rank, ranks + 1, dtype=pl.Int64))

    def _merge(self, batch: pl.DataFrame, *, wide: bool) -> pl.DataFrame | None:
        """Merge ``batch`` into the kept rows; with ``wide``, return its keys' new top rows.

        The returned rows are ranked, key by key (every column, for emission).
        """
        narrow = batch.select(self.narrow)
        codes = key_codes(narrow, self.keys, nulls_equal=True)
        group = codes[0] if codes_exact(codes[0], codes[2], nulls_equal=True) else None
        if group is not None:  # one row per key
            one = _one_per_code(group)
            found_rows, found, pos = self.rows.probe(
                narrow, None if wide else self.narrow, codes=(group, one)
            )
        else:
            probe = narrow.select(self.keys).unique()
            found_rows, found, pos = self.rows.probe(probe, None if wide else self.narrow)
        if pos.size == 0:
            top, ranks = self._best(narrow, group)
            if not wide:
                top, ranks = _by_arrival(top, ranks, batch.height)
            rows = batch[top]
            self._append(rows, ranks, _codes_of(codes, top))
            return self._ranked(rows, ranks) if wide else None
        order = np.argsort(pos)  # arrival order: the earlier of a tie first (distinct)
        pos, found = pos[order], found[order]
        # One sort of the kept rows of the batch's keys and the batch (key and order columns).
        both = pl.concat([found.select(self.narrow), narrow], how="vertical_relaxed")
        both_group = None
        if group is not None:
            both_group = np.concatenate([group[found_rows[order]], group])
        kept, ranks = self._best(both, both_group)
        held = pos.size
        stays = kept < held
        self._set_ranks(pos[kept[stays]], ranks[stays])  # before positions may change
        lost = np.ones(held, np.bool_)
        lost[kept[stays]] = False
        self._remove(pos[lost])
        won, won_ranks = kept[~stays] - held, ranks[~stays]  # key by key in rank order
        if not wide:
            won, won_ranks = _by_arrival(won, won_ranks, batch.height)
        self._append(batch[won], won_ranks, _codes_of(codes, won))
        if not wide:
            return None
        rows = pl.concat([found, batch], how="vertical_relaxed")[kept]
        return self._ranked(rows, ranks)

    def _remove(self, positions: npt.NDArray[np.int64]) -> None:
        alive = self.log.remove(self.rows, positions)
        if alive is not None and self.track_ranks:  # compacted: the ranks move with the rows
            self.rank_of = self.rank_of[: alive.size][alive]

    def _flush(self) -> None:
        if not self.pending:
            return
        batch = (
            self.pending[0]
            if len(self.pending) == 1
            else pl.concat(self.pending, how="vertical_relaxed")
        )
        self.pending, self.pending_rows = [], 0
        if not self._merge_table(batch):
            self._merge(batch, wide=False)

    def _merge_table(self, batch: pl.DataFrame) -> bool:
        """Merge ``batch`` into the table; False when the step keeps its rows in the store."""
        if not self.table_ok:
            return False
        by = list(self.op.by)
        schema = {c: batch.schema[c] for c in by}
        values = order_values(batch, by, list(self.op.descending))
        if values is None or (self.order_schema is not None and schema != self.order_schema):
            self._leave_table()
            return False
        if self.table is None:
            self.table = TopTable(self.keys, self.op.n)
        self.order_schema = schema
        keys = batch.select(self.keys)
        codes, _, kind = key_codes(keys, self.keys, nulls_equal=True)
        group = codes if codes_exact(codes, kind, nulls_equal=True) else None
        lost = self.table.merge(batch, values, group)
        if lost is None:
            self._leave_table()
            return False
        alive = self.log.remove(self.table.rows, lost)
        if alive is not None:  # compacted: the slots follow the rows
            self.table.moved(alive)
        return True

    def _leave_table(self) -> None:
        """Move the kept rows from the table to the key-indexed store (for good)."""
        self.table_ok = False
        table, self.table = self.table, None
        if table is None:
            return
        rows, ranks = table.ranked()
        self.rows, self.rank_of = self._store(), self._no_ranks()
        if rows.height:
            self._append(rows, ranks)  # arrival order: ties keep ranking as they did
        # The checkpoints' chunks hold the same rows; the next one writes the store anew.
        self.log = ChunkLog(slack=self.FOLD_ROWS)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if self.final:
            self.pending.append(batch)
            self.pending_rows += batch.height
            if self.pending_rows >= self.FOLD_ROWS:
                self._flush()
            return
        top = self._merge(batch, wide=True)
        if top is not None and top.height:
            self.ctx.emit(top)

    @property
    def kept(self) -> LogRows:
        """The store of the kept rows (every column) the checkpoints' chunks are made of."""
        return self.rows if self.table is None else self.table.rows

    def _live(self) -> pl.DataFrame | None:
        self._flush()
        if self.table is not None:
            return self.table.rows.live() if self.table.rows.height else None
        if self.rows.height == 0:
            return None
        return self.rows.live()

    def on_end(self) -> None:
        if not self.final:
            return
        self._flush()
        if self.table is not None:
            for part, part_ranks in self.table.ranked_parts():
                self.ctx.emit(self._ranked(part, part_ranks))
            return
        if self.rows.height == 0:
            return
        # The live rows are the top rows: emitted as they are, a frame per segment of the
        # store (no copy of the whole state), with their remembered ranks when the step has
        # a rank column.
        ranks = None
        if self.track_ranks:
            ranks = self.rank_of[: self.rows.size]
            if self.rows.n_dead:
                ranks = ranks[~self.rows.dead]
            ranks = ranks.astype(np.int64)
        at = 0
        for part in self.rows.live_parts():
            if ranks is not None:
                part = self._ranked(part, ranks[at : at + part.height])
            at += part.height
            self.ctx.emit(part)

    def state_table(self) -> pl.DataFrame | None:
        """The kept rows of every key (with the rank column when the step has one)."""
        live = self._live()
        return None if live is None else self._top(live)

    def snapshot(self) -> dict[str, Any]:
        """The chunks of the state (version 2): the earlier ones, and one of what is new.

        What is new is the kept rows appended since the previous snapshot; once the chunks
        hold more than twice the kept rows or number more than 32, the kept rows become the
        only chunk.
        """
        self._flush()
        chunks = self.log.snapshot(self.kept)
        return {"version": 2, "kind": "top_n", "chunks": chunks}

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (replaces the kept rows); version 1 (one table) too."""
        version, kind = snap.get("version"), snap.get("kind")
        if kind != "top_n" or version not in (1, 2):
            msg = (
                f"step '{self.node.step_id}': top_n state {kind!r} version {version!r} cannot "
                "be restored (expected top_n version 1 or 2)"
            )
            raise StateError(msg)
        parts = [snap["table"]] if version == 1 else list(snap.get("chunks") or [])
        self.rows, self.rank_of = self._store(), self._no_ranks()
        self.table, self.order_schema = None, None
        self.table_ok = self.final and self.op.n <= MOST_N
        self.pending, self.pending_rows = [], 0
        frames, kept = read_parts(parts)
        if frames:
            rows = concat(frames)
            if not self._merge_table(rows):
                narrow = rows.select(self.narrow)
                top, ranks = self._best(narrow, self._group(narrow))
                self._append(rows[top], ranks)
        # The checkpoints go on referring to chunks; rows that came as bytes (an older
        # version, another worker count) make the next checkpoint write the whole state.
        self.log.restored(self.kept, kept, sum(f.height for f in frames))


def _one_per_code(codes: Codes) -> npt.NDArray[np.bool_]:
    """A mask of one entry per distinct value of ``codes``.

    Codes in a range at most a few times their number are told apart by direct address (a
    slot per value, O(n)); others by a sort.

    Examples
    --------
    >>> mask = _one_per_code(np.array([7, 3, 7, 7, 4]))
    >>> int(mask.sum()), sorted(np.array([7, 3, 7, 7, 4])[mask].tolist())
    (3, [3, 4, 7])
    """
    one = np.zeros(codes.size, np.bool_)
    if codes.size == 0:
        return one
    lo, hi = int(codes.min()), int(codes.max())
    if hi - lo < 4 * codes.size + 1024:
        slot = np.full(hi - lo + 1, -1, np.int64)
        slot[codes - lo] = np.arange(codes.size)  # one of the writes to a slot stays
        one[slot[slot >= 0]] = True
        return one
    by_code = np.argsort(codes)
    one[by_code[_run_starts(codes[by_code])]] = True
    return one


def _run_starts(values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Which entries of sorted ``values`` start a run of equal values.

    Examples
    --------
    >>> _run_starts(np.array([1, 1, 2, 5, 5])).tolist()
    [True, False, True, True, False]
    """
    starts = np.empty(values.size, np.bool_)
    starts[:1] = True
    np.not_equal(values[1:], values[:-1], out=starts[1:])
    return starts


def _by_arrival(rows: Positions, ranks: Positions, size: int) -> tuple[Positions, Positions]:
    """``rows`` (distinct row numbers below ``size``) ascending, with their ``ranks``.

    Appending the winners of a batch in arrival order keeps ties in arrival order as well
    as rank order does, and the gather of their rows reads the batch's columns in order:
    several times cheaper than in rank order on text columns.

    Examples
    --------
    >>> [a.tolist() for a in _by_arrival(np.array([4, 0, 2]), np.array([0, 1, 0]), 5)]
    [[0, 2, 4], [1, 0, 0]]
    """
    rank_of = np.full(size, -1, np.int64)
    rank_of[rows] = ranks
    ordered = np.flatnonzero(rank_of >= 0)
    return ordered, rank_of[ordered]


def _codes_of(
    codes: tuple[Codes, npt.NDArray[np.bool_], CodeKind], rows: Positions
) -> tuple[Codes, npt.NDArray[np.bool_], CodeKind]:
    """The :func:`key_codes` of some rows, from those of all rows."""
    return codes[0][rows], codes[1][rows], codes[2]


def _sort_keys(frame: pl.DataFrame, columns: list[str], descending: list[bool]) -> list[Any] | None:
    """NumPy sort keys of ``columns`` (integers, times, Booleans; descending ones inverted).

    None when a column has another type or a null: Polars sorts those (nulls last, NaN).
    """
    out: list[Any] = []
    for name, desc in zip(columns, descending, strict=True):
        col = frame.get_column(name)
        if col.null_count() or not (col.dtype.is_integer() or col.dtype.is_temporal()):
            if col.dtype != pl.Boolean or col.null_count():
                return None
            col = col.cast(pl.UInt8)
        values = col.to_physical().to_numpy()
        out.append(~values if desc else values)  # ~x = -x - 1: reverses, never overflows
    return out


class SinkOperator(Operator):
    """Hands batches to a sink writer."""

    def __init__(self, node: Node, ctx: OpContext, resume: dict[str, Any]) -> None:
        super().__init__(node, ctx)
        worker = getattr(ctx, "worker", None)
        cfg = getattr(worker, "cfg", None)
        checkpointing = getattr(cfg, "checkpoint_dir", None) is not None
        sctx = SinkContext(
            node.step_id,
            ctx.worker_index,
            ctx.worker_count,
            resume,
            publish=ctx.publish,
            checkpointing=checkpointing,
            job=str(getattr(cfg, "checkpoint_meta", {}).get("flow", "")),
        )
        self.writer: SinkWriter | None = None
        if node.spec.single_writer and ctx.worker_index != 0:
            return
        self.writer = node.spec.build(sctx)

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height and self.writer is not None:
            self.writer.write(batch)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def on_end(self) -> None:
        self.close()

    def writer_snapshot(self) -> dict[str, Any]:
        return self.writer.snapshot() if self.writer is not None else {}

    def close(self) -> None:
        if self.writer is not None:
            w, self.writer = self.writer, None
            w.close()


class DeadUnionOperator(Operator):
    """Collects the dead letters of every step; normalizes their columns."""

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height:
            self.ctx.emit(
                batch.select(list(DEAD_LETTER_SCHEMA)).cast(pl.Schema(DEAD_LETTER_SCHEMA))
            )


def build_operator(
    node: Node,
    ctx: OpContext,
    *,
    emit_mode: Callable[[str], str],
    resume: dict[str, Any],
) -> Operator:
    """Make the runtime operator of a (non-source, non-exchange) node."""
    kind = node.kind
    if kind == "frame":
        return FrameOperator(node, ctx)
    if kind == "record":
        return RecordOperator(node, ctx)
    if kind == "split":
        return SplitOperator(node, ctx)
    if kind == "validate":
        return ValidateOperator(node, ctx)
    if kind == "agg":
        return AggOperator(node, ctx, emit_mode(node.spec.emit))
    if kind == "stateful_map":
        return StatefulMapOperator(node, ctx)
    if kind == "keyed_transform":
        return TransformOperator(node, ctx)
    if kind == "top_n":
        return TopNOperator(node, ctx, emit_mode(node.spec.emit))
    if kind == "custom":
        # A step defined outside the engine (tideflow.ml): its settings build the operator.
        built: Operator = node.spec.build(node, ctx)
        return built
    if kind == "sink":
        return SinkOperator(node, ctx, resume)
    if kind == "dead_union":
        return DeadUnionOperator(node, ctx)
    return Operator(node, ctx)  # union
