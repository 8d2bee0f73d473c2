"""Runtime side of the ML dataflow steps: operators that hold models as checkpointed state.

A model step's settings (:class:`ModelStep`, :class:`LabelJoinStep`) are immutable; on every
worker ``build()`` makes the operator that holds the state. Models enter checkpoints in their own
safe format (the model snapshot encoded by :func:`tideflow.ml._base.pack`: JSON metadata and raw
NumPy arrays, no pickle); key columns and buffered records as Arrow IPC.

A global model is well defined with several workers because its step's input is gathered on
worker 0 (an exchange without keys): one copy of the model sees every record. Per-key models
are partitioned by key like any keyed state, and are redistributed when a job resumes with a
different number of workers.
"""

from __future__ import annotations

import dataclasses
import io
import weakref
from typing import Any, Literal

import numpy as np
import polars as pl

from tideflow._errors import StateError
from tideflow.api._graph import Node
from tideflow.ml._base import from_snapshot, pack, unpack
from tideflow.ml._data import Cols, as_cols
from tideflow.runtime._operators import OpContext, Operator
from tideflow.state._resume import _own_share

__all__ = [
    "LabelJoinOperator",
    "LabelJoinStep",
    "ModelMode",
    "ModelOperator",
    "ModelStep",
    "keyed_models",
]

ModelMode = Literal["predict", "learn", "evaluate"]
_WM_MIN = -(2**63)
_WM_MAX = 2**63 - 1

#: Per-key copies of a model, by the model object the user passed (per process).
_KEYED: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def keyed_models(model: Any) -> dict[Any, Any]:
    """The per-key copies of ``model`` this process holds: key -> model.

    Steps built with ``key=`` keep one copy of the model per key value (a tuple of values for
    several key columns). In a run with one worker the copies live in the calling process and
    stay available here after the run; with several workers use
    :func:`tideflow.ml.model_from_checkpoint`.

    Examples
    --------
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> from tideflow.ml import keyed_models, learn, preprocessing
    >>> scaler = preprocessing.StandardScaler()
    >>> rows = [{"k": "a", "x": 1.0}, {"k": "b", "x": 5.0}, {"k": "a", "x": 3.0}]
    >>> flow = tf.Dataflow("per_key")
    >>> learn(flow.source(TestingSource(rows)), scaler, target=None, key="k").sink(CollectSink())
    >>> _ = tf.run(flow)
    >>> {k: m.means["x"] for k, m in sorted(keyed_models(scaler).items())}
    {'a': 2.0, 'b': 5.0}
    """
    got = _KEYED.get(model)
    if got is None:
        got = {}
        _KEYED[model] = got
    return got


def _ipc(frame: pl.DataFrame | None) -> bytes:
    if frame is None:
        return b""
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _read_ipc(data: bytes | None) -> pl.DataFrame | None:
    if not data:
        return None
    return pl.read_ipc(io.BytesIO(data))


def _outputs(model: Any, X: Any) -> np.ndarray:
    """Predictions, or anomaly scores for models that only score."""
    final = getattr(model, "_final", model)
    if not hasattr(model, "predict_many") or (
        hasattr(final, "score_many") and not hasattr(final, "predict_many")
    ):
        return np.asarray(model.score_many(X))
    return np.asarray(model.predict_many(X))


