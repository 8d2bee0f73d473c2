"""tideflow.ml.linear_model: re-exports of the public names of ``_linear``."""

from tideflow.ml._linear import (
    LinearRegression,
    LinearSVC,
    LogisticRegression,
    PAClassifier,
    PARegressor,
    SoftmaxRegression,
)

__all__ = [
    "LinearRegression",
    "LinearSVC",
    "LogisticRegression",
    "PAClassifier",
    "PARegressor",
    "SoftmaxRegression",
]
