"""Command-line pieces: ``--dashboard``/``--run-dir`` for run and demo, ``sql`` and ``report``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from tideflow._errors import ConfigError, ConnectorError
from tideflow.dashboard._state import Panel
from tideflow.runtime._observe import RunObserver

__all__ = ["add_report_parser", "add_sql_parser", "observers_for", "report_main", "sql_main"]

log = logging.getLogger("tideflow.dashboard")


def _env(name: str) -> str | None:
    return os.environ.get(f"TIDEFLOW_{name}") or None


def add_observer_options(p: argparse.ArgumentParser) -> None:
    """``--dashboard`` and ``--run-dir`` (shared by ``run`` and ``demo``)."""
    p.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        default=_env("DASHBOARD"),
        help="serve a live web dashboard, Prometheus /metrics and SQL on HOST:PORT, e.g. "
        "127.0.0.1:8765 (a non-loopback HOST needs TIDEFLOW_DASHBOARD_TOKEN) "
        "[TIDEFLOW_DASHBOARD]",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=_env("RUN_DIR"),
        help="record counters over time and the result in DIR/run.jsonl, for "
        "`tideflow report DIR` [TIDEFLOW_RUN_DIR]",
    )


@contextlib.contextmanager
def observers_for(
    args: argparse.Namespace, panels: Sequence[Panel] = ()
) -> Iterator[list[RunObserver]]:
    """The observers asked for by ``--dashboard``/``--run-dir``; the server runs inside the block."""
    observers: list[RunObserver] = []
    dash = None
    if getattr(args, "run_dir", None):
        from tideflow.dashboard._record import RunRecorder

        observers.append(RunRecorder(args.run_dir))
    if getattr(args, "dashboard", None):
        try:
            from tideflow.dashboard._server import Dashboard, DashboardSettings, parse_address
        except ImportError as exc:
            msg = (
                f"--dashboard needs the dashboard extra ({exc.name} is missing): "
                "pip install 'tideflow[dashboard]'"
            )
            raise ConfigError(msg) from None

        host, port = parse_address(args.dashboard)
        dash = Dashboard(DashboardSettings(host=host, port=port, panels=tuple(panels)))
        dash.start()
        print(f"dashboard: {dash.url}", file=sys.stderr, flush=True)
        observers.append(dash)
    try:
        yield observers
    finally:
        if dash is not None:
            dash.stop()


def add_sql_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``tideflow sql`` subcommand."""
    s = sub.add_parser(
        "sql",
        help="SQL (DuckDB) over a running job's live tables or over output files",
        description="Run one read-only SELECT. With --connect, over the live tables of a job "
        "started with --dashboard; otherwise over output files (Parquet, CSV, JSON lines, "
        "SQLite): one table per file, named after it (tables of an SQLite file keep their "
        "names); a directory adds the files in it and one table per subdirectory of Parquet "
        "parts.",
    )
    s.add_argument("query", help='the query, e.g. "SELECT rule, count(*) FROM alerts GROUP BY 1"')
    s.add_argument("paths", nargs="*", type=Path, help="output files or directories (default: .)")
    s.add_argument(
        "--connect",
        metavar="HOST:PORT",
        default=_env("SQL_CONNECT"),
        help="query a running job's dashboard [TIDEFLOW_SQL_CONNECT]",
    )
    s.add_argument("--max-rows", type=int, default=1000, help="rows shown at most (default 1000)")
    s.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before the query is stopped"
    )
    s.add_argument("--json", action="store_true", help="print the JSON answer instead of a table")


def sql_main(args: argparse.Namespace) -> int:
    """Run ``tideflow sql``."""
    from tideflow.dashboard._sql import QueryResult, SqlError, format_table, load_files, run_query

    if args.connect:
        if args.paths:
            msg = "tideflow sql: pass either --connect or files, not both"
            raise ConfigError(msg)
        from tideflow.dashboard._server import parse_address

        host, port = parse_address(args.connect)
        shown = f"[{host}]" if ":" in host else host
        req = urllib.request.Request(
            f"http://{shown}:{port}/api/sql",
            data=args.query.encode(),
            headers={"Content-Type": "text/plain"},
        )
        token = os.environ.get("TIDEFLOW_DASHBOARD_TOKEN")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=args.timeout + 5) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                reason = exc.reason
            print(f"tideflow sql: {reason}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as exc:
            msg = f"tideflow sql: cannot reach a dashboard at {args.connect}: {exc}"
            raise ConnectorError(msg) from None
        result = QueryResult(data["columns"], data["rows"], data["truncated"], data["seconds"])
        if len(result.rows) > args.max_rows:
            result = QueryResult(result.columns, result.rows[: args.max_rows], True, result.seconds)
    else:
        tables = load_files(args.paths or [Path(".")])
        if not tables:
            msg = "tideflow sql: found no output files (Parquet, CSV, JSON lines, SQLite) to query"
            raise ConfigError(msg)
        try:
            result = run_query(args.query, tables, max_rows=args.max_rows, timeout=args.timeout)
        except SqlError as exc:
            print(f"tideflow sql: {exc} (tables: {', '.join(sorted(tables))})", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_table(result))
    return 0


def add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``tideflow report`` subcommand."""
    r = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a recorded run",
        description="Read RUN_DIR/run.jsonl (written by `tideflow run/demo --run-dir RUN_DIR`) "
        "and write an HTML report: throughput and batch timing over time, counts per step, "
        "top results.",
    )
    r.add_argument("run_dir", type=Path, help="the run directory")
    r.add_argument(
        "--out", type=Path, default=Path("report.html"), help="the HTML file (default report.html)"
    )


def report_main(args: argparse.Namespace) -> int:
    """Run ``tideflow report``."""
    from tideflow.dashboard._report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0
