"""tideflow.ml.metrics: re-exports of the public names of ``_metrics``."""

from tideflow.ml._metrics import (
    F1,
    MAE,
    R2,
    RMSE,
    ROCAUC,
    Accuracy,
    LogLoss,
    Metric,
    Rolling,
)

__all__ = [
    "F1",
    "MAE",
    "R2",
    "RMSE",
    "ROCAUC",
    "Accuracy",
    "LogLoss",
    "Metric",
    "Rolling",
]
