"""``KeyIndex``: dense ids of key rows (a hash cache in front of a dict) against a reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow.runtime._keyed import KeyIndex

KEY = st.tuples(st.none() | st.sampled_from(["a", "b", "c", "dd"]), st.none() | st.integers(-3, 3))


class _Colliding(KeyIndex):
    """Hashes with only four values: most keys share their hash with another key."""

    @staticmethod
    def _hash(sel: pl.DataFrame) -> np.ndarray:
        return KeyIndex._hash(sel) % np.uint64(4)


def _frame(rows: list[tuple[Any, Any]], typed: bool) -> pl.DataFrame:
    if typed:
        return pl.DataFrame(rows, schema={"s": pl.String, "i": pl.Int64}, orient="row")
    # without a schema an all-null column is of type Null, an integer column may be Int64
    return pl.DataFrame({"s": [r[0] for r in rows], "i": [r[1] for r in rows]})


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(st.tuples(st.lists(KEY, max_size=30), st.booleans()), max_size=10),
    colliding=st.booleans(),
    drop_at=st.integers(0, 10),
    drop=st.sets(st.integers(0, 40), max_size=10),
)
def test_ids_are_dense_in_first_appearance_order(
    batches: list[tuple[list[tuple[Any, Any]], bool]],
    colliding: bool,
    drop_at: int,
    drop: set[int],
) -> None:
    """Each distinct key gets the next id on first sight, then always the same one.

    Batches may repeat keys, hold nulls, come with or without a schema (all-null columns of
    type Null), and every hash may collide; at ``drop_at`` some keys are forgotten
    (``compact``) and the others renumbered in order. With colliding hashes the new keys of
    a batch that share a hash with another key get their ids after the others: the ids are
    then dense and each key keeps its own, in another order.
    """
    index = _Colliding(("s", "i")) if colliding else KeyIndex(("s", "i"))
    ref: dict[tuple[Any, Any], int] = {}
    for n, (rows, typed) in enumerate(batches):
        if n == drop_at and ref:
            keep = np.array([i not in drop for i in range(len(ref))], dtype=np.bool_)
            old = index.compact(keep)
            order = sorted(ref, key=ref.__getitem__)
            kept = [k for k, flag in zip(order, keep, strict=True) if flag]
            assert old.tolist() == [ref[k] for k in kept]
            ref = {k: i for i, k in enumerate(kept)}
        if not rows:
            continue
        start = len(ref)
        want = []
        for key in rows:
            want.append(ref.setdefault(key, len(ref)))
        ids, new = index.lookup(_frame(rows, typed))
        assert new == len(ref) - start
        assert len(index) == len(ref)
        if colliding:  # the same partition of the rows, the new keys' ids the next ones
            assert sorted(set(ids.tolist()) - set(range(start))) == list(range(start, len(ref)))
            pairs = set(zip(ids.tolist(), want, strict=True))
            assert len(pairs) == len({i for i, _ in pairs}) == len({w for _, w in pairs})
            ref = _renumbered(ref, dict(pairs))
        else:
            assert ids.tolist() == want
    frame = index.frame()
    got = list(frame.iter_rows()) if frame.height else []
    assert got == sorted(ref, key=ref.__getitem__)


def _renumbered(
    ref: dict[tuple[Any, Any], int], pairs: dict[int, int]
) -> dict[tuple[Any, Any], int]:
    """The reference with the index's ids (a bijection ``pairs``: index id -> reference id)."""
    back = {w: i for i, w in pairs.items()}
    return {key: back.get(i, i) for key, i in ref.items()}
