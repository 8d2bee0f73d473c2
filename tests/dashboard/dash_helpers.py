"""Helpers for the dashboard tests: a rate-limited job with live tables, free ports, HTTP."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import polars as pl

import tideflow as tf
from tideflow.connectors import generator, live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def http_json(url: str, body: bytes | None = None, **kw: Any) -> tuple[int, Any]:
    status, data = http(url, body, **kw)
    return status, json.loads(data)


def _make(start: int, n: int) -> pl.DataFrame:
    i = pl.int_range(start, start + n, eager=True)
    return pl.DataFrame({"i": i, "key": (i % 5).cast(pl.String), "v": i * 2})


def counting_flow(name: str, *, events: int | None = None, rate: float = 2000.0) -> tf.Dataflow:
    """A small job: a rate-limited generator, per-key counts as a live table, the latest rows."""
    flow = tf.Dataflow(name)
    src = flow.source(generator.generate(_make, count=events, rate=rate), name="numbers")
    ok = src.validate({"v must be below 1e12": pl.col("v") < 10**12}, name="check")
    ok.sink(live.sink_live("latest", keep=50), name="latest_live")
    ok.key_by("key").agg(
        pl.len().alias("n"), pl.col("v").sum().alias("total"), emit="updates", name="per_key"
    ).sink(live.sink_live("per_key", key="key"), name="keys_live")
    return flow
