"""Dataflow operators for online models: ``predict``, ``learn``, ``evaluate`` and ``join_labels``.

Each is a function that takes a :class:`tideflow.Stream` and returns a new stream. Every
micro-batch goes through the model's vectorized mini-batch path (``predict_many`` /
``learn_many``). The model is the step's explicit state: it is snapshotted into pipeline
checkpoints (in the models' own safe format, never pickled) and restored on resume.

With several workers a global model is well defined: the step's input is gathered on worker 0,
which holds the one copy that learns and predicts. With ``key=`` the step keeps one copy of the
model per key instead, partitioned over the workers by key like any keyed state.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from tideflow._errors import ConfigError, StateError
from tideflow.ml._base import from_snapshot, unpack
from tideflow.ml._metrics import Metric, Rolling
from tideflow.ml._runtime import LabelJoinStep, ModelMode, ModelStep

if TYPE_CHECKING:
    from tideflow.api._dataflow import Stream

__all__ = ["Labeled", "evaluate", "join_labels", "learn", "model_from_checkpoint", "predict"]

Key = str | Sequence[str] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Labeled:
    """Outputs of :func:`join_labels`.

    ``joined``: feature records with their label's columns, as soon as the label arrives.
    ``expired``: feature records whose label did not arrive within the bound (the step's
    ``late`` counter in the run result counts them).
    """

    joined: Stream
    expired: Stream


def _check_model(step: str, model: Any, *methods: str) -> None:
    missing = [m for m in methods if not hasattr(model, m)]
    if missing or not hasattr(model, "snapshot"):
        msg = (
            f"step '{step}': {type(model).__name__} has no {missing or ['snapshot']}; "
            "pass a tideflow.ml model"
        )
        raise ConfigError(msg)


def _keys(key: Key) -> tuple[str, ...] | None:
    if key is None:
        return None
    return (key,) if isinstance(key, str) else tuple(key)


def _check_columns(step: str, stream: Stream, what: str, cols: Sequence[str]) -> None:
    schema = stream.schema
    if schema is None:
        return
    missing = [c for c in cols if c not in schema]
    if missing:
        msg = f"step '{step}': no {what} column {missing}; the input has columns {list(schema)}"
        raise ConfigError(msg)


def _check_sharing(step: str, stream: Stream, spec: ModelStep) -> None:
    """One model object means one model in a flow: same keys, and never replicated if learned."""
    for node in stream.flow.nodes:
        other = node.spec
        if node.kind != "custom" or not isinstance(other, ModelStep):
            continue
        if other.model is not spec.model:
            continue
        if other.keys != spec.keys:
            msg = (
                f"step '{step}': the model is used by step '{node.step_id}' with "
                f"key={list(other.keys) if other.keys else None}; use the same key (or another "
                "model object) in every step of the model"
            )
            raise ConfigError(msg)
        if (other.replicate and spec.owner) or (spec.replicate and other.owner):
            msg = (
                f"step '{step}': the model is learned in this flow (step '{node.step_id}'), so "
                "predict(..., replicate=True) would predict with stale copies; drop replicate="
            )
            raise ConfigError(msg)


def _add_step(
    stream: Stream,
    spec: ModelStep,
    name: str | None,
    *,
    schema: dict[str, pl.DataType] | None,
    keep_time: bool,
) -> Stream:
    from tideflow.api._dataflow import Stream

    flow = stream.flow
    step_id = flow._step_id(name, spec.mode)
    if spec.target is not None:
        _check_columns(step_id, stream, "target", [spec.target])
    if spec.features is not None:
        _check_columns(step_id, stream, "feature", spec.features)
    if spec.keys is not None:
        _check_columns(step_id, stream, "key", spec.keys)
    _check_sharing(step_id, stream, spec)
    up = (stream.node.index, stream.port)
    if spec.keys is not None:
        ex = flow._add("exchange", [up], spec.keys, step_id + ".exchange", schema=stream.schema)
        up = (ex.index, "out")
    elif not spec.replicate:
        ex = flow._add("exchange", [up], None, step_id + ".gather", schema=stream.schema)
        up = (ex.index, "out")
    node = flow._add("custom", [up], spec, step_id, schema=schema)
    node.time_column = stream.time_column if keep_time else None
    return Stream(flow, node)


def _spec(
    mode: ModelMode,
    stream: Stream,
    model: Any,
    *,
    key: Key,
    features: Sequence[str] | None,
    target: str | None,
    output: str = "prediction",
    metric: Metric | None = None,
    label: str = "",
    replicate: bool = False,
) -> ModelStep:
    keys = _keys(key)
    exclude = [*(keys or ()), output]
    if target is not None:
        exclude.append(target)
    if stream.time_column is not None:
        exclude.append(stream.time_column)
    return ModelStep(
        mode,
        model,
        keys,
        tuple(features) if features is not None else None,
        tuple(exclude),
        target,
        output,
        metric,
        label,
        replicate,
    )


def predict(
    stream: Stream,
    model: Any,
    *,
    features: Sequence[str] | None = None,
    key: Key = None,
    output: str = "prediction",
    replicate: bool = False,
    name: str | None = None,
) -> Stream:
    """Add a column ``output`` with the model's prediction (or anomaly score) for each record.

    ``features`` defaults to every column except ``output``, the key columns and the event-time
    column. With ``key``, each record is predicted by its key's copy of the model (the one
    :func:`learn` with the same ``key`` trains; a key not seen yet gets the model as passed).
    With several workers a global model predicts on worker 0 (where it learns); a model that
    this flow never trains can be copied to every worker instead with ``replicate=True``.

    Examples
    --------
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> from tideflow.ml import linear_model, predict
    >>> model = linear_model.LinearRegression()
    >>> model.learn_many({"x": [1.0, 2.0]}, [2.0, 4.0])
    >>> flow = tf.Dataflow("p")
    >>> out = CollectSink()
    >>> predict(flow.source(TestingSource([{"x": 1.0}])), model).sink(out)
    >>> _ = tf.run(flow)
    >>> out.frame().columns
    ['x', 'prediction']
    """
    _check_model(f"{stream.flow.name}.predict", model, "learn_many")
    spec = _spec(
        "predict",
        stream,
        model,
        key=key,
        features=features,
        target=None,
        output=output,
        replicate=replicate,
    )
    if replicate and spec.keys is not None:
        msg = f"predict after step '{stream.step_id}': replicate=True applies to a global model; drop key="
        raise ConfigError(msg)
    return _add_step(stream, spec, name, schema=None, keep_time=True)


def learn(
    stream: Stream,
    model: Any,
    *,
    target: str | None,
    features: Sequence[str] | None = None,
    key: Key = None,
    labels: Stream | None = None,
    on: str | Sequence[str] | None = None,
    within: timedelta | None = None,
    name: str | None = None,
) -> Stream:
    """Update ``model`` with every micro-batch and pass the records through unchanged.

    ``target`` is the label column (``None`` for unsupervised models). ``features`` defaults to
    every column except the target, the key columns and the event-time column. With ``key``,
    one copy of the model is kept and trained per key value.

    When labels come later than the features, pass them as their own stream: ``labels`` (with
    the ``target`` column), joined to the features by the id columns ``on`` within ``within``
    of event time (see :func:`join_labels`); the model learns each record when its label
    arrives, and the returned stream holds the labelled records.

    Examples
    --------
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> from tideflow.ml import preprocessing, learn
    >>> scaler = preprocessing.StandardScaler()
    >>> flow = tf.Dataflow("l")
    >>> learn(flow.source(TestingSource([{"x": 1.0}, {"x": 3.0}])), scaler, target=None).sink(
    ...     CollectSink())
    >>> _ = tf.run(flow)
    >>> scaler.means
    {'x': 2.0}
    """
    _check_model(f"{stream.flow.name}.learn", model, "learn_many")
    if labels is not None:
        if on is None or within is None:
            msg = (
                f"learn after step '{stream.step_id}': with labels=, say how features and labels "
                "meet: on='id' (the id columns) and within=timedelta(...) (how long a label may "
                "take)"
            )
            raise ConfigError(msg)
        ids = (on,) if isinstance(on, str) else tuple(on)
        stream = _join(stream, labels, ids, within, None, (target,) if target else None).joined
    else:
        ids = ()
    if labels is None and (on is not None or within is not None):
        msg = f"learn after step '{stream.step_id}': on= and within= need labels=(a stream)"
        raise ConfigError(msg)
    spec = _spec("learn", stream, model, key=key, features=features, target=target)
    if ids:  # the id columns are not features either
        spec = dataclasses.replace(spec, exclude=(*spec.exclude, *ids))
    return _add_step(stream, spec, name, schema=stream.schema, keep_time=True)


def evaluate(
    stream: Stream,
    model: Any,
    metric: Metric,
    *,
    target: str,
    features: Sequence[str] | None = None,
    key: Key = None,
    window: int | None = None,
    name: str | None = None,
) -> Stream:
    """Prequential evaluation: predict each micro-batch, score it, then learn from it.

    Emits one row per micro-batch: ``n`` (records seen so far), ``metric`` (its name) and
    ``value`` (the metric so far, or over the last ``window`` records). With ``key``, each key
    has its own copy of the model and its own metric, and the rows carry the key columns (one
    row per key in the batch).

    Examples
    --------
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> from tideflow.ml import linear_model, metrics, preprocessing, evaluate
    >>> rows = [{"x": float(i * 7 % 10), "y": i * 7 % 10 >= 5} for i in range(2000)]
    >>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    >>> flow = tf.Dataflow("e")
    >>> out = CollectSink()
    >>> evaluate(flow.source(TestingSource(rows)), model, metrics.Accuracy(), target="y").sink(out)
    >>> _ = tf.run(flow, batch_size=100)
    >>> res = out.frame()
    >>> res["n"].to_list()[-1], res["value"].to_list()[-1] > 0.8
    (2000, True)
    """
    _check_model(f"{stream.flow.name}.evaluate", model, "learn_many")
    if not isinstance(metric, Metric):
        msg = f"evaluate after step '{stream.step_id}': metric must be a tideflow.ml.metrics metric, got {type(metric).__name__}"
        raise ConfigError(msg)
    m: Metric = Rolling(metric.clone(), window) if window else metric.clone()
    label = type(metric).__name__ + (f"@{window}" if window else "")
    spec = _spec(
        "evaluate",
        stream,
        model,
        key=key,
        features=features,
        target=target,
        metric=m,
        label=label,
    )
    schema: dict[str, pl.DataType] = {"n": pl.Int64(), "metric": pl.String(), "value": pl.Float64()}
    if spec.keys is not None:
        known = stream.schema
        schema = {k: known[k] for k in spec.keys} | schema if known is not None else {}
    return _add_step(stream, spec, name, schema=schema or None, keep_time=False)


def join_labels(
    features: Stream,
    labels: Stream,
    *,
    on: str | Sequence[str],
    within: timedelta,
    name: str | None = None,
) -> Labeled:
    """Join feature records with labels that arrive later, by id, within an event-time bound.

    A feature record at event time ``tf`` meets the first label with the same ``on`` values
    whose event time is in ``[tf, tf + within]``, as soon as both have arrived (in either
    order); the result has the feature columns and the label's other columns (``_label`` is
    appended to names the features already use). A feature that no label can reach any more
    (the watermark passed ``tf + within``) goes to ``expired``, and is counted in the step's
    ``late`` counter of the run result. Both streams need an event time
    (:meth:`~tideflow.Stream.event_time`). The waiting records are checkpointed.

    Examples
    --------
    >>> from datetime import timedelta
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> from tideflow.ml import join_labels
    >>> flow = tf.Dataflow("labels")
    >>> feats = flow.source(TestingSource([{"id": 1, "t": 0, "x": 0.5}, {"id": 2, "t": 1, "x": 2.0}]),
    ...                     name="features").event_time("t", unit="s")
    >>> labs = flow.source(TestingSource([{"id": 1, "t": 30, "y": True}]), name="labels"
    ...                    ).event_time("t", unit="s")
    >>> out, gone = CollectSink(), CollectSink()
    >>> res = join_labels(feats, labs, on="id", within=timedelta(minutes=1))
    >>> res.joined.sink(out); res.expired.sink(gone, name="expired")
    >>> run = tf.run(flow)
    >>> out.frame().select("id", "x", "y").rows(), gone.frame()["id"].to_list()
    ([(1, 0.5, True)], [2])
    >>> run.steps["labels.join_labels"].late
    1
    """
    keys = (on,) if isinstance(on, str) else tuple(on)
    return _join(features, labels, keys, within, name, None)


def _join(
    features: Stream,
    labels: Stream,
    keys: tuple[str, ...],
    within: timedelta,
    name: str | None,
    take: tuple[str, ...] | None,
) -> Labeled:
    from tideflow.api._dataflow import Stream

    flow = features.flow
    step_id = flow._step_id(name, "join_labels")
    if labels.flow is not flow:
        msg = f"step '{step_id}': features and labels must belong to the same dataflow"
        raise ConfigError(msg)
    if not isinstance(within, timedelta) or within < timedelta(0):
        msg = f"step '{step_id}': within must be a timedelta >= 0, got {within!r}"
        raise ConfigError(msg)
    for side, s in (("features", features), ("labels", labels)):
        if s.time_column is None:
            msg = (
                f"step '{step_id}': the {side} stream has no event time; declare it upstream "
                "with .event_time('column', ...)"
            )
            raise ConfigError(msg)
    if not keys:
        msg = f"step '{step_id}': on= needs at least one id column"
        raise ConfigError(msg)
    _check_columns(step_id, features, "id", keys)
    _check_columns(step_id, labels, "id", keys)
    if take is not None:
        _check_columns(step_id, labels, "label", take)
    assert features.time_column is not None and labels.time_column is not None
    spec = LabelJoinStep(
        keys, within // timedelta(microseconds=1), features.time_column, labels.time_column, take
    )
    fs, ls = features.schema, labels.schema
    schema: dict[str, pl.DataType] | None = None
    if fs is not None and ls is not None:
        schema = dict(fs)
        for c, t in ls.items():
            if c not in keys and (take is None or c in take):
                schema[c + "_label" if c in fs else c] = t
    inputs = []
    for side, s in (("features", features), ("labels", labels)):
        ex = flow._add(
            "exchange",
            [(s.node.index, s.port)],
            keys,
            f"{step_id}.{side}",
            schema=s.schema,
        )
        inputs.append((ex.index, "out"))
    node = flow._add("custom", inputs, spec, step_id, schema=schema, ports=("out", "late"))
    node.time_column = features.time_column
    return Labeled(Stream(flow, node, "out"), Stream(flow, node, "late"))


def model_from_checkpoint(checkpoint_dir: str | os.PathLike[str], step: str) -> Any:
    """The model of step ``step`` in the newest complete checkpoint of ``checkpoint_dir``.

    Returns the model for a global model, or a dict key -> model for per-key models (merged
    over all workers). Useful to serve or inspect a model trained by a job with several
    workers, whose models live in the worker processes.
    """
    from tideflow.state._store import CheckpointStore

    cp = CheckpointStore(checkpoint_dir).latest()
    if cp is None:
        msg = f"no complete checkpoint in {os.fspath(checkpoint_dir)!r}"
        raise StateError(msg)
    snaps = [p[step] for p in cp.parts if step in p]
    snaps = [s for s in snaps if isinstance(s, dict) and "state" in s and "worker" in s]
    if not snaps:
        steps = sorted({k for p in cp.parts for k, v in p.items() if "worker" in v})
        msg = (
            f"checkpoint {cp.id} in {os.fspath(checkpoint_dir)!r} holds no model of step "
            f"{step!r}; steps with models: {steps}"
        )
        raise StateError(msg)
    if "keys" not in snaps[0]:
        first = next((s for s in snaps if s["worker"] == 0), snaps[0])
        return from_snapshot(unpack(first["state"])["model"])
    import io

    out: dict[Any, Any] = {}
    for snap in snaps:
        if not snap["keys"]:
            continue
        keys = pl.read_ipc(io.BytesIO(snap["keys"])).rows()
        models = unpack(snap["state"])["models"]
        for k, m in zip(keys, models, strict=True):
            out[k[0] if len(k) == 1 else k] = from_snapshot(m)
    return out
