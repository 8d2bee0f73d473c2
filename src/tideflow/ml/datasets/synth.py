"""Seeded synthetic streams (several with drift), named like River's ``datasets.synth``."""

from tideflow.ml._synth import (
    SEA,
    Agrawal,
    Anomalies,
    ConceptDriftStream,
    Friedman,
    Hyperplane,
    RandomRBF,
    SyntheticStream,
)

__all__ = [
    "SEA",
    "Agrawal",
    "Anomalies",
    "ConceptDriftStream",
    "Friedman",
    "Hyperplane",
    "RandomRBF",
    "SyntheticStream",
]
