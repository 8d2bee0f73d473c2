"""Windows for keyed streams: ``keyed.window(windows.tumbling(timedelta(seconds=10)))``.

See :mod:`tideflow.api._windows` for the semantics (half-open windows aligned to the epoch,
watermarks, allowed lateness, early firings).
"""

from __future__ import annotations

from tideflow.api._windows import (
    Count,
    Session,
    Sliding,
    Tumbling,
    WindowedStream,
    WindowOut,
    count,
    session,
    sliding,
    tumbling,
)

__all__ = [
    "Count",
    "Session",
    "Sliding",
    "Tumbling",
    "WindowOut",
    "WindowedStream",
    "count",
    "session",
    "sliding",
    "tumbling",
]
