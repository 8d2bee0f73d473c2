"""Live analysis of running jobs: web dashboard, Prometheus metrics, SQL, run reports.

Needs the ``dashboard`` extra (``pip install tideflow[dashboard]``) for the web server.
"""

from __future__ import annotations

from tideflow.dashboard._record import RunRecorder, read_run
from tideflow.dashboard._report import write_report
from tideflow.dashboard._sql import QueryResult, SqlError, check_read_only, load_files, run_query
from tideflow.dashboard._state import LiveState, Panel, PanelKind, model_panel

__all__ = [
    "Dashboard",
    "DashboardSettings",
    "LiveState",
    "Panel",
    "PanelKind",
    "QueryResult",
    "RunRecorder",
    "SqlError",
    "check_read_only",
    "load_files",
    "model_panel",
    "read_run",
    "run_query",
    "write_report",
]


def __getattr__(name: str) -> object:
    # The web server's dependencies (starlette, uvicorn, prometheus-client) load on first use.
    if name in ("Dashboard", "DashboardSettings"):
        from tideflow.dashboard import _server

        return getattr(_server, name)
    msg = f"module 'tideflow.dashboard' has no attribute {name!r}"
    raise AttributeError(msg)
