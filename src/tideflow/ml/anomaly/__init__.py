"""tideflow.ml.anomaly: unsupervised anomaly detectors (higher score = more anomalous)."""

from tideflow.ml._anomaly import HalfSpaceTrees, RobustZScore

__all__ = ["HalfSpaceTrees", "RobustZScore"]
