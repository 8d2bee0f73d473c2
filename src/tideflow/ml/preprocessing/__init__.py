"""tideflow.ml.preprocessing: re-exports of the public names of ``_preprocessing``."""

from tideflow.ml._preprocessing import (
    FeatureHasher,
    OneHotEncoder,
    StandardScaler,
)

__all__ = [
    "FeatureHasher",
    "OneHotEncoder",
    "StandardScaler",
]
