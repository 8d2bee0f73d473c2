"""The dashboard's web server: a Starlette app on uvicorn, in a background thread of the driver.

Routes
------
``GET /``              the dashboard page (static HTML/JS/CSS shipped in the package)
``GET /api/state``     the run's state as JSON (see :meth:`LiveState.snapshot`) plus panels
``GET /api/events``    the same, pushed as server-sent events whenever it changes
``GET /metrics``       Prometheus text format (a registry of this run only)
``POST /api/sql``      body: one SELECT over the live tables and keyed state; answer: columns, rows
``GET /api/tables``    the live tables and the keyed-state tables, with their columns
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import polars as pl
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tideflow._errors import ConfigError, ConnectorError, StateError
from tideflow.dashboard._metrics import RunMetrics
from tideflow.dashboard._sql import QueryResult, SqlError, check_read_only, connect, run_query
from tideflow.dashboard._state import LiveState, Panel, state_table_name

__all__ = ["Dashboard", "DashboardSettings", "parse_address"]

log = logging.getLogger("tideflow.dashboard")

STATIC = Path(__file__).parent / "static"
COOKIE = "tideflow_dashboard"
MAX_SQL_BYTES = 64 * 1024
#: The table of a keyed-state read that says how many records each source had pushed at the cut.
CUT_TABLE = "state_cut"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port).

    Examples
    --------
    >>> parse_address("127.0.0.1:8765"), parse_address("[::1]:0")
    (('127.0.0.1', 8765), ('::1', 0))
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        msg = f"--dashboard expects HOST:PORT such as 127.0.0.1:8765, got {text!r}"
        raise ConfigError(msg)
    host = host.strip("[]")
    p = int(port)
    if p > 65535:
        msg = f"--dashboard: port must be 0..65535, got {p}"
        raise ConfigError(msg)
    return host, p


def _names(sql: str, table: str) -> bool:
    """True when ``sql`` mentions ``table`` as a word (case-insensitive)."""
    return re.search(rf"(?<![\w.]){re.escape(table)}(?!\w)", sql, re.IGNORECASE) is not None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class DashboardSettings:
    """Settings of a run's dashboard.

    Parameters
    ----------
    host, port
        Where to listen; loopback by default. Port 0 picks a free port.
    token
        Required from clients when set (header ``Authorization: Bearer TOKEN``, or open
        ``/?token=TOKEN`` once in a browser); mandatory for a non-loopback ``host``. Default:
        the ``TIDEFLOW_DASHBOARD_TOKEN`` environment variable.
    sql_max_rows, sql_timeout
        Limits of ``POST /api/sql``.
    panels
        The job's own panels (SQL over live tables, drawn as tables or charts).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    sql_max_rows: int = 10_000
    sql_timeout: float = 5.0
    panels: tuple[Panel, ...] = ()
    #: Seconds between pushes to each browser (at most; only when something changed).
    push_interval: float = 0.5

    def checked(self) -> DashboardSettings:
        """These settings with the token resolved; raise ConfigError if unsafe."""
        token = self.token if self.token is not None else os.environ.get("TIDEFLOW_DASHBOARD_TOKEN")
        token = token or None
        if not _is_loopback(self.host) and not token:
            msg = (
                f"dashboard: binding to {self.host!r} (not a loopback address) needs a token; "
                "set TIDEFLOW_DASHBOARD_TOKEN (or DashboardSettings(token=...)), or bind to "
                "127.0.0.1"
            )
            raise ConfigError(msg)
        if token is not None and len(token) < 16:
            msg = "dashboard: the token must be at least 16 characters"
            raise ConfigError(msg)
        return dataclasses.replace(self, token=token)


