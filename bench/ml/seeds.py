"""Prequential accuracy of one model over several seeds, tideflow.ml and River side by side.

Single-seed comparisons of randomised models (bootstrap weights, random subspaces) can differ
by several points by chance; this reports the mean and standard deviation over seeds, per
record, on the data sets of ``run.py``.

Usage::

    python bench/ml/seeds.py --model hat --seeds 5 --datasets Agrawal+drift,Bananas
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import run as harness


def _models(name: str) -> tuple[Callable[[int], Any], Callable[[int], Any]]:
    from river import forest as rfo
    from river import tree as rtr

    from tideflow.ml import forest, tree

    if name == "hat":
        return (
            lambda s: tree.HoeffdingAdaptiveTreeClassifier(seed=s),
            lambda s: rtr.HoeffdingAdaptiveTreeClassifier(seed=s),
        )
    if name == "arf":
        return lambda s: forest.ARFClassifier(seed=s), lambda s: rfo.ARFClassifier(seed=s)
    msg = f"--model must be hat or arf, got {name!r}"
    raise SystemExit(msg)


def _accuracy(model: Any, data: harness.Data) -> float:
    preds, _ = harness.run_record(model, data)
    return 100.0 * float(np.mean([p == y for p, y in zip(preds, data.y.tolist(), strict=True)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hat")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n", type=int, default=20_000, help="records per synthetic stream")
    ap.add_argument("--datasets", default="", help="comma-separated data set names")
    args = ap.parse_args(argv)
    ours, river = _models(args.model)
    want = [d for d in args.datasets.split(",") if d]
    print("| data set | seeds | River mean (sd) | tideflow mean (sd) |")
    print("|---|---:|---:|---:|")
    for data in harness.datasets(args.n):
        if data.task != "clf" or (want and data.name not in want):
            continue
        seeds = range(1, args.seeds + 1)
        r = [_accuracy(river(s), data) for s in seeds]
        t = [_accuracy(ours(s), data) for s in seeds]
        print(
            f"| {data.name} | {args.seeds} | {np.mean(r):.2f} ({np.std(r):.2f}) "
            f"| {np.mean(t):.2f} ({np.std(t):.2f}) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
