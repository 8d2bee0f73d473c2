"""Model families added after the linear ones, for the shared conformance suite."""

from __future__ import annotations

from typing import Any

from tideflow.ml import tree
from tideflow.ml.forest import ARFClassifier

MORE_MODELS: list[tuple[Any, str]] = [
    (tree.HoeffdingTreeClassifier, "binary"),
    (tree.HoeffdingTreeClassifier, "multiclass"),
    (tree.HoeffdingAdaptiveTreeClassifier, "binary"),
    (tree.HoeffdingTreeRegressor, "regression"),
    (ARFClassifier, "binary"),
    (ARFClassifier, "multiclass"),
]

from tideflow.ml import anomaly, cluster, neighbors  # noqa: E402

MORE_MODELS += [
    (neighbors.KNNClassifier, "binary"),
    (neighbors.KNNClassifier, "multiclass"),
    (neighbors.KNNRegressor, "regression"),
    (anomaly.HalfSpaceTrees, "anomaly"),
    (anomaly.RobustZScore, "anomaly"),
    (cluster.KMeans, "cluster"),
    (cluster.CluStream, "cluster"),
]
