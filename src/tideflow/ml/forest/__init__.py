"""tideflow.ml.forest: adaptive random forests."""

from tideflow.ml._forest import ARFClassifier

__all__ = ["ARFClassifier"]
