"""Standard input and output: read lines, JSON lines or CSV from stdin; print batches.

Examples
--------
>>> import io
>>> import polars as pl
>>> from tideflow.connectors import stdio
>>> from tideflow.connectors._base import SinkContext
>>> out = io.StringIO()
>>> w = stdio.sink_stdout(stream=out).build(SinkContext("print", 0, 1))
>>> w.write(pl.DataFrame({"a": [1]})); w.close()
>>> out.getvalue()
'{"a":1}\\n'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from tideflow.connectors._stdio import ScanStdin, SinkStdout, StdinFormat, StdoutFormat

__all__ = ["ScanStdin", "SinkStdout", "StdinFormat", "StdoutFormat", "scan_stdin", "sink_stdout"]


def scan_stdin(
    format: StdinFormat = "text",
    *,
    column: str = "line",
    schema: Mapping[str, Any] | None = None,
    has_header: bool = True,
    separator: str = ",",
    stream: IO[bytes] | None = None,
) -> ScanStdin:
    """Read standard input on worker 0 (other workers get nothing); ends at end of input.

    Parameters
    ----------
    format
        ``"text"`` (one string column), ``"jsonl"`` or ``"csv"``.
    column
        The column name for ``format="text"``.
    schema
        Column types for JSON lines / CSV (inferred from the first block otherwise).
    has_header, separator
        CSV settings, as in :func:`tideflow.connectors.files.scan_csv`.
    stream
        A binary stream to read instead of ``sys.stdin.buffer``.

    Bad lines go to the dead letters with origin ``stdin:<line>``. The position is reported
    but standard input cannot be rewound, so a resumed job does not re-read it.

    Examples
    --------
    >>> import io, time
    >>> from tideflow.connectors._base import SourceContext
    >>> r = scan_stdin("jsonl", stream=io.BytesIO(b'{"a": 1}\\n{"a": 2}\\n')).build(
    ...     SourceContext("in", 0, 1, 10))
    >>> while not r.finished:
    ...     b = r.poll() or time.sleep(0.01)
    ...     if b: print(b.data["a"].to_list())
    [1, 2]
    """
    return ScanStdin(format, column, schema, has_header, separator, stream)


def sink_stdout(format: StdoutFormat = "jsonl", *, stream: IO[str] | None = None) -> SinkStdout:
    """Print every batch to standard output (a single writer) as JSON lines or a table.

    Examples
    --------
    >>> import io
    >>> import polars as pl
    >>> from tideflow.connectors._base import SinkContext
    >>> out = io.StringIO()
    >>> w = sink_stdout("table", stream=out).build(SinkContext("print", 0, 1))
    >>> w.write(pl.DataFrame({"a": [1]})); w.close()
    >>> "│ a   │" in out.getvalue()
    True
    """
    return SinkStdout(format, stream)
