"""Seeded synthetic streams, several with concept drift: SEA, Agrawal, Hyperplane, RandomRBF,
Friedman, an anomaly stream, and ConceptDriftStream to join two concepts.

Each stream is generated vectorized: ``arrays(n)`` returns the next ``n`` rows as NumPy arrays,
``take(n)`` the same rows as ``(dict, label)`` pairs, and iterating yields pairs forever.
Written from the published descriptions (Street and Kim 2001; Agrawal et al. 1993; Hulten et
al. 2001; Bifet et al. 2009; Friedman 1991).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np

from tideflow._errors import ConfigError

__all__ = [
    "SEA",
    "Agrawal",
    "Anomalies",
    "ConceptDriftStream",
    "Friedman",
    "Hyperplane",
    "RandomRBF",
]


class SyntheticStream:
    """Base: subclasses implement ``_gen(n) -> (X, y)`` and set ``feature_names``."""

    feature_names: list[Hashable]
    task: str = "binary"

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` rows as ``(X, y)`` arrays."""
        return self._gen(n)

    def take(self, n: int) -> list[tuple[dict[Hashable, Any], Any]]:
        """The next ``n`` rows as ``(x, y)`` pairs with ``x`` a dict."""
        X, y = self._gen(n)
        names = self.feature_names
        return [
            (dict(zip(names, r, strict=True)), t)
            for r, t in zip(X.tolist(), y.tolist(), strict=True)
        ]

    def __iter__(self) -> Iterator[tuple[dict[Hashable, Any], Any]]:
        while True:
            yield from self.take(1024)


class SEA(SyntheticStream):
    """SEA concepts: three uniform features in [0, 10]; ``y = x0 + x1 <= theta``.

    ``variant`` 0-3 picks theta 8, 9, 7, 9.5; ``noise`` flips that share of labels.

    Examples
    --------
    >>> x, y = SEA(seed=42).take(1)[0]
    >>> sorted(x), type(y).__name__
    ([0, 1, 2], 'bool')
    """

    THETAS = (8.0, 9.0, 7.0, 9.5)

    def __init__(self, variant: int = 0, noise: float = 0.0, seed: int | None = None) -> None:
        if variant not in range(4):
            msg = f"SEA: variant must be 0, 1, 2 or 3, got {variant!r}"
            raise ConfigError(msg)
        self.variant, self.noise, self.seed = variant, noise, seed
        self._rng = np.random.default_rng(seed)
        self.feature_names = [0, 1, 2]

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        X = self._rng.uniform(0, 10, (n, 3))
        y = X[:, 0] + X[:, 1] <= self.THETAS[self.variant]
        flip = self._rng.random(n) < self.noise
        return X, y ^ flip


