"""Pipelines: ``StandardScaler() | LogisticRegression()``."""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from tideflow._errors import ConfigError
from tideflow.ml._base import Estimator
from tideflow.ml._data import Cols, as_cols

__all__ = ["Pipeline"]


class Pipeline(Estimator):
    """Transformers followed by an optional final model, built with ``|``.

    ``learn_one`` updates each transformer on ``x`` and then transforms ``x`` for the next step;
    the prediction methods transform with the current state only. ``learn_many`` does the same
    per mini-batch.

    Examples
    --------
    >>> from tideflow.ml.preprocessing import StandardScaler
    >>> from tideflow.ml.linear_model import LogisticRegression
    >>> model = StandardScaler() | LogisticRegression()
    >>> for i in range(200):
    ...     model.learn_one({"x": float(i % 10)}, i % 10 >= 5)
    >>> model.predict_one({"x": 9.0}), model.predict_one({"x": 0.0})
    (True, False)
    """

    def __init__(self, *steps: Estimator) -> None:
        flat: list[Estimator] = []
        for s in steps:
            if isinstance(s, Pipeline):
                flat.extend(s.steps)
            elif isinstance(s, Estimator):
                flat.append(s)
            else:
                msg = f"Pipeline steps must be tideflow.ml estimators, got {type(s).__name__}"
                raise ConfigError(msg)
        if not flat:
            msg = "Pipeline needs at least one step"
            raise ConfigError(msg)
        for s in flat[:-1]:
            if not hasattr(s, "transform_one"):
                msg = f"Pipeline step {type(s).__name__} is not a transformer but is not last"
                raise ConfigError(msg)
        self.steps: list[Estimator] = flat
        last = flat[-1]
        # Resolved once: the per-record methods run for every record.
        self._tx: tuple[Any, ...] = tuple(flat if hasattr(last, "transform_one") else flat[:-1])
        self._last: Any = None if hasattr(last, "transform_one") else last

    def _get_params(self) -> dict[str, Any]:
        return {"steps": self.steps}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Self:
        return cls(*params["steps"])

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.steps)

    @property
    def _transformers(self) -> tuple[Any, ...]:
        return self._tx

    @property
    def _final(self) -> Any:
        return self._last

    def __getitem__(self, i: int) -> Estimator:
        return self.steps[i]

    @property
    def classes_(self) -> list[Any]:
        return list(getattr(self._final, "classes_", []))

    # -- per record ---------------------------------------------------------------------------
    def _tx_one(self, x: dict[Any, Any]) -> dict[Any, Any]:
        for t in self._tx:
            x = t.transform_one(x)
        return x

    def learn_one(self, x: dict[Any, Any], y: Any = None, **kw: Any) -> None:
        """Update every step on one record."""
        for t in self._tx:
            t.learn_one(x)
            x = t.transform_one(x)
        final = self._last
        if final is not None:
            if y is None:
                final.learn_one(x, **kw)
            else:
                final.learn_one(x, y, **kw)

    def transform_one(self, x: dict[Any, Any]) -> dict[Any, Any]:
        return self._tx_one(x)

    def predict_one(self, x: dict[Any, Any]) -> Any:
        for t in self._tx:
            x = t.transform_one(x)
        return self._last.predict_one(x)

    def predict_proba_one(self, x: dict[Any, Any]) -> dict[Any, float]:
        return self._final.predict_proba_one(self._tx_one(x))  # type: ignore[no-any-return]

    def score_one(self, x: dict[Any, Any]) -> float:
        return float(self._final.score_one(self._tx_one(x)))

    # -- mini-batch ---------------------------------------------------------------------------
    def _tx_many(self, X: Cols) -> Cols:
        for t in self._transformers:
            X = t.transform_many(X)
        return X

    def learn_many(self, X: Any, y: Any = None, **kw: Any) -> None:
        """Update every step on one mini-batch."""
        Xc = as_cols(X)
        for t in self._transformers:
            t.learn_many(Xc)
            Xc = t.transform_many(Xc)
        final = self._final
        if final is not None:
            if y is None:
                final.learn_many(Xc, **kw)
            else:
                final.learn_many(Xc, y, **kw)

    def transform_many(self, X: Any) -> Cols:
        return self._tx_many(as_cols(X))

    def predict_many(self, X: Any) -> np.ndarray:
        return self._final.predict_many(self._tx_many(as_cols(X)))  # type: ignore[no-any-return]

    def predict_proba_many(self, X: Any) -> np.ndarray:
        return self._final.predict_proba_many(self._tx_many(as_cols(X)))  # type: ignore[no-any-return]

    def score_many(self, X: Any) -> np.ndarray:
        return self._final.score_many(self._tx_many(as_cols(X)))  # type: ignore[no-any-return]
