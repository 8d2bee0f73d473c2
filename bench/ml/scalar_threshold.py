"""Per-record speed of the linear models' two weight forms against the number of features.

The per-record path of a single-output linear model runs on Python floats up to
``tideflow.ml._linear._SCALAR_MAX_FEATURES`` features (a multiclass one up to
``_SCALAR_MAX_CELLS`` weights) and on NumPy arrays above. This script times ``predict_one`` +
``learn_one`` on random records with ``d`` features in both forms (forcing one by setting the
thresholds), to choose the thresholds::

    PYTHONPATH=src python bench/ml/scalar_threshold.py --dims 2,4,8,16,32,64,128
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from tideflow.ml import _linear
from tideflow.ml import linear_model as lm


def _rate(factory: Any, rows: list[tuple[dict[str, float], Any]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        model = factory()
        t0 = time.perf_counter()
        for x, y in rows:
            model.predict_one(x)
            model.learn_one(x, y)
        best = min(best, time.perf_counter() - t0)
    return len(rows) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", default="2,4,8,16,24,32,48,64,96,128")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    saved = _linear._SCALAR_MAX_FEATURES, _linear._SCALAR_MAX_CELLS
    print("| features | model | list form rec/s | array form rec/s | list / array |")
    print("|---:|---|---:|---:|---:|")
    for d in [int(v) for v in args.dims.split(",")]:
        X = rng.normal(size=(args.n, d))
        w = rng.normal(size=d)
        names = [f"f{j}" for j in range(d)]
        xs = [dict(zip(names, r, strict=True)) for r in X.tolist()]
        cls_rows = list(zip(xs, (X @ w > 0).tolist(), strict=True))
        reg_rows = list(zip(xs, (X @ w).tolist(), strict=True))
        three = (X @ rng.normal(size=(d, 3))).argmax(axis=1).tolist()
        multi_rows = list(zip(xs, three, strict=True))
        for name, factory, rows in (
            ("LogisticRegression", lm.LogisticRegression, cls_rows),
            ("LinearRegression", lm.LinearRegression, reg_rows),
            ("SoftmaxRegression, 3 classes", lm.SoftmaxRegression, multi_rows),
        ):
            try:
                _linear._SCALAR_MAX_FEATURES = _linear._SCALAR_MAX_CELLS = 1 << 30
                fast = _rate(factory, rows, args.repeat)
                _linear._SCALAR_MAX_FEATURES = _linear._SCALAR_MAX_CELLS = -1
                slow = _rate(factory, rows, args.repeat)
            finally:
                _linear._SCALAR_MAX_FEATURES, _linear._SCALAR_MAX_CELLS = saved
            print(f"| {d} | {name} | {fast:,.0f} | {slow:,.0f} | {fast / slow:.2f} |")


if __name__ == "__main__":
    main()
