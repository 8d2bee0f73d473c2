"""tideflow.ml.neighbors: k-nearest neighbours over a sliding window."""

from tideflow.ml._neighbors import KNNClassifier, KNNRegressor

__all__ = ["KNNClassifier", "KNNRegressor"]
