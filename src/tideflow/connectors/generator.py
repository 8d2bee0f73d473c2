"""A rate-limited synthetic source for demos, tests and benchmarks.

Examples
--------
>>> import polars as pl
>>> from tideflow.connectors import generator
>>> from tideflow.connectors._base import SourceContext
>>> src = generator.generate(lambda start, n: {"i": range(start, start + n)}, count=5)
>>> src.build(SourceContext("gen", 0, 1, batch_size=10)).poll().data["i"].to_list()
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

from tideflow.connectors._generator import DEFAULT_BLOCK_ROWS, Generate, GenerateFn

__all__ = ["Generate", "generate"]


def generate(
    fn: GenerateFn,
    *,
    count: int | None = None,
    rate: float | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> Generate:
    """Make rows with a function of their global index, optionally rate-limited.

    Parameters
    ----------
    fn
        ``fn(start, n)`` returns the rows with global indices ``start .. start + n - 1`` as a
        ``pl.DataFrame`` or a dict of columns, exactly ``n`` rows. It must be deterministic in
        ``start`` and ``n`` for a resumed job to reproduce the same data.
    count
        Total rows; ``None`` for an unbounded stream.
    rate
        Rows per second in total across workers; ``None`` for as fast as possible.
    block_rows
        The index space is dealt to workers in blocks of this many rows.

    Examples
    --------
    >>> from tideflow.connectors._base import SourceContext
    >>> src = generate(lambda start, n: {"i": list(range(start, start + n))}, count=6,
    ...                block_rows=2)
    >>> [src.build(SourceContext("gen", w, 2, 10)).poll().data["i"].to_list() for w in (0, 1)]
    [[0, 1, 4, 5], [2, 3]]
    """
    return Generate(fn, count, rate, block_rows)
