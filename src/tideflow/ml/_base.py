"""Base classes of tideflow.ml: estimators, snapshots as plain data, save/load.

A model's *parameters* are its constructor arguments; its *state* is what it learned. Both are
plain data (dicts, lists, numbers, strings and NumPy arrays), never pickled objects, so a snapshot
can go into a pipeline checkpoint and a saved file can be loaded by another process safely.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import json
import os
from typing import Any, ClassVar, Self

import numpy as np

from tideflow._errors import ConfigError, StateError

__all__ = [
    "AnomalyDetector",
    "Classifier",
    "Clusterer",
    "Estimator",
    "Regressor",
    "Transformer",
    "from_snapshot",
    "load",
]

SNAPSHOT_FORMAT = "tideflow.ml.snapshot"
SNAPSHOT_FORMAT_VERSION = 1


def _check_choice(step: str, name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        msg = f"{step}: {name}={value!r} is not one of {list(choices)}; pick one of those"
        raise ConfigError(msg)


def _check_positive(step: str, name: str, value: float, *, strict: bool = True) -> None:
    ok = value > 0 if strict else value >= 0
    if not ok:
        kind = "> 0" if strict else ">= 0"
        msg = f"{step}: {name} must be {kind}, got {value!r}"
        raise ConfigError(msg)


class Estimator:
    """Base of every tideflow.ml model, transformer, optimizer and metric-like object.

    Parameters are read back from attributes named like the constructor arguments, so
    :meth:`clone` and :meth:`snapshot` work for every subclass without extra code. Subclasses
    store what they learn in ``_get_state`` / ``_set_state`` as plain data.
    """

    _STATE_VERSION: ClassVar[int] = 1
    #: Older state versions ``_set_state`` still reads (it tells them apart by their fields).
    _OLDER_STATE_VERSIONS: ClassVar[tuple[int, ...]] = ()

    # -- parameters -------------------------------------------------------------------------
    def _get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        params: dict[str, Any] = {}
        for name, p in sig.parameters.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            params[name] = getattr(self, name)
        return params

    def clone(self) -> Self:
        """Return a fresh, untrained copy with the same parameters.

        Examples
        --------
        >>> from tideflow.ml.linear_model import LogisticRegression
        >>> LogisticRegression(l2=0.1).clone().l2
        0.1
        """
        params = {k: _clone_param(v) for k, v in self._get_params().items()}
        return type(self)._from_params(params)

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Self:
        return cls(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({args})"

    # -- state ------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {}

    def _set_state(self, state: dict[str, Any]) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        """Return the model (parameters and learned state) as versioned plain data.

        The result holds only dicts, lists, numbers, strings, ``None`` and NumPy arrays; it is
        a deep copy, so further learning does not change it.

        Examples
        --------
        >>> from tideflow.ml.preprocessing import StandardScaler
        >>> s = StandardScaler()
        >>> s.learn_one({"a": 1.0})
        >>> snap = s.snapshot()
        >>> snap["class"], snap["format_version"]
        ('tideflow.ml._preprocessing:StandardScaler', 1)
        """
        cls = type(self)
        return {
            "format": SNAPSHOT_FORMAT,
            "format_version": SNAPSHOT_FORMAT_VERSION,
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "version": cls._STATE_VERSION,
            "params": {k: _encode_param(v) for k, v in self._get_params().items()},
            "state": copy.deepcopy(self._get_state()),
        }

    def restore(self, snapshot: dict[str, Any]) -> Self:
        """Replace this model's parameters and state with those of ``snapshot``.

        Examples
        --------
        >>> from tideflow.ml.preprocessing import StandardScaler
        >>> a, b = StandardScaler(), StandardScaler()
        >>> a.learn_one({"x": 2.0}); a.learn_one({"x": 4.0})
        >>> b.restore(a.snapshot()).transform_one({"x": 5.0})
        {'x': 2.0}
        """
        other = from_snapshot(snapshot)
        if type(other) is not type(self):
            msg = (
                f"cannot restore a {type(self).__name__} from a snapshot of "
                f"{type(other).__name__}; use tideflow.ml.from_snapshot() instead"
            )
            raise StateError(msg)
        self.__dict__.clear()
        self.__dict__.update(other.__dict__)
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the snapshot to ``path`` as a NumPy ``.npz`` file with JSON metadata (no pickle).

        Examples
        --------
        >>> import tempfile, os
        >>> from tideflow.ml.preprocessing import StandardScaler
        >>> from tideflow.ml import load
        >>> s = StandardScaler(); s.learn_one({"x": 1.0}); s.learn_one({"x": 3.0})
        >>> p = os.path.join(tempfile.mkdtemp(), "scaler.npz")
        >>> s.save(p)
        >>> load(p).transform_one({"x": 3.0})
        {'x': 1.0}
        """
        arrays: dict[str, np.ndarray] = {}
        meta = _to_json(self.snapshot(), arrays)
        blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, __meta__=blob, **arrays)  # type: ignore[arg-type]
        with open(path, "wb") as fh:
            fh.write(buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Load a model written by :meth:`save`; the class must match ``cls``."""
        model = load(path)
        if cls is not Estimator and not isinstance(model, cls):
            msg = f"{os.fspath(path)} holds a {type(model).__name__}, not a {cls.__name__}"
            raise StateError(msg)
        return model  # type: ignore[no-any-return]

    # -- composition ------------------------------------------------------------------------
    def __or__(self, other: Estimator) -> Any:
        from tideflow.ml._compose import Pipeline

        return Pipeline(self, other)


class Transformer(Estimator):
    """An unsupervised feature transformer (``learn_one(x)`` then ``transform_one(x)``)."""

    def learn_one(self, x: dict[Any, Any], y: Any = None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform_one(self, x: dict[Any, Any]) -> dict[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    def learn_many(self, X: Any, y: Any = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def transform_many(self, X: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


class Classifier(Estimator):
    """A supervised classifier."""

    def predict_one(self, x: dict[Any, Any]) -> Any:
        """Return the most likely label for ``x`` (``None`` before any learning)."""
        proba = self.predict_proba_one(x)
        if not proba:
            return None
        return max(proba, key=proba.__getitem__)

    def predict_proba_one(self, x: dict[Any, Any]) -> dict[Any, float]:  # pragma: no cover
        raise NotImplementedError


class Regressor(Estimator):
    """A supervised regressor."""


class AnomalyDetector(Estimator):
    """An unsupervised anomaly detector: ``score_one(x)`` is high for anomalies."""


class Clusterer(Estimator):
    """An unsupervised clusterer: ``predict_one(x)`` returns a cluster number."""


def _clone_param(v: Any) -> Any:
    if isinstance(v, Estimator):
        return v.clone()
    if isinstance(v, (list, tuple)):
        return type(v)(_clone_param(i) for i in v)
    return copy.deepcopy(v)


# -- snapshot encoding ----------------------------------------------------------------------
def _encode_param(v: Any) -> Any:
    if isinstance(v, Estimator):
        return {"__estimator__": v.snapshot()}
    if isinstance(v, (list, tuple)):
        return [_encode_param(i) for i in v]
    if isinstance(v, dict):
        return {"__items__": [[k, _encode_param(i)] for k, i in v.items()]}
    return copy.deepcopy(v)


def _decode_param(v: Any) -> Any:
    if isinstance(v, dict):
        if "__estimator__" in v:
            return from_snapshot(v["__estimator__"])
        if "__items__" in v:
            return {k: _decode_param(i) for k, i in v["__items__"]}
        return {k: _decode_param(i) for k, i in v.items()}
    if isinstance(v, list):
        return [_decode_param(i) for i in v]
    return v


def _resolve_class(path: str) -> type[Estimator]:
    module, _, qualname = path.partition(":")
    if not module.startswith("tideflow.ml") or not qualname:
        msg = f"snapshot names class {path!r}, which is not a tideflow.ml model"
        raise StateError(msg)
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        msg = f"snapshot names class {path!r}, which does not exist in this tideflow version"
        raise StateError(msg) from e
    if not (isinstance(obj, type) and issubclass(obj, Estimator)):
        msg = f"snapshot names {path!r}, which is not a tideflow.ml estimator"
        raise StateError(msg)
    return obj


def from_snapshot(snapshot: dict[str, Any]) -> Any:
    """Build a model from a :meth:`Estimator.snapshot` result.

    Examples
    --------
    >>> from tideflow.ml.preprocessing import StandardScaler
    >>> from tideflow.ml import from_snapshot
    >>> type(from_snapshot(StandardScaler().snapshot())).__name__
    'StandardScaler'
    """
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        msg = "not a tideflow.ml snapshot (missing format marker)"
        raise StateError(msg)
    if snapshot.get("format_version") != SNAPSHOT_FORMAT_VERSION:
        msg = f"snapshot format version {snapshot.get('format_version')} is not supported"
        raise StateError(msg)
    cls = _resolve_class(snapshot["class"])
    readable = (cls._STATE_VERSION, *cls._OLDER_STATE_VERSIONS)
    if snapshot.get("version") not in readable:
        msg = (
            f"snapshot of {cls.__name__} has state version {snapshot.get('version')}, this "
            f"tideflow reads versions {', '.join(map(str, sorted(readable)))}"
        )
        raise StateError(msg)
    params = {k: _decode_param(v) for k, v in snapshot["params"].items()}
    obj = cls._from_params(params)
    obj._set_state(copy.deepcopy(snapshot["state"]))
    return obj


def _to_json(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            msg = "object arrays cannot be saved without pickle; store lists in state instead"
            raise StateError(msg)
        key = f"a{len(arrays)}"
        arrays[key] = v
        return {"__nd__": key}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: _to_json(i, arrays) for k, i in v.items()}
        return {"__items__": [[_to_json(k, arrays), _to_json(i, arrays)] for k, i in v.items()]}
    if isinstance(v, (list, tuple)):
        return [_to_json(i, arrays) for i in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    msg = f"cannot save a value of type {type(v).__name__} in a model file"
    raise StateError(msg)


def _from_json(v: Any, arrays: Any) -> Any:
    if isinstance(v, dict):
        if "__nd__" in v and len(v) == 1:
            return np.array(arrays[v["__nd__"]])
        if "__items__" in v and len(v) == 1:
            return {
                _hashable(_from_json(k, arrays)): _from_json(i, arrays) for k, i in v["__items__"]
            }
        return {k: _from_json(i, arrays) for k, i in v.items()}
    if isinstance(v, list):
        return [_from_json(i, arrays) for i in v]
    return v


def _hashable(k: Any) -> Any:
    return tuple(_hashable(i) for i in k) if isinstance(k, list) else k


def pack(value: Any) -> bytes:
    """Encode plain data with NumPy arrays (a snapshot, or lists/dicts of them) as ``.npz`` bytes.

    The same safe format as :meth:`Estimator.save` (JSON metadata plus raw arrays, no pickle),
    without compression: this is what pipeline checkpoints store for a model.
    """
    arrays: dict[str, np.ndarray] = {}
    meta = _to_json(value, arrays)
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, __meta__=blob, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack(data: bytes) -> Any:
    """Decode what :func:`pack` wrote (arrays are read with ``allow_pickle=False``)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return _from_json(json.loads(bytes(npz["__meta__"]).decode()), npz)
    except (OSError, ValueError, KeyError) as e:
        msg = f"cannot decode a tideflow.ml model state: {e}"
        raise StateError(msg) from e


def load(path: str | os.PathLike[str]) -> Any:
    """Load a model saved with :meth:`Estimator.save` (no pickle is ever read)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            snap = _from_json(meta, data)
    except (OSError, ValueError, KeyError) as e:
        msg = f"cannot read a tideflow.ml model from {os.fspath(path)}: {e}"
        raise StateError(msg) from e
    return from_snapshot(snap)