@dataclasses.dataclass(frozen=True, slots=True)
class ModelStep:
    """Settings of a ``predict`` / ``learn`` / ``evaluate`` step (what runs is ModelOperator)."""

    mode: ModelMode
    #: The model the user passed: the live global model, or the template of per-key copies.
    model: Any
    #: Key columns of per-key models (None: one global model).
    keys: tuple[str, ...] | None
    features: tuple[str, ...] | None
    #: Columns never used as features when ``features`` is None.
    exclude: tuple[str, ...]
    target: str | None
    output: str
    #: Metric template of ``evaluate`` (already wrapped in Rolling for a window).
    metric: Any
    label: str
    #: True when every worker predicts with its own copy (no gathering; the model is not learned).
    replicate: bool = False

    @property
    def owner(self) -> bool:
        """True when the step changes its model (so the model is part of its snapshot)."""
        return self.mode != "predict"

    def build(self, node: Node, ctx: OpContext) -> Operator:
        """Make the runtime operator of this step on one worker."""
        return ModelOperator(node, ctx, self)

    def rescale(self, snaps: list[dict[str, Any]], worker: int, count: int) -> dict[str, Any]:
        """State for worker ``worker`` of ``count`` from the parts of another worker count."""
        if self.keys is None:
            # The gathered model lives on worker 0: its part is the only one written.
            first = next((s for s in snaps if s.get("worker") == 0), snaps[0])
            return dict(first, worker=worker) if worker == 0 else {}
        keys = list(self.keys)
        frames, models, metrics, seen = [], [], [], []
        for part, snap in enumerate(snaps):
            frame = _read_ipc(snap.get("keys"))
            if frame is None or frame.height == 0:
                continue
            payload = unpack(snap["state"])
            frames.append(frame.with_columns(pl.lit(part).alias("__part")).with_row_index("__i"))
            models.append(payload["models"])
            metrics.append(payload["metrics"])
            seen.append(payload["seen"])
        if not frames:
            return {}
        mine = _own_share(pl.concat(frames, how="vertical_relaxed"), keys, worker, count)
        at = list(zip(mine["__part"].to_list(), mine["__i"].to_list(), strict=True))
        payload = {
            "models": [models[p][i] for p, i in at],
            "metrics": None if metrics[0] is None else [metrics[p][i] for p, i in at],
            "seen": [seen[p][i] for p, i in at],
        }
        return {
            "version": 1,
            "worker": worker,
            "keys": _ipc(mine.select(keys)),
            "state": pack(payload),
        }


