"""tideflow.ml.tree: Hoeffding trees (classifier, regressor, adaptive classifier)."""

from tideflow.ml._hat import HoeffdingAdaptiveTreeClassifier
from tideflow.ml._tree import HoeffdingTreeClassifier
from tideflow.ml._tree_reg import HoeffdingTreeRegressor

__all__ = ["HoeffdingAdaptiveTreeClassifier", "HoeffdingTreeClassifier", "HoeffdingTreeRegressor"]
