"""tideflow.ml.optim: re-exports of the public names of ``_optim``."""

from tideflow.ml._optim import (
    SGD,
    AdaGrad,
    Adam,
    Optimizer,
)

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "Optimizer",
]
