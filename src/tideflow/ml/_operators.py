"""Dataflow operators for online models: ``predict``, ``learn`` and ``evaluate``.

Each is a function that takes a :class:`tideflow.Stream` and a model and returns a new stream,
built on :meth:`tideflow.Stream.map_batches`: every micro-batch goes through the model's
vectorized mini-batch path (``predict_many`` / ``learn_many``). The model object is the
operator's explicit state: it is updated in place, and ``model.snapshot()`` /
``model.save(path)`` capture it. Run such flows with ``workers=1`` (the model then lives in the
calling process); one model per worker process is not merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from tideflow._errors import ConfigError
from tideflow.ml._metrics import Metric, Rolling

__all__ = ["evaluate", "learn", "predict"]


def _features(
    df: pl.DataFrame, features: Sequence[str] | None, exclude: Sequence[str]
) -> pl.DataFrame:
    if features is not None:
        return df.select(list(features))
    return df.drop([c for c in exclude if c in df.columns])


def _check_model(step: str, model: Any, *methods: str) -> None:
    missing = [m for m in methods if not hasattr(model, m)]
    if missing:
        msg = f"{step}: {type(model).__name__} has no {missing}; pass a tideflow.ml model"
        raise ConfigError(msg)


def _outputs(model: Any, X: pl.DataFrame) -> np.ndarray:
    if hasattr(model, "score_many") and not hasattr(model, "predict_many"):
        return np.asarray(model.score_many(X))
    final = getattr(model, "_final", model)
    if hasattr(final, "score_many") and not hasattr(final, "predict_many"):
        return np.asarray(model.score_many(X))
    return np.asarray(model.predict_many(X))


def predict(
    stream: Any,
    model: Any,
    *,
    features: Sequence[str] | None = None,
    output: str = "prediction",
    name: str | None = None,
) -> Any:
    """Add a column ``output`` with the model's prediction (or anomaly score) for each record.

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
    _check_model("predict", model, "learn_many")

    def apply(df: pl.DataFrame) -> pl.DataFrame:
        if df.height == 0:
            return df.with_columns(pl.lit(None).alias(output))
        values = _outputs(model, _features(df, features, [output]))
        return df.with_columns(pl.Series(output, values.tolist()))

    return stream.map_batches(apply, name=name or "predict")


def learn(
    stream: Any,
    model: Any,
    *,
    target: str | None,
    features: Sequence[str] | None = None,
    name: str | None = None,
) -> Any:
    """Update ``model`` with every micro-batch (``target`` is the label column; ``None`` for
    unsupervised models) and pass the records through unchanged.

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
    _check_model("learn", model, "learn_many")

    def apply(df: pl.DataFrame) -> pl.DataFrame:
        if df.height:
            X = _features(df, features, [target] if target else [])
            if target is None:
                model.learn_many(X)
            else:
                model.learn_many(X, df[target].to_numpy())
        return df

    return stream.map_batches(apply, name=name or "learn")


def evaluate(
    stream: Any,
    model: Any,
    metric: Metric,
    *,
    target: str,
    features: Sequence[str] | None = None,
    window: int | None = None,
    name: str | None = None,
) -> Any:
    """Prequential evaluation: predict each micro-batch, score it, then learn from it.

    Emits one row per micro-batch: ``n`` (records seen so far), ``metric`` (its name) and
    ``value`` (the metric so far, or over the last ``window`` records).

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
    _check_model("evaluate", model, "learn_many")
    m: Metric = Rolling(metric, window) if window else metric
    seen = [0]
    label = type(metric).__name__ + (f"@{window}" if window else "")

    def apply(df: pl.DataFrame) -> pl.DataFrame:
        if df.height:
            X = _features(df, features, [target])
            y = df[target].to_numpy()
            pred = _outputs(model, X)
            ok = (
                np.asarray([p is not None for p in pred.tolist()]) if pred.dtype == object else None
            )
            if ok is None or ok.all():
                m.update_many(y, pred)
            elif ok.any():
                m.update_many(y[ok], pred[ok])
            model.learn_many(X, y)
            seen[0] += df.height
        return pl.DataFrame(
            {"n": [seen[0]], "metric": [label], "value": [float(m.get())]},
            schema={"n": pl.Int64, "metric": pl.String, "value": pl.Float64},
        )

    return stream.map_batches(apply, name=name or "evaluate")
