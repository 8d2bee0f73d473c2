"""tideflow.ml.cluster: online clustering."""

from tideflow.ml._cluster import CluStream, KMeans

__all__ = ["CluStream", "KMeans"]
