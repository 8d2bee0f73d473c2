"""Compare two result tables as multisets of rows, floats within a tolerance."""

from __future__ import annotations

import polars as pl

from tideflow._errors import DataError
from tideflow.bench.nexmark._reference import normalize

__all__ = ["ResultMismatchError", "check", "compare"]


class ResultMismatchError(DataError, AssertionError):
    """A query result differs from its reference; the message carries a diff summary."""


def _float_cols(frame: pl.DataFrame) -> list[str]:
    return [c for c, t in frame.schema.items() if t.is_float()]


def _summary_rows(frame: pl.DataFrame, limit: int) -> str:
    with pl.Config(tbl_rows=limit, tbl_cols=12, fmt_str_lengths=24, tbl_width_chars=160):
        return str(frame.head(limit))


def compare(
    result: pl.DataFrame,
    reference: pl.DataFrame,
    *,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-6,
    label: str = "result",
    show: int = 5,
) -> None:
    """Check that ``result`` and ``reference`` hold the same rows, ignoring order.

    Column names must match exactly (same order); integer, float and timestamp types are
    normalized first (``normalize``). Rows are compared as multisets; float columns may differ
    by ``max(rel_tol * |reference|, abs_tol)``.

    Parameters
    ----------
    result, reference
        The tables to compare.
    rel_tol, abs_tol
        Float tolerance.
    label
        Name used in the error message (e.g. ``"q5 on bytewax"``).
    show
        How many differing rows to print per side.

    Raises
    ------
    ResultMismatchError
        With a summary: row counts, and the first rows found only on each side.

    Examples
    --------
    >>> a = pl.DataFrame({"k": [1, 2], "v": [0.5, 1.0]})
    >>> compare(a, a.reverse())
    >>> compare(a, a.with_columns(v=pl.col("v") * 2))
    Traceback (most recent call last):
    ...
    tideflow.bench.nexmark._compare.ResultMismatchError: result differs from the reference: ...
    """
    res = normalize(result)
    ref = normalize(reference)
    if res.columns != ref.columns:
        msg = f"{label} differs from the reference: columns {res.columns}, expected {ref.columns}"
        raise ResultMismatchError(msg)
    mismatched_types = {
        c: (str(res.schema[c]), str(ref.schema[c]))
        for c in res.columns
        if res.schema[c] != ref.schema[c] and res.height and ref.height
    }
    if mismatched_types:
        msg = f"{label} differs from the reference: column types (got, expected) {mismatched_types}"
        raise ResultMismatchError(msg)
    floats = _float_cols(ref)
    exact = [c for c in ref.columns if c not in floats]
    order = exact + floats
    ok = res.height == ref.height
    if ok and res.height:
        a = res.sort(order, nulls_last=True)
        b = ref.sort(order, nulls_last=True)
        for c in exact:
            if not a[c].equals(b[c]):
                ok = False
                break
        if ok:
            for c in floats:
                x, y = a[c], b[c]
                if (x.is_null() != y.is_null()).any():
                    ok = False
                    break
                diff = (x - y).abs()
                tol = (y.abs() * rel_tol).clip(lower_bound=abs_tol)
                if bool((diff > tol).fill_null(False).any()):
                    ok = False
                    break
    if ok:
        return

    # Build a readable summary: rows (floats rounded) found only on one side.
    def keyed(frame: pl.DataFrame) -> pl.DataFrame:
        rounded = frame.with_columns(pl.col(floats).round(4)) if floats else frame
        return rounded.group_by(rounded.columns).len("copies")

    ka, kb = keyed(res), keyed(ref)
    joined = ka.join(kb, on=res.columns, how="full", coalesce=True, nulls_equal=True)
    joined = joined.with_columns(
        pl.col("copies").fill_null(0), pl.col("copies_right").fill_null(0)
    ).filter(pl.col("copies") != pl.col("copies_right"))
    only_res = joined.filter(pl.col("copies") > pl.col("copies_right"))
    only_ref = joined.filter(pl.col("copies") < pl.col("copies_right"))
    msg = (
        f"{label} differs from the reference: {res.height} rows, expected {ref.height}; "
        f"{only_res.height} distinct rows in excess, {only_ref.height} missing "
        f"(floats compared within rel {rel_tol}, abs {abs_tol})\n"
        f"in excess (first {show}):\n{_summary_rows(only_res, show)}\n"
        f"missing (first {show}):\n{_summary_rows(only_ref, show)}"
    )
    raise ResultMismatchError(msg)


def check(query: str, result: pl.DataFrame, reference: pl.DataFrame, *, label: str) -> None:
    """``compare`` after the query-specific normalization (q12 sums counts per bidder)."""
    compare(normalize(result, query), normalize(reference, query), label=label)
