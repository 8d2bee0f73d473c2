"""Data sets for tideflow.ml: seeded synthetic streams (``datasets.synth``)."""

from tideflow.ml.datasets import synth

__all__ = ["synth"]
