"""tideflow.ml: online machine learning inside the stream.

River's per-record interface (``learn_one``/``predict_one`` on dicts, ``|`` pipelines) and a
vectorized mini-batch interface (``learn_many``/``predict_many`` on NumPy arrays and
Polars/Arrow/pandas tables). Models snapshot to versioned plain data and save to ``.npz`` files
without pickle.
"""

from tideflow.ml import (
    anomaly,
    base,
    cluster,
    compose,
    datasets,
    drift,
    forest,
    linear_model,
    metrics,
    neighbors,
    optim,
    preprocessing,
    tree,
)
from tideflow.ml._base import from_snapshot, load
from tideflow.ml._operators import (
    Labeled,
    evaluate,
    join_labels,
    learn,
    model_from_checkpoint,
    predict,
)
from tideflow.ml._runtime import keyed_models

__all__ = [
    "Labeled",
    "anomaly",
    "base",
    "cluster",
    "compose",
    "datasets",
    "drift",
    "evaluate",
    "forest",
    "from_snapshot",
    "join_labels",
    "keyed_models",
    "learn",
    "linear_model",
    "load",
    "metrics",
    "model_from_checkpoint",
    "neighbors",
    "optim",
    "predict",
    "preprocessing",
    "tree",
]