class ModelOperator(Operator):
    """Runs one model step on one worker; the model (or per-key models) is its state."""

    def __init__(self, node: Node, ctx: OpContext, spec: ModelStep) -> None:
        super().__init__(node, ctx)
        self.spec = spec
        self.keys = list(spec.keys) if spec.keys is not None else None
        self.models: dict[Any, Any] = keyed_models(spec.model) if self.keys else {}
        self._template: dict[str, Any] | None = None
        self.metric = spec.metric.clone() if spec.metric is not None else None
        self.metrics: dict[Any, Any] = {}
        self.seen = 0
        self.seen_by_key: dict[Any, int] = {}
        #: Rows this operator processed (only worker 0's copy of a gathered model gets any).
        self.rows = 0

    # -- helpers ---------------------------------------------------------------------------
    def _X(self, df: pl.DataFrame) -> pl.DataFrame:
        if self.spec.features is not None:
            return df.select(list(self.spec.features))
        return df.drop([c for c in (*self.spec.exclude, "__row") if c in df.columns])

    def _new_model(self) -> Any:
        """A copy of the model as the user passed it (untrained, or warm-started)."""
        if self._template is None:
            self._template = self.spec.model.snapshot()
        return from_snapshot(self._template)

    def _key_model(self, key: Any, create: bool) -> Any:
        model = self.models.get(key)
        if model is None:
            model = self._new_model()
            if create:
                self.models[key] = model
        return model

    def _learn(self, model: Any, X: Any, y: np.ndarray | None) -> None:
        if y is None:
            model.learn_many(X)
        else:
            model.learn_many(X, y)

    def _y(self, df: pl.DataFrame) -> np.ndarray | None:
        return None if self.spec.target is None else df[self.spec.target].to_numpy()

    def _evaluate(self, model: Any, metric: Any, X: Any, y: np.ndarray) -> None:
        pred = _outputs(model, X)
        ok = np.asarray([p is not None for p in pred.tolist()]) if pred.dtype == object else None
        if ok is None or ok.all():
            metric.update_many(y, pred)
        elif ok.any():
            metric.update_many(y[ok], pred[ok])
        model.learn_many(X, y)

    def _groups(self, df: pl.DataFrame) -> tuple[Cols, list[tuple[Any, np.ndarray]]]:
        """The batch's features converted once, and each key's row positions (in order)."""
        assert self.keys is not None
        X = as_cols(self._X(df))
        rows = (
            df.select(self.keys)
            .with_row_index("__i")
            .group_by(self.keys, maintain_order=True)
            .agg(pl.col("__i"))
        )
        single = len(self.keys) == 1
        out = []
        for *key, idx in rows.iter_rows():
            out.append((key[0] if single else tuple(key), np.asarray(idx, dtype=np.int64)))
        return X, out

    @staticmethod
    def _take(X: Cols, idx: np.ndarray) -> Cols:
        return Cols(X.names, [c[idx] for c in X.cols], len(idx))

    # -- data ------------------------------------------------------------------------------
    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        self.rows += batch.height
        mode = self.spec.mode
        if self.keys is None:
            model = self.spec.model
            if mode == "predict":
                values = _outputs(model, self._X(batch))
                self.ctx.emit(batch.with_columns(pl.Series(self.spec.output, values.tolist())))
            elif mode == "learn":
                self._learn(model, self._X(batch), self._y(batch))
                self.ctx.emit(batch)
            else:
                y = self._y(batch)
                assert y is not None and self.metric is not None
                self._evaluate(model, self.metric, self._X(batch), y)
                self.seen += batch.height
                self.ctx.emit(
                    pl.DataFrame(
                        {
                            "n": [self.seen],
                            "metric": [self.spec.label],
                            "value": [self.metric.get()],
                        },
                        schema={"n": pl.Int64, "metric": pl.String, "value": pl.Float64},
                    )
                )
            return
        X, groups = self._groups(batch)
        y = self._y(batch)
        if mode == "predict":
            out = np.empty(batch.height, dtype=object)
            for key, idx in groups:
                values = _outputs(self._key_model(key, create=False), self._take(X, idx))
                out[idx] = values.tolist()
            self.ctx.emit(batch.with_columns(pl.Series(self.spec.output, out.tolist())))
        elif mode == "learn":
            for key, idx in groups:
                model = self._key_model(key, create=True)
                self._learn(model, self._take(X, idx), None if y is None else y[idx])
            self.ctx.emit(batch)
        else:
            assert y is not None
            rows: list[tuple[Any, ...]] = []
            for key, idx in groups:
                metric = self.metrics.get(key)
                if metric is None:
                    assert self.spec.metric is not None
                    metric = self.metrics[key] = self.spec.metric.clone()
                model = self._key_model(key, create=True)
                self._evaluate(model, metric, self._take(X, idx), y[idx])
                n = self.seen_by_key.get(key, 0) + len(idx)
                self.seen_by_key[key] = n
                kv = key if isinstance(key, tuple) else (key,)
                rows.append((*kv, n, self.spec.label, float(metric.get())))
            cols = [*self.keys, "n", "metric", "value"]
            frame = pl.DataFrame(rows, schema=cols, orient="row")
            self.ctx.emit(
                frame.with_columns(
                    pl.col("n").cast(pl.Int64), pl.col("value").cast(pl.Float64)
                ).with_columns(pl.col(k).cast(batch.schema[k]) for k in self.keys)
            )

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        if not self.spec.owner:
            return {}
        me = self.ctx.worker_index
        if self.keys is None:
            if me != 0 and self.rows == 0:
                # Gathered input: only worker 0's copy of a global model ever learns.
                return {}
            payload = {
                "model": self.spec.model.snapshot(),
                "metric": None if self.metric is None else self.metric.snapshot(),
                "seen": self.seen,
            }
            return {"version": 1, "worker": me, "state": pack(payload)}
        keys = list(self.models)
        single = len(self.keys) == 1
        columns = list(zip(*[(k,) if single else k for k in keys], strict=True)) if keys else []
        frame = pl.DataFrame(
            {c: list(v) for c, v in zip(self.keys, columns, strict=True)} if keys else {}
        )
        payload = {
            "models": [self.models[k].snapshot() for k in keys],
            "metrics": None
            if self.spec.mode != "evaluate"
            else [self.metrics[k].snapshot() for k in keys],
            "seen": [self.seen_by_key.get(k, 0) for k in keys],
        }
        return {"version": 1, "worker": me, "keys": _ipc(frame), "state": pack(payload)}

    def restore(self, snap: dict[str, Any]) -> None:
        if not snap or not self.spec.owner:
            return
        if snap.get("version") != 1:
            msg = f"step '{self.node.step_id}': model state version {snap.get('version')!r} unsupported"
            raise StateError(msg)
        payload = unpack(snap["state"])
        if self.keys is None:
            self.spec.model.restore(payload["model"])
            if payload["metric"] is not None and self.metric is not None:
                self.metric = from_snapshot(payload["metric"])
            self.seen = int(payload["seen"])
            return
        frame = _read_ipc(snap.get("keys"))
        keys: list[Any] = [] if frame is None else frame.rows()
        if len(self.keys) == 1:
            keys = [k[0] for k in keys]
        self.models.clear()
        for k, m in zip(keys, payload["models"], strict=True):
            self.models[k] = from_snapshot(m)
        if payload["metrics"] is not None:
            self.metrics = {
                k: from_snapshot(m) for k, m in zip(keys, payload["metrics"], strict=True)
            }
        self.seen_by_key = {k: int(n) for k, n in zip(keys, payload["seen"], strict=True)}


