"""Helpers for the dashboard tests: a rate-limited job with live tables, free ports, HTTP."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import polars as pl

import tideflow as tf
from tideflow.connectors import generator, live
from tideflow.connectors._base import Source, SourceBatch, SourceContext, SourceReader


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


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_until(pred: Any, timeout: float = 20.0) -> None:
    """Poll ``pred()`` until it is true (AssertionError after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def metric_samples(url: str) -> Samples:
    """``/metrics`` parsed by prometheus-client's own parser: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http(url + "metrics")
    assert status == 200
    out: Samples = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


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


class Interleaved(Source):
    """Worker ``w`` of ``n`` emits rows ``i = w, w + n, w + 2n, ...`` in batches, pausing
    ``pause`` seconds between batches: which rows came before a cut follows from how many
    each worker had pushed (``StateSnapshot.cut``)."""

    def __init__(self, batches: int, rows: int, pause: float = 0.003) -> None:
        self.batches, self.rows, self.pause = batches, rows, pause

    @property
    def bounded(self) -> bool:
        return True

    def schema(self) -> dict[str, pl.DataType] | None:
        return {"i": pl.Int64(), "k": pl.String(), "v": pl.Int64()}

    def build(self, ctx: SourceContext) -> SourceReader:
        return _InterleavedReader(self, ctx.worker_index, ctx.worker_count)


class _InterleavedReader(SourceReader):
    def __init__(self, src: Interleaved, worker: int, count: int) -> None:
        self.src, self.worker, self.count, self.done = src, worker, count, 0

    def poll(self) -> SourceBatch | None:
        if self.done >= self.src.batches:
            return None
        time.sleep(self.src.pause)
        rows = self.src.rows
        start = self.done * rows
        self.done += 1
        return SourceBatch(interleaved_rows(self.worker, self.count, start, rows))

    @property
    def finished(self) -> bool:
        return self.done >= self.src.batches

    def snapshot(self) -> dict[str, Any]:
        return {}


def interleaved_rows(worker: int, count: int, start: int, n: int) -> pl.DataFrame:
    """Rows ``start .. start + n - 1`` of worker ``worker`` of ``count``."""
    i = pl.int_range(start, start + n, eager=True, dtype=pl.Int64) * count + worker
    return pl.DataFrame({"i": i, "k": (i % 13).cast(pl.String), "v": i * 3})