class Dashboard(LiveState):
    """A run observer that serves a live web dashboard, Prometheus metrics and SQL.

    Use as a context manager around ``tideflow.run(..., observers=[dashboard])``; the server
    runs in a daemon thread until the block ends.

    Examples
    --------
    >>> import json, urllib.request
    >>> import tideflow as tf
    >>> from tideflow.testing import TestingSource, CollectSink
    >>> from tideflow.connectors import live
    >>> flow = tf.Dataflow("doc_dash")
    >>> flow.source(TestingSource([{"k": "a"}, {"k": "b"}])).sink(live.sink_live("seen"))
    >>> with Dashboard(DashboardSettings(port=0)) as dash:
    ...     _ = tf.run(flow, observers=[dash])
    ...     body = json.dumps({"sql": "SELECT count(*) AS n FROM seen"}).encode()
    ...     answer = urllib.request.urlopen(dash.url + "api/sql", body).read()
    >>> json.loads(answer)["rows"]
    [[2]]
    """

    def __init__(self, settings: DashboardSettings | None = None, *, keep: int = 200) -> None:
        super().__init__(keep=keep)
        self.settings = (settings or DashboardSettings()).checked()
        for panel in self.settings.panels:
            try:
                check_read_only(panel.sql)
            except SqlError as exc:
                msg = f"dashboard panel {panel.title!r}: {exc}"
                raise ConfigError(msg) from None
        self._panel_db: Any = None
        self.metrics = RunMetrics(self)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._closing = False
        self._panel_cache: tuple[int, float, list[dict[str, Any]]] = (-1, 0.0, [])
        self._panel_lock = threading.Lock()
        self.app = self._make_app()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """The host and the bound port."""
        if self._sock is None:
            return self.settings.host, self.settings.port
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        """The dashboard's address, ending in ``/``."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start(self) -> Dashboard:
        """Bind and serve in a background thread."""
        import uvicorn

        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            msg = f"dashboard: cannot listen on {host}:{port}: {exc.strerror}; pick another port"
            raise ConnectorError(msg) from None
        sock.listen(64)
        sock.set_inheritable(False)
        self._sock = sock
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            ws="none",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name="tideflow-dashboard",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        log.info("dashboard: %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving (open event streams are closed)."""
        self._closing = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = None
        with self._panel_lock:
            if self._panel_db is not None:
                self._panel_db.close()
                self._panel_db = None

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- data -----------------------------------------------------------------------------
    def panels(self) -> list[dict[str, Any]]:
        """The job's panels with their current data (recomputed at most once a second)."""
        if not self.settings.panels:
            return []
        with self._panel_lock:
            version, at, cached = self._panel_cache
            fresh = time.monotonic() - at < 1.0 and self.status == "running"
            if version == self.version or fresh:
                return cached
            live = self.frames()
            out = []
            for p in self.settings.panels:
                item: dict[str, Any] = {"title": p.title, "kind": p.kind, "x": p.x, "y": list(p.y)}
                try:
                    frames = {**self.state_tables(p.sql, self.settings.sql_timeout), **live}
                except SqlError as exc:
                    item.update(columns=[], rows=[], error=str(exc))
                    out.append(item)
                    continue
                needed = {t for t in frames if t in p.sql}
                if not needed:
                    item.update(columns=[], rows=[], error=None)
                else:
                    try:
                        if self._panel_db is None:
                            self._panel_db = connect()
                        res = run_query(
                            p.sql,
                            {t: frames[t] for t in needed},
                            max_rows=500,
                            timeout=2.0,
                            connection=self._panel_db,
                            checked=True,
                        )
                        item.update(res.to_json(), error=None)
                    except SqlError as exc:
                        item.update(columns=[], rows=[], error=str(exc))
                out.append(item)
            self._panel_cache = (self.version, time.monotonic(), out)
            return out

    def state_tables(self, sql: str, timeout: float) -> dict[str, pl.DataFrame]:
        """The keyed-state tables ``sql`` names, read at one consistent cut of the job.

        A table per queryable step (see :func:`state_table_name`), plus ``state_cut``: the
        records each worker's sources had pushed at the cut. Nothing is read when the query
        names none of them.
        """
        control = self.control
        if control is None:
            return {}
        names = {state_table_name(step): step for step in control.queryable}
        used = [n for n in names if _names(sql, n)]
        if not used and not _names(sql, CUT_TABLE):
            return {}
        try:
            snap = control.read_state([names[n] for n in used], timeout=timeout)
        except StateError as exc:
            msg = f"cannot read keyed state: {exc}"
            raise SqlError(msg) from None
        out = {state_table_name(step): frame for step, frame in snap.tables.items()}
        out[CUT_TABLE] = snap.cut
        return out

    def query(self, sql: str) -> QueryResult:
        """Run one read-only query over the live tables and the keyed state it names."""
        check_read_only(sql)
        started = time.monotonic()
        limit = self.settings.sql_timeout
        tables = {**self.state_tables(sql, limit), **self.frames()}
        left = max(0.1, limit - (time.monotonic() - started))
        return run_query(
            sql, tables, max_rows=self.settings.sql_max_rows, timeout=left, checked=True
        )

    def payload(self) -> dict[str, Any]:
        """What ``/api/state`` answers and ``/api/events`` pushes."""
        snap = self.snapshot()
        snap["panels"] = self.panels()
        return snap

    # -- web app --------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        token = self.settings.token
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            given = given[7:].strip()
        else:
            given = request.cookies.get(COOKIE, "") or request.query_params.get("token", "")
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def _make_app(self) -> Starlette:
        dash = self

        async def guard(request: Request) -> Response | None:
            if dash._authorized(request):
                return None
            return JSONResponse(
                {
                    "error": "this dashboard needs its token: open /?token=... or send "
                    "'Authorization: Bearer ...'"
                },
                status_code=401,
            )

        async def index(request: Request) -> Response:
            if (denied := await guard(request)) is not None:
                return denied
            if "token" in request.query_params:
                # Move the token from the address bar into an HttpOnly cookie.
                resp: Response = RedirectResponse("/", status_code=303)
                resp.set_cookie(
                    COOKIE, request.query_params["token"], httponly=True, samesite="strict"
                )
                return resp
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

        async def state(request: Request) -> Response:
            if (denied := await guard(request)) is not None:
                return denied
            return JSONResponse(await run_in_threadpool(dash.payload))

        async def events(request: Request) -> Response:
            if (denied := await guard(request)) is not None:
                return denied

            async def stream() -> AsyncIterator[str]:
                seen = -1
                quiet = 0.0
                yield "retry: 2000\n\n"
                while not dash._closing:
                    if dash.version != seen:
                        seen = dash.version
                        data = await run_in_threadpool(dash.payload)
                        yield f"data: {json.dumps(data, allow_nan=False)}\n\n"
                        quiet = 0.0
                    elif quiet > 15:
                        yield ": keep-alive\n\n"
                        quiet = 0.0
                    if await request.is_disconnected():
                        break
                    await asyncio.sleep(dash.settings.push_interval)
                    quiet += dash.settings.push_interval

            return StreamingResponse(
                stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        async def metrics(request: Request) -> Response:
            if (denied := await guard(request)) is not None:
                return denied
            body = await run_in_threadpool(generate_latest, dash.metrics.registry)
            return Response(body, media_type=CONTENT_TYPE_LATEST)

        async def tables(request: Request) -> Response:
            if (denied := await guard(request)) is not None:
                return denied
            frames = dash.frames()
            out: dict[str, Any] = {
                name: {
                    "columns": f.columns,
                    "dtypes": [str(d) for d in f.dtypes],
                    "rows": f.height,
                }
                for name, f in sorted(frames.items())
            }
            control = dash.control
            if control is not None and control.queryable:
                steps = {state_table_name(s): s for s in sorted(control.queryable)}
                try:
                    state = await run_in_threadpool(
                        dash.state_tables, " ".join(steps), dash.settings.sql_timeout
                    )
                except SqlError:
                    state = {}
                for name, step in steps.items():
                    f = state.get(name)
                    out.setdefault(
                        name,
                        {
                            "columns": f.columns if f is not None else None,
                            "dtypes": [str(d) for d in f.dtypes] if f is not None else None,
                            "rows": f.height if f is not None else None,
                            "state_of": step,
                        },
                    )
            return JSONResponse(out)

        async def sql(request: Request) -> Response:
            if (denied := await guard(request)) is not None:
                return denied
            body = await request.body()
            if len(body) > MAX_SQL_BYTES:
                return JSONResponse({"error": "query too long"}, status_code=413)
            text = body.decode("utf-8", errors="replace")
            if "json" in request.headers.get("content-type", "") or text.lstrip().startswith("{"):
                try:
                    text = str(json.loads(text)["sql"])
                except (ValueError, KeyError, TypeError):
                    return JSONResponse(
                        {"error": 'send the SQL text, or JSON {"sql": "..."}'}, status_code=400
                    )
            try:
                res = await run_in_threadpool(dash.query, text)
            except SqlError as exc:
                refused = "allowed" in str(exc) or "exactly one" in str(exc)
                dash.metrics.sql_queries.labels("refused" if refused else "failed").inc()
                return JSONResponse({"error": str(exc)}, status_code=400)
            dash.metrics.sql_queries.labels("ok").inc()
            dash.metrics.sql_seconds.observe(res.seconds)
            return JSONResponse(res.to_json())

        async def health(request: Request) -> Response:
            return PlainTextResponse("ok")

        return Starlette(
            routes=[
                Route("/", index),
                Route("/api/state", state),
                Route("/api/events", events),
                Route("/api/tables", tables),
                Route("/api/sql", sql, methods=["POST"]),
                Route("/metrics", metrics),
                Route("/healthz", health),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ]
        )