# -- features joined with labels that come later ------------------------------------------
_INTERNAL = ("__tf", "__fid", "__tl", "__lid")


@dataclasses.dataclass(frozen=True, slots=True)
class LabelJoinStep:
    """Settings of :func:`tideflow.ml.join_labels` (what runs is LabelJoinOperator)."""

    #: The id columns (both streams are partitioned by them).
    keys: tuple[str, ...]
    within_us: int
    feature_time: str
    label_time: str
    #: The label columns carried into the result (None: all but the ids).
    take: tuple[str, ...] | None = None

    def build(self, node: Node, ctx: OpContext) -> Operator:
        """Make the runtime operator of this step on one worker."""
        return LabelJoinOperator(node, ctx, self)

    def rescale(self, snaps: list[dict[str, Any]], worker: int, count: int) -> dict[str, Any]:
        """Buffered features and labels of the ids that worker ``worker`` of ``count`` owns."""
        keys = list(self.keys)
        out: dict[str, Any] = {
            "version": 1,
            "wm": min(int(s["wm"]) for s in snaps),
            "matched": sum(int(s["matched"]) for s in snaps) if worker == 0 else 0,
            "expired": sum(int(s["expired"]) for s in snaps) if worker == 0 else 0,
        }
        for field, seq in (("pending", "__fid"), ("labels", "__lid")):
            got = [f for f in (_read_ipc(s.get(field)) for s in snaps) if f is not None]
            if not got:
                out[field] = b""
                continue
            frame = _own_share(pl.concat(got, how="vertical_relaxed"), keys, worker, count)
            # Renumber: sequence numbers of different workers would collide.
            frame = frame.sort(seq).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(seq))
            out[field] = _ipc(frame)
        out["next_id"] = max(
            (_read_ipc(out[f]).height for f in ("pending", "labels") if out[f]),  # type: ignore[union-attr]
            default=0,
        )
        return out


