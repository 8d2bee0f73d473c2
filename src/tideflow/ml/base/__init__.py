"""tideflow.ml.base: base classes of models, transformers and their snapshots."""

from tideflow.ml._base import (
    AnomalyDetector,
    Classifier,
    Clusterer,
    Estimator,
    Regressor,
    Transformer,
)
from tideflow.ml._data import Cols, FeatureSpace, LabelSpace

__all__ = [
    "AnomalyDetector",
    "Classifier",
    "Clusterer",
    "Cols",
    "Estimator",
    "FeatureSpace",
    "LabelSpace",
    "Regressor",
    "Transformer",
]
