"""Live progress of a run on the terminal (stderr), drawn with rich."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from tideflow.runtime._run import RunResult
    from tideflow.runtime._worker import StepStats

__all__ = ["Progress"]


def _rate(n: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:,.1f}{unit}"
    return f"{n:,.0f}"


class Progress:
    """Records in and out, rates and dead letters, refreshed as worker counters arrive."""

    def __init__(self, flow: str, sources: frozenset[str], sinks: frozenset[str]) -> None:
        self.flow = flow
        self.sources = sources
        self.sinks = sinks
        self.console = Console(stderr=True)
        self.start = time.monotonic()
        self.last: tuple[float, int] = (self.start, 0)
        self.rate = 0.0
        self.live: Live | None = None
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def _table(self, stats: dict[str, StepStats], elapsed: float) -> Table:
        t = Table(title=f"tideflow · {self.flow} · {elapsed:,.1f}s", title_justify="left")
        t.add_column("step")
        t.add_column("records", justify="right")
        t.add_column("rate/s", justify="right")
        t.add_column("dead letters", justify="right")
        for step, s in stats.items():
            if step in self.sources:
                t.add_row(f"⇢ {step}", f"{s.rows_out:,}", _rate(self.rate), f"{s.dead:,}")
        for step, s in stats.items():
            if step in self.sinks:
                t.add_row(f"⇥ {step}", f"{s.rows_in:,}", "", "")
        dead = sum(s.dead for s in stats.values())
        t.add_row("dead letters (all steps)", f"{dead:,}", "", "")
        return t

    def on_start(self, flow: str, steps: list[Any], workers: int) -> None:
        """Nothing to draw yet."""

    def on_rows(self, topic: str, rows: Any) -> None:
        """Published rows are not shown."""

    def on_stats(self, stats: dict[str, StepStats], elapsed: float) -> None:
        """New counters."""
        self.update(stats)

    def on_finish(self, result: RunResult) -> None:
        """Print the summary."""
        self.finish(result.steps, result.seconds, result.completed)

    def update(self, stats: dict[str, StepStats]) -> None:
        """New counters (summed over workers)."""
        now = time.monotonic()
        total = sum(s.rows_out for k, s in stats.items() if k in self.sources)
        t0, n0 = self.last
        if now - t0 >= 0.5:
            self.rate = (total - n0) / (now - t0)
            self.last = (now, total)
        if self.live is not None:
            self.live.update(self._table(stats, now - self.start))

    def finish(self, stats: dict[str, StepStats], seconds: float, completed: bool) -> None:
        """Stop the live view and print the summary."""
        if self.live is not None:
            self.live.stop()
        total = sum(s.rows_out for k, s in stats.items() if k in self.sources)
        self.rate = total / seconds if seconds > 0 else 0.0
        self.console.print(self._table(stats, seconds))
        state = "finished" if completed else "stopped"
        self.console.print(
            f"{state}: {total:,} records in {seconds:,.2f}s ({_rate(self.rate)} records/s)"
        )
