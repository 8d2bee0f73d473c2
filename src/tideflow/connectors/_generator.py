"""A rate-limited synthetic source: rows made by a user function of their global index.

The index space is cut into blocks of ``block_rows``; block ``b`` belongs to worker
``b % worker_count``. A worker's position is the next index it will make (its *stride*); a
checkpoint holds one such position per worker. Resuming with another worker count keeps the
old strides as a *prior layer*: an index is done when any layer says so, so every index is
made exactly once across restarts and rescaling.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from tideflow._errors import ConfigError, ConnectorError
from tideflow.connectors._base import Source, SourceBatch, SourceContext, SourceReader

__all__ = ["DEFAULT_BLOCK_ROWS", "Generate", "GenerateFn", "GeneratorReader"]

DEFAULT_BLOCK_ROWS = 1 << 16
GenerateFn = Callable[[int, int], "pl.DataFrame | Mapping[str, Any]"]


@dataclasses.dataclass(frozen=True, slots=True)
class _Layer:
    """Positions of one earlier run: ``nexts[c]`` is the next index of stride ``c``."""

    workers: int
    block: int
    nexts: tuple[int, ...]

    def done_until(self, index: int) -> int:
        """End of the done run starting at ``index`` within its block (``index`` if not done)."""
        b = index // self.block
        nxt = self.nexts[b % self.workers]
        return min(nxt, (b + 1) * self.block) if nxt > index else index

    def to_json(self) -> dict[str, Any]:
        return {"workers": self.workers, "block": self.block, "nexts": list(self.nexts)}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> _Layer:
        return _Layer(int(data["workers"]), int(data["block"]), tuple(data["nexts"]))


def _layers_from_resume(resume: Mapping[str, Any], block: int) -> list[_Layer]:
    entries = [v for k, v in resume.items() if k.startswith("generator/") and isinstance(v, dict)]
    if not entries:
        return []
    layers: dict[str, _Layer] = {}
    by_count: dict[tuple[int, int], dict[int, int]] = {}
    for e in entries:
        for prior in e.get("prior", []):
            layer = _Layer.from_json(prior)
            layers[repr(layer)] = layer
        key = (int(e["workers"]), int(e.get("block", block)))
        by_count.setdefault(key, {})[int(e["worker"])] = int(e["next"])
    for (workers, blk), nexts in by_count.items():
        full = tuple(nexts.get(c, c * blk) for c in range(workers))
        layer = _Layer(workers, blk, full)
        layers[repr(layer)] = layer
    return list(layers.values())


class GeneratorReader(SourceReader):
    """Makes the blocks of one worker's stride, at the worker's share of the rate."""

    def __init__(self, settings: Generate, ctx: SourceContext) -> None:
        self._s = settings
        self._ctx = ctx
        self._w = ctx.worker_index
        self._n = ctx.worker_count
        self._block = settings.block_rows
        self._layers = _layers_from_resume(ctx.resume, self._block)
        self._next = self._w * self._block
        self._rate = None if settings.rate is None else settings.rate / self._n
        self._t0 = time.monotonic()
        self._made_since_t0 = 0
        self._skip_done()

    def _skip_done(self) -> None:
        """Move ``_next`` past indices an earlier run already made and to an owned block."""
        while True:
            b = self._next // self._block
            if b % self._n != self._w:
                # jump to the next block of this stride
                ahead = (self._w - b % self._n) % self._n
                self._next = (b + ahead) * self._block
                continue
            moved = self._next
            for layer in self._layers:
                moved = max(moved, layer.done_until(self._next))
            if moved == self._next:
                return
            self._next = moved
            if self._next % self._block == 0:
                continue

    @property
    def finished(self) -> bool:
        return self._s.count is not None and self._next >= self._s.count

    def snapshot(self) -> dict[str, Any]:
        live = [layer.to_json() for layer in self._layers if max(layer.nexts) > self._next]
        return {
            f"generator/{self._w}of{self._n}": {
                "next": self._next,
                "worker": self._w,
                "workers": self._n,
                "block": self._block,
                "prior": live,
            }
        }

    def _budget(self) -> int:
        want = self._ctx.batch_size
        if self._rate is None:
            return want
        now = time.monotonic()
        allowed = (now - self._t0) * self._rate - self._made_since_t0
        if allowed > max(want, self._rate):
            # after a stall, do not burst more than a batch or a second's worth
            self._t0 = now - max(want, self._rate) / self._rate
            self._made_since_t0 = 0
            allowed = max(want, self._rate)
        return min(want, int(allowed))

    def _call(self, start: int, n: int) -> pl.DataFrame:
        try:
            out = self._s.fn(start, n)
        except Exception as exc:
            msg = (
                f"step {self._ctx.step_id!r}: the generator function {_describe(self._s.fn)} "
                f"failed for rows {start}..{start + n - 1}: {exc!r}"
            )
            raise ConnectorError(msg) from exc
        frame = out if isinstance(out, pl.DataFrame) else pl.DataFrame(out)
        if frame.height != n:
            msg = (
                f"step {self._ctx.step_id!r}: the generator function {_describe(self._s.fn)} "
                f"was asked for {n} rows (start={start}) and returned {frame.height}; return "
                "exactly n rows"
            )
            raise ConnectorError(msg)
        return frame

    def poll(self) -> SourceBatch | None:
        if self.finished:
            return None
        budget = self._budget()
        if budget <= 0:
            return None
        frames: list[pl.DataFrame] = []
        span_start = self._next
        span_len = 0
        count = self._s.count
        while budget > 0 and not self.finished:
            block_end = (self._next // self._block + 1) * self._block
            if count is not None:
                block_end = min(block_end, count)
            take = min(budget, block_end - self._next)
            if self._next != span_start + span_len:
                frames.append(self._call(span_start, span_len))
                span_start, span_len = self._next, 0
            span_len += take
            budget -= take
            self._next += take
            self._skip_done()
        if span_len:
            frames.append(self._call(span_start, span_len))
        data = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")
        self._made_since_t0 += data.height
        return SourceBatch(data)


def _describe(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        file = inspect.getsourcefile(fn)
        line = inspect.getsourcelines(fn)[1]
    except (TypeError, OSError):
        return name
    return f"{name} ({file}:{line})"


@dataclasses.dataclass(frozen=True)
class Generate(Source):
    """Settings of :func:`tideflow.connectors.generator.generate`."""

    fn: GenerateFn
    count: int | None = None
    rate: float | None = None
    block_rows: int = DEFAULT_BLOCK_ROWS

    @property
    def bounded(self) -> bool:
        return self.count is not None

    def validate(self, step_id: str) -> None:
        if not callable(self.fn):
            msg = f"step {step_id!r}: fn must be a function (start, n) -> DataFrame or dict"
            raise ConfigError(msg)
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0
        ):
            msg = (
                f"step {step_id!r}: count must be a non-negative integer or None (unbounded), "
                f"got {self.count!r}"
            )
            raise ConfigError(msg)
        if self.rate is not None and (
            isinstance(self.rate, bool)
            or not isinstance(self.rate, int | float)
            or not math.isfinite(self.rate)
            or self.rate <= 0
        ):
            msg = (
                f"step {step_id!r}: rate must be a positive number of rows per second (total "
                f"across workers) or None for as fast as possible, got {self.rate!r}"
            )
            raise ConfigError(msg)
        if not isinstance(self.block_rows, int) or self.block_rows < 1:
            msg = f"step {step_id!r}: block_rows must be a positive integer"
            raise ConfigError(msg)

    def build(self, ctx: SourceContext) -> SourceReader:
        self.validate(ctx.step_id)
        return GeneratorReader(self, ctx)
