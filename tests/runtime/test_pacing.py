"""Sources paced by event time (``run(source_drift=...)``): none runs ahead of a slower one."""

from __future__ import annotations

from datetime import timedelta

import pytest

import tideflow as tf
from tideflow import ConfigError
from tideflow.testing import PAUSE, CollectSink, TestingSource

#: Event times 0..N-1 seconds on both sources; "slow" reads 5 rows a poll, "fast" 50.
N = 600


def _rows(tag: str) -> list[dict[str, object]]:
    return [{"src": tag, "t": i} for i in range(N)]


def _flow(slow_items: list[object] | None = None) -> tuple[tf.Dataflow, CollectSink]:
    flow = tf.Dataflow("pacing")
    slow_src = TestingSource(slow_items or _rows("slow"), batch_size=5)  # type: ignore[arg-type]
    fast_src = TestingSource(_rows("fast"), batch_size=50)  # type: ignore[arg-type]
    slow = flow.source(slow_src, name="slow").event_time("t", unit="s")
    fast = flow.source(fast_src, name="fast").event_time("t", unit="s")
    out = CollectSink()
    slow.union(fast).sink(out)
    return flow, out


def _worst_lead(out: CollectSink) -> int:
    """The most (seconds) that a source's rows already pushed were ahead of the other
    source's when a further batch of it arrived (one worker: batches in push order)."""
    worst = 0
    top = {"slow": -1, "fast": -1}
    for frame in out.frames():
        tags = frame.get_column("src").unique().to_list()
        assert len(tags) == 1  # a union forwards each source batch as it is
        tag = tags[0]
        other = "fast" if tag == "slow" else "slow"
        if top[tag] >= 0 and top[other] < N - 1:
            worst = max(worst, top[tag] - top[other])
        top[tag] = max(top[tag], int(frame.get_column("t").dt.epoch("s").max()))  # type: ignore[arg-type]
    return worst


def test_paced_sources_stay_abreast_in_event_time() -> None:
    flow, out = _flow()
    tf.run(flow, batch_size=5)
    got = out.frame()
    assert got.height == 2 * N  # nothing lost, nothing doubled
    assert sorted(got.get_column("t").dt.epoch("s").to_list()) == sorted(list(range(N)) * 2)
    # Paced: the fast source is read only while its watermark is not past the slow one's.
    assert _worst_lead(out) == 0


def test_unpaced_sources_run_apart() -> None:
    """The reference: without pacing the fast source runs far ahead (so the test above can
    fail)."""
    flow, out = _flow()
    tf.run(flow, batch_size=5, source_drift=None)
    assert out.frame().height == 2 * N
    assert _worst_lead(out) > 200


def test_drift_lets_a_source_run_ahead_by_that_much() -> None:
    flow, out = _flow()
    tf.run(flow, batch_size=5, source_drift=timedelta(seconds=200))
    assert out.frame().height == 2 * N
    assert 150 < _worst_lead(out) <= 200


def test_a_source_with_nothing_to_read_holds_nobody_back(workers: int) -> None:
    """A paused slow source (nothing to read now) does not stop the fast one."""
    slow_items: list[object] = [*_rows("slow")[:10], *[PAUSE] * 200, *_rows("slow")[10:]]
    flow, out = _flow(slow_items)
    tf.run(flow, workers=workers, batch_size=5)
    got = out.frame()
    assert got.height == 2 * N
    assert sorted(got.get_column("t").dt.epoch("s").to_list()) == sorted(list(range(N)) * 2)


def test_paced_sources_with_workers(workers: int) -> None:
    flow, out = _flow()
    tf.run(flow, workers=workers, batch_size=5)
    assert sorted(out.frame().get_column("t").dt.epoch("s").to_list()) == sorted(list(range(N)) * 2)


@pytest.mark.parametrize("bad", [timedelta(seconds=-1), 5])
def test_bad_source_drift_fails_before_the_job(bad: object) -> None:
    flow, _ = _flow()
    with pytest.raises(ConfigError, match="source_drift must be a timedelta >= 0"):
        tf.run(flow, source_drift=bad)  # type: ignore[arg-type]
