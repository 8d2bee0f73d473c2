"""Drift detectors: ADWIN (Bifet and Gavalda, 2007) and Page-Hinkley (Page, 1954)."""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import numpy as np

from tideflow.ml._base import Estimator, _check_choice, _check_positive

__all__ = ["ADWIN", "PageHinkley"]


class _Detector(Estimator):
    drift_detected: bool = False

    def update(self, x: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def update_many(self, values: Any) -> np.ndarray:
        """Feed values in order; return the positions at which a drift was detected."""
        hits = []
        for i, v in enumerate(np.asarray(values, dtype=float).tolist()):
            self.update(v)
            if self.drift_detected:
                hits.append(i)
        return np.asarray(hits, dtype=np.int64)

    def _feed(self, values: list[float], stop: bool = False) -> tuple[list[int], list[bool]]:
        """Feed values in order; the detection positions (and for each, ``False``: ADWIN
        tells whether its estimation rose). ``stop``: return after the first detection."""
        hits: list[int] = []
        for i, v in enumerate(values):
            self.update(v)
            if self.drift_detected:
                hits.append(i)
                if stop:
                    break
        return hits, [False] * len(hits)


class ADWIN(_Detector):
    """ADaptive WINdowing: keep the longest recent window whose two halves have equal means.

    The window is stored as an exponential histogram (at most ``max_buckets`` buckets per size
    2^i, each holding a total and a variance), and every ``clock`` updates every bucket
    boundary is tested: when the means of the older and newer parts differ by more than
    ``sqrt(2 m v ln(2/d')) + 2/(3m) ln(2/d')`` (``m`` the harmonic mean of the two lengths,
    ``v`` the window variance, ``d' = delta / ln(width)``), the oldest bucket is dropped and a
    drift is flagged.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = ADWIN()
    >>> data = np.concatenate([rng.normal(0, 0.1, 1000), rng.normal(1, 0.1, 1000)])
    >>> hits = det.update_many(data)
    >>> 1000 <= int(hits[0]) < 1100
    True
    """

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        _check_positive("ADWIN", "delta", delta)
        _check_positive("ADWIN", "clock", clock)
        _check_positive("ADWIN", "max_buckets", max_buckets)
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._reset()

    def _reset(self) -> None:
        self._rows: list[list[list[float]]] = [[]]  # rows[i]: buckets of size 2^i, oldest first
        self._width = 0
        self._total = 0.0
        self._var = 0.0  # sum of squared deviations of the window
        self._t = 0
        self.drift_detected = False

    def clone(self) -> Self:
        """A fresh detector with the same settings (cheaper than the generic clone: the
        forest replaces its detectors often)."""
        return type(self)(
            self.delta, self.clock, self.max_buckets, self.min_window_length, self.grace_period
        )

    @property
    def width(self) -> int:
        return self._width

    @property
    def estimation(self) -> float:
        return self._total / self._width if self._width else 0.0

    @property
    def variance(self) -> float:
        return self._var / self._width if self._width else 0.0

    @property
    def total(self) -> float:
        return self._total

    def update(self, x: float) -> None:
        """Add one value; ``drift_detected`` tells whether the window was cut."""
        self.drift_detected = False
        self._t += 1
        w = self._width
        if w > 0:
            d = x - self._total / w
            self._var += w * d * d / (w + 1)
        self._width = w + 1
        self._total += x
        rows = self._rows
        rows[0].append([x, 0.0])
        if len(rows[0]) > self.max_buckets:
            _merge_rows(rows, self.max_buckets)
        if self._t % self.clock == 0 and self._width > self.grace_period:
            while self._cut():
                self.drift_detected = True

    def update_many(self, values: Any) -> np.ndarray:
        """Feed values in order; return the positions at which a drift was detected.

        The same steps as :meth:`update` per value (identical state and detections), in one
        loop on Python floats.
        """
        return np.asarray(self._feed(np.asarray(values, dtype=float).tolist())[0], dtype=np.int64)

    def _feed(self, values: list[float], stop: bool = False) -> tuple[list[int], list[bool]]:
        """:meth:`update` for each value in order; the detection positions and, for each,
        whether the estimation rose with that value. ``stop``: return after the first
        detection (the rest of ``values`` is not consumed)."""
        hits: list[int] = []
        rises: list[bool] = []
        rows = self._rows
        row0 = rows[0]
        mb, clock, grace = self.max_buckets, self.clock, self.grace_period
        w, total, var, t = self._width, self._total, self._var, self._t
        self.drift_detected = False
        for j, x in enumerate(values):
            tb, wb = total, w
            t += 1
            if w > 0:
                d = x - total / w
                var += w * d * d / (w + 1)
            w += 1
            total += x
            row0.append([x, 0.0])
            if len(row0) > mb:
                # _merge_rows' first step inline (row 0 buckets have variance 0.0, size 1)
                t1, t2 = row0[0][0], row0[1][0]
                du = t1 - t2
                del row0[:2]
                if len(rows) == 1:
                    rows.append([])
                r1 = rows[1]
                r1.append([t1 + t2, 0.0 + 0.0 + du * du / 2])
                if len(r1) > mb:
                    _merge_rows(rows, mb, 1)
            if t % clock == 0 and w > grace:
                self._width, self._total, self._var, self._t = w, total, var, t
                cut = False
                while self._cut():
                    cut = True
                if cut:
                    rows = self._rows
                    row0 = rows[0]
                    w, total, var, t = self._width, self._total, self._var, self._t
                    hits.append(j)
                    rises.append((total / w if w else 0.0) > (tb / wb if wb else 0.0))
                    if stop:
                        self.drift_detected = True
                        return hits, rises
        self._width, self._total, self._var, self._t = w, total, var, t
        self.drift_detected = bool(hits) and hits[-1] == len(values) - 1
        return hits, rises

    def _cut(self) -> bool:
        if self._width < 2 * self.min_window_length:
            return False
        W, total = self._width, self._total
        var_w = self._var / W
        log_term = math.log(2.0 * math.log(W) / self.delta) if W > 1 else math.log(2.0 / self.delta)
        n0, s0 = 0, 0.0
        rows = self._rows
        mwl = self.min_window_length
        sqrt = math.sqrt
        for i in range(len(rows) - 1, -1, -1):
            size = 1 << i
            for b in rows[i]:
                n0 += size
                s0 += b[0]
                n1 = W - n0
                if n1 < mwl:
                    return False
                if n0 < mwl:
                    continue
                diff = abs(s0 / n0 - (total - s0) / n1)
                m = 1.0 / (1.0 / n0 + 1.0 / n1)
                small = 2.0 / (3.0 * m) * log_term
                if diff <= small:  # eps = sqrt(...) / m + small >= small: no cut here
                    continue
                if diff > sqrt(2.0 * m * var_w * log_term) * (1.0 / m) + small:
                    self._drop_oldest()
                    return True
        return False

    def _drop_oldest(self) -> None:
        rows = self._rows
        top = len(rows) - 1
        while top > 0 and not rows[top]:
            rows.pop()
            top -= 1
        t, v = rows[top].pop(0)
        n = 1 << top
        W = self._width
        self._width = W - n
        if self._width <= 0:
            self._reset()
            return
        u_old = t / n
        u_rest = (self._total - t) / self._width
        du = u_old - u_rest
        self._var -= v + n * self._width * (du * du) / W
        self._var = max(self._var, 0.0)
        self._total -= t

    def _get_state(self) -> dict[str, Any]:
        return {
            "rows": [[list(b) for b in r] for r in self._rows],
            "width": self._width,
            "total": self._total,
            "var": self._var,
            "t": self._t,
            "drift": self.drift_detected,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self._rows = [[[float(b[0]), float(b[1])] for b in r] for r in state["rows"]] or [[]]
        self._width, self._total = int(state["width"]), float(state["total"])
        self._var, self._t = float(state["var"]), int(state["t"])
        self.drift_detected = bool(state["drift"])


def _merge_rows(rows: list[list[list[float]]], max_buckets: int, start: int = 0) -> None:
    """Merge the two oldest buckets of each row holding more than ``max_buckets`` upwards
    (from row ``start``)."""
    i = start
    r = rows[start]
    while len(r) > max_buckets:
        (t1, v1), (t2, v2) = r[0], r[1]
        n = 1 << i
        du = t1 / n - t2 / n
        merged = [t1 + t2, v1 + v2 + n * n * (du * du) / (2 * n)]
        del r[:2]
        i += 1
        if i == len(rows):
            rows.append([])
        r = rows[i]
        r.append(merged)


class PageHinkley(_Detector):
    """Page-Hinkley test for a change in the mean.

    Examples
    --------
    >>> det = PageHinkley()
    >>> hits = det.update_many([0.0] * 500 + [5.0] * 100)
    >>> 500 <= int(hits[0]) < 520
    True
    """

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: Literal["up", "down", "both"] = "both",
    ) -> None:
        _check_choice("PageHinkley", "mode", mode, ("up", "down", "both"))
        _check_positive("PageHinkley", "threshold", threshold)
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._up = 0.0
        self._up_min = 0.0
        self._down = 0.0
        self._down_max = 0.0
        self.drift_detected = False

    def update(self, x: float) -> None:
        """Add one value; ``drift_detected`` tells whether the mean changed."""
        if self.drift_detected:
            self._reset()
        self._n += 1
        self._mean += (x - self._mean) / self._n
        self._up = self.alpha * self._up + (x - self._mean - self.delta)
        self._down = self.alpha * self._down + (x - self._mean + self.delta)
        self._up_min = min(self._up_min, self._up)
        self._down_max = max(self._down_max, self._down)
        if self._n < self.min_instances:
            return
        up = self._up - self._up_min > self.threshold
        down = self._down_max - self._down > self.threshold
        if (self.mode in ("up", "both") and up) or (self.mode in ("down", "both") and down):
            self.drift_detected = True

    def _get_state(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("_n", "_mean", "_up", "_up_min", "_down", "_down_max", "drift_detected")
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
