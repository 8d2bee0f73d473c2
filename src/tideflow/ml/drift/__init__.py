"""tideflow.ml.drift: concept drift detectors."""

from tideflow.ml._drift import ADWIN, PageHinkley

__all__ = ["ADWIN", "PageHinkley"]