class LabelJoinOperator(Operator):
    """Features (input 0) wait for their label (input 1) by id, within an event-time bound.

    A feature record at time ``tf`` is labelled by the first label of its id whose time ``tl``
    is in ``[tf, tf + within]``; it is emitted with the label's columns at once. A feature that
    no label can reach any more (``tf + within`` below the watermark) expires: it is emitted on
    the ``late`` port and counted. Labels wait until the watermark passes their own time (a
    feature arriving later can still use them).
    """

    def __init__(self, node: Node, ctx: OpContext, spec: LabelJoinStep) -> None:
        super().__init__(node, ctx)
        self.spec = spec
        self.on = list(spec.keys)
        self.within = spec.within_us
        self.pending: pl.DataFrame | None = None
        self.labels: pl.DataFrame | None = None
        self.next_id = 0
        self.wm = _WM_MIN
        self.matched = 0
        self.expired = 0

    def _stamp(self, batch: pl.DataFrame, time: str, t: str, seq: str) -> pl.DataFrame:
        out = batch.with_columns(
            pl.col(time).dt.epoch("us").alias(t),
            (pl.int_range(pl.len(), dtype=pl.Int64) + self.next_id).alias(seq),
        )
        self.next_id += batch.height
        return out

    def _match(self, feats: pl.DataFrame, labels: pl.DataFrame) -> pl.Series | None:
        if self.spec.take is not None:
            lab = labels.select([*self.on, *self.spec.take, "__tl", "__lid"])
        else:
            lab = labels
        pairs = feats.join(lab, on=self.on, how="inner", suffix="_label")
        tf, tl = pl.col("__tf"), pl.col("__tl")
        pairs = pairs.filter((tl >= tf) & (tl <= tf + self.within))
        if pairs.height == 0:
            return None
        pairs = pairs.sort("__fid", "__lid").unique("__fid", keep="first", maintain_order=True)
        self.matched += pairs.height
        self.ctx.emit(pairs.drop(list(_INTERNAL)))
        return pairs["__fid"]

    def on_batch(self, index: int, batch: pl.DataFrame) -> None:
        if batch.height == 0:
            return
        if index == 0:
            rows = self._stamp(batch, self.spec.feature_time, "__tf", "__fid")
            if self.labels is not None and self.labels.height:
                done = self._match(rows, self.labels)
                if done is not None:
                    rows = rows.filter(~pl.col("__fid").is_in(done.implode()))
            self.pending = rows if self.pending is None else pl.concat([self.pending, rows])
        else:
            rows = self._stamp(batch, self.spec.label_time, "__tl", "__lid")
            if self.pending is not None and self.pending.height:
                done = self._match(self.pending, rows)
                if done is not None:
                    self.pending = self.pending.filter(~pl.col("__fid").is_in(done.implode()))
            self.labels = rows if self.labels is None else pl.concat([self.labels, rows])
        self._expire()

    def _expire(self) -> None:
        if self.wm == _WM_MIN:
            return
        if self.pending is not None and self.pending.height:
            gone = (pl.col("__tf") + self.within) < self.wm
            expired = self.pending.filter(gone)
            if expired.height:
                self.pending = self.pending.filter(~gone)
                self.expired += expired.height
                self.ctx.emit(expired.drop(["__tf", "__fid"]), "late")
        if self.labels is not None and self.labels.height:
            self.labels = self.labels.filter(pl.col("__tl") >= self.wm)

    def on_watermark(self, wm: int, idle: bool) -> None:
        self.wm = max(self.wm, wm)
        self._expire()
        out = wm
        if self.pending is not None and self.pending.height:
            # A waiting feature may still be emitted with its own (older) time.
            oldest = self.pending["__tf"].min()
            assert isinstance(oldest, int)
            out = min(out, oldest)
        self.ctx.watermark(out, idle)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "wm": self.wm,
            "next_id": self.next_id,
            "matched": self.matched,
            "expired": self.expired,
            "pending": _ipc(self.pending),
            "labels": _ipc(self.labels),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("version") != 1:
            msg = f"step '{self.node.step_id}': label join state version {snap.get('version')!r} unsupported"
            raise StateError(msg)
        self.wm = int(snap["wm"])
        self.next_id = int(snap["next_id"])
        self.matched, self.expired = int(snap["matched"]), int(snap["expired"])
        self.pending = _read_ipc(snap["pending"])
        self.labels = _read_ipc(snap["labels"])