class Agrawal(SyntheticStream):
    """Agrawal et al.'s loan-applicant generator with classification functions 0-9.

    Nine features (salary, commission, age, elevel, car, zipcode, hvalue, hyears, loan); the
    integer-coded ones (elevel, car, zipcode) are categorical. ``perturbation`` adds uniform
    noise to the numeric features, as a share of their range.

    Examples
    --------
    >>> x, y = Agrawal(classification_function=1, seed=0).take(1)[0]
    >>> len(x), y in (0, 1)
    (9, True)
    """

    def __init__(
        self,
        classification_function: int = 0,
        seed: int | None = None,
        balance_classes: bool = False,
        perturbation: float = 0.0,
    ) -> None:
        if classification_function not in range(10):
            msg = f"Agrawal: classification_function must be 0-9, got {classification_function!r}"
            raise ConfigError(msg)
        self.classification_function = classification_function
        self.seed = seed
        self.balance_classes = balance_classes
        self.perturbation = perturbation
        self._rng = np.random.default_rng(seed)
        self.feature_names = [
            "salary",
            "commission",
            "age",
            "elevel",
            "car",
            "zipcode",
            "hvalue",
            "hyears",
            "loan",
        ]

    @staticmethod
    def _label(f: int, c: dict[str, np.ndarray]) -> np.ndarray:
        age, sal, el, loan = c["age"], c["salary"], c["elevel"], c["loan"]
        young, mid, old = age < 40, (age >= 40) & (age < 60), age >= 60

        def rng(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
            return (v >= lo) & (v <= hi)

        if f == 0:
            return young | old
        if f == 1:
            return (  # type: ignore[no-any-return]
                (young & rng(sal, 50e3, 100e3))
                | (mid & rng(sal, 75e3, 125e3))
                | (old & rng(sal, 25e3, 75e3))
            )
        if f == 2:
            return (young & rng(el, 0, 1)) | (mid & rng(el, 1, 3)) | (old & rng(el, 2, 4))  # type: ignore[no-any-return]
        if f == 3:
            return (
                (young & np.where(rng(el, 0, 1), rng(sal, 25e3, 75e3), rng(sal, 50e3, 100e3)))
                | (mid & np.where(rng(el, 1, 3), rng(sal, 50e3, 100e3), rng(sal, 75e3, 125e3)))
                | (old & np.where(rng(el, 2, 4), rng(sal, 50e3, 100e3), rng(sal, 25e3, 75e3)))
            )
        if f == 4:
            return (
                (
                    young
                    & np.where(
                        rng(sal, 50e3, 100e3), rng(loan, 100e3, 300e3), rng(loan, 200e3, 400e3)
                    )
                )
                | (
                    mid
                    & np.where(
                        rng(sal, 75e3, 125e3), rng(loan, 200e3, 400e3), rng(loan, 300e3, 500e3)
                    )
                )
                | (
                    old
                    & np.where(
                        rng(sal, 25e3, 75e3), rng(loan, 300e3, 500e3), rng(loan, 100e3, 300e3)
                    )
                )
            )
        tot = sal + c["commission"]
        if f == 5:
            return (  # type: ignore[no-any-return]
                (young & rng(tot, 50e3, 100e3))
                | (mid & rng(tot, 75e3, 125e3))
                | (old & rng(tot, 25e3, 75e3))
            )
        equity = 0.1 * c["hvalue"] * np.maximum(c["hyears"] - 20, 0)
        disp = 0.67 * tot - 5000 * el
        if f == 6:
            return disp - 20e3 > 0  # type: ignore[no-any-return]
        if f == 7:
            return disp - 0.2 * loan - 10e3 > 0  # type: ignore[no-any-return]
        if f == 8:
            return disp + 0.2 * equity - 10e3 - 0.2 * loan > 0  # type: ignore[no-any-return]
        return 0.67 * tot - 5000 * el - 0.2 * loan + 0.2 * equity - 15e3 * (age < 35) - 10e3 > 0  # type: ignore[no-any-return]

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = self._rng
        sal = r.uniform(20e3, 150e3, n)
        com = np.where(sal >= 75e3, 0.0, r.uniform(10e3, 75e3, n))
        zipc = r.integers(0, 9, n).astype(float)
        c = {
            "salary": sal,
            "commission": com,
            "age": r.integers(20, 81, n).astype(float),
            "elevel": r.integers(0, 5, n).astype(float),
            "car": r.integers(1, 21, n).astype(float),
            "zipcode": zipc,
            "hvalue": (9 - zipc) * 100e3 * r.uniform(0.5, 1.5, n),
            "hyears": r.integers(1, 31, n).astype(float),
            "loan": r.uniform(0, 500e3, n),
        }
        y = self._label(self.classification_function, c).astype(np.int64)
        if self.perturbation > 0:
            for k, (lo, hi) in {
                "salary": (20e3, 150e3),
                "age": (20, 80),
                "loan": (0, 500e3),
                "hvalue": (0, 1.35e6),
                "hyears": (1, 30),
            }.items():
                c[k] = c[k] + r.uniform(-1, 1, n) * self.perturbation * (hi - lo)
        return np.column_stack([c[str(k)] for k in self.feature_names]), y

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.balance_classes:
            return self._draw(n)
        X, y = self._draw(4 * n + 64)
        i0, i1 = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        k = min(len(i0), len(i1), (n + 1) // 2)
        idx = np.empty(2 * k, dtype=np.int64)
        idx[0::2], idx[1::2] = i0[:k], i1[:k]
        idx = idx[:n]
        return X[idx], y[idx]


class Hyperplane(SyntheticStream):
    """Rotating hyperplane: ``y = w . x >= sum(w) / 2`` with ``n_drift_features`` weights moving by
    ``mag_change`` per record (direction reversed with probability ``sigma``).

    Examples
    --------
    >>> X, y = Hyperplane(seed=1, mag_change=0.001).arrays(100)
    >>> X.shape, set(y.tolist()) <= {0, 1}
    ((100, 10), True)
    """

    def __init__(
        self,
        seed: int | None = None,
        n_features: int = 10,
        n_drift_features: int = 2,
        mag_change: float = 0.0,
        noise_percentage: float = 0.05,
        sigma: float = 0.1,
    ) -> None:
        if not 0 <= n_drift_features <= n_features:
            msg = "Hyperplane: n_drift_features must be between 0 and n_features"
            raise ConfigError(msg)
        self.seed, self.n_features, self.n_drift_features = seed, n_features, n_drift_features
        self.mag_change, self.noise_percentage, self.sigma = mag_change, noise_percentage, sigma
        self._rng = np.random.default_rng(seed)
        self._w = self._rng.random(n_features)
        self._dir = np.where(self._rng.random(n_features) < 0.5, -1.0, 1.0)
        self.feature_names = list(range(n_features))

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = self._rng
        X = r.random((n, self.n_features))
        W = np.broadcast_to(self._w, (n, self.n_features)).copy()
        k = self.n_drift_features
        if k and self.mag_change:
            flips = np.where(r.random((n, k)) < self.sigma, -1.0, 1.0)
            dirs = self._dir[:k] * np.cumprod(flips, axis=0)
            W[:, :k] = self._w[:k] + self.mag_change * np.cumsum(dirs, axis=0)
            self._w[:k] = W[-1, :k]
            self._dir[:k] = dirs[-1]
        y = ((X * W).sum(axis=1) >= 0.5 * W.sum(axis=1)).astype(np.int64)
        flip = r.random(n) < self.noise_percentage
        return X, np.where(flip, 1 - y, y)


class RandomRBF(SyntheticStream):
    """Random radial basis functions; ``change_speed > 0`` moves ``n_drift_centroids`` centroids.

    Examples
    --------
    >>> X, y = RandomRBF(seed_model=1, seed_sample=2, change_speed=0.001).arrays(50)
    >>> X.shape
    (50, 10)
    """

    def __init__(
        self,
        seed_model: int | None = None,
        seed_sample: int | None = None,
        n_classes: int = 2,
        n_features: int = 10,
        n_centroids: int = 50,
        change_speed: float = 0.0,
        n_drift_centroids: int = 50,
    ) -> None:
        self.seed_model, self.seed_sample = seed_model, seed_sample
        self.n_classes, self.n_features, self.n_centroids = n_classes, n_features, n_centroids
        self.change_speed, self.n_drift_centroids = (
            change_speed,
            min(n_drift_centroids, n_centroids),
        )
        m = np.random.default_rng(seed_model)
        self._c = m.random((n_centroids, n_features))
        self._cls = m.integers(0, n_classes, n_centroids)
        self._std = m.random(n_centroids)
        wts = m.random(n_centroids)
        self._p = wts / wts.sum()
        v = m.normal(size=(n_centroids, n_features))
        self._v = v / np.linalg.norm(v, axis=1, keepdims=True)
        self._t = 0
        self._rng = np.random.default_rng(seed_sample)
        self.feature_names = list(range(n_features))
        self.task = "binary" if n_classes == 2 else "multiclass"

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = self._rng
        k = r.choice(self.n_centroids, n, p=self._p)
        d = r.normal(size=(n, self.n_features))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        mag = r.normal(size=n) * self._std[k]
        C = self._c[k]
        if self.change_speed:
            t = self._t + np.arange(1, n + 1)
            moving = k < self.n_drift_centroids
            pos = self._c[k] + self._v[k] * (self.change_speed * t)[:, None]
            tri = np.abs(np.mod(pos, 2.0) - 0.0)  # reflect at 0 and 1: triangle wave
            pos = np.where(tri > 1.0, 2.0 - tri, tri)
            C = np.where(moving[:, None], pos, C)
            self._t += n
        return C + d * mag[:, None], self._cls[k].astype(np.int64)


class Friedman(SyntheticStream):
    """Friedman #1 regression: ``10 sin(pi x0 x1) + 20 (x2 - .5)^2 + 10 x3 + 5 x4 + N(0, 1)``.

    ``drift_at`` lists record counts at which the roles of the five relevant features are
    permuted (abrupt global drift).

    Examples
    --------
    >>> X, y = Friedman(seed=0).arrays(5)
    >>> X.shape, y.dtype.kind
    ((5, 10), 'f')
    """

    task = "regression"

    def __init__(self, seed: int | None = None, drift_at: tuple[int, ...] = ()) -> None:
        self.seed, self.drift_at = seed, tuple(drift_at)
        self._rng = np.random.default_rng(seed)
        self._t = 0
        perm = np.random.default_rng(None if seed is None else seed + 1)
        self._perms = [np.arange(10)] + [
            np.concatenate([perm.permutation(10)[:5], np.arange(5, 10)]) for _ in self.drift_at
        ]
        self.feature_names = list(range(10))

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        X = self._rng.random((n, 10))
        t = self._t + np.arange(n)
        era = np.searchsorted(np.asarray(self.drift_at, dtype=np.int64), t, side="right")
        y = np.empty(n)
        for e in np.unique(era).tolist():
            m = era == e
            p = self._perms[e]
            Z = X[m][:, p]
            y[m] = (
                10 * np.sin(np.pi * Z[:, 0] * Z[:, 1])
                + 20 * (Z[:, 2] - 0.5) ** 2
                + 10 * Z[:, 3]
                + 5 * Z[:, 4]
            )
        self._t += n
        return X, y + self._rng.normal(size=n)


class Anomalies(SyntheticStream):
    """Normal points from a few Gaussian blobs in [0, 1]^d, with ``anomaly_rate`` uniform
    outliers; ``y`` is True for an anomaly.

    Examples
    --------
    >>> X, y = Anomalies(seed=0).arrays(1000)
    >>> 0 < int(y.sum()) < 50
    True
    """

    def __init__(
        self, n_features: int = 5, anomaly_rate: float = 0.01, seed: int | None = None
    ) -> None:
        self.n_features, self.anomaly_rate, self.seed = n_features, anomaly_rate, seed
        self._rng = np.random.default_rng(seed)
        self._centers = self._rng.uniform(0.3, 0.7, (3, n_features))
        self.feature_names = list(range(n_features))

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        r = self._rng
        k = r.integers(0, 3, n)
        X = np.clip(self._centers[k] + r.normal(0, 0.04, (n, self.n_features)), 0, 1)
        y = r.random(n) < self.anomaly_rate
        U = r.random((n, self.n_features))
        U = np.where(U < 0.5, U * 0.4, 0.6 + (U - 0.5) * 0.8)  # far from the blobs
        X[y] = U[y]
        return X, y


class ConceptDriftStream(SyntheticStream):
    """Switch from ``stream`` to ``drift_stream`` around ``position`` over ``width`` records.

    Record ``t`` comes from the new concept with probability ``1 / (1 + exp(-4 (t - position) /
    width))`` (Bifet et al., 2009).

    Examples
    --------
    >>> s = ConceptDriftStream(SEA(variant=0, seed=1), SEA(variant=3, seed=2), position=10, width=2)
    >>> len(s.take(20))
    20
    """

    def __init__(
        self,
        stream: SyntheticStream,
        drift_stream: SyntheticStream,
        position: int = 5000,
        width: int = 1000,
        seed: int | None = None,
    ) -> None:
        self.stream, self.drift_stream = stream, drift_stream
        self.position, self.width, self.seed = position, max(width, 1), seed
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self.feature_names = stream.feature_names
        self.task = stream.task

    def _gen(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        X0, y0 = self.stream.arrays(n)
        X1, y1 = self.drift_stream.arrays(n)
        t = self._t + np.arange(n)
        z = np.clip(-4.0 * (t - self.position) / self.width, -500, 500)
        new = self._rng.random(n) < 1.0 / (1.0 + np.exp(z))
        self._t += n
        return np.where(new[:, None], X1, X0), np.where(new, y1, y0)
