"""tideflow.ml.compose: re-exports of the public names of ``_compose``."""

from tideflow.ml._compose import (
    Pipeline,
)

__all__ = [
    "Pipeline",
]
