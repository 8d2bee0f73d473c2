"""Multi-worker behaviour: exchanges, backpressure, equality with one worker."""

import multiprocessing as mp
import time

import polars as pl

import tideflow as tf
from tideflow.connectors._base import Sink, SinkContext, SinkWriter
from tideflow.runtime._worker import QueueTransport
from tideflow.testing import CollectSink, TestingSource


class _FakeQueue:
    def __init__(self):
        self.items = []

    def put(self, msg):
        self.items.append(msg)


def test_backlog_counts_unread_batches_per_peer():
    sent = mp.Array("q", 4, lock=False)
    received = mp.Array("q", 4, lock=False)
    inboxes = [_FakeQueue(), _FakeQueue()]
    t0 = QueueTransport(0, 2, inboxes, sent, received, limit=2)
    for _ in range(3):
        assert not t0.backlogged()
        t0.send(1, ("D", 0, 0, b""))
    assert t0.backlogged()  # 3 unread > limit 2
    received[0 * 2 + 1] += 2  # worker 1 read two of them
    assert not t0.backlogged()


class SlowSink(Sink):
    """A sink that takes its time, so that sources must wait for it."""

    single_writer = True

    def __init__(self, path):
        self.inner = CollectSink()

    def build(self, ctx: SinkContext) -> SinkWriter:
        inner = self.inner.build(ctx)

        class W(SinkWriter):
            def write(self, batch):
                time.sleep(0.01)
                inner.write(batch)

            def close(self):
                inner.close()

        return W()


def test_slow_sink_loses_nothing_under_backpressure(tmp_path):
    rows = [{"k": i % 7, "v": i} for i in range(20_000)]
    flow = tf.Dataflow("slow")
    sink = SlowSink(tmp_path)
    flow.source(TestingSource(rows, batch_size=100)).sink(sink)
    result = tf.run(flow, workers=2, batch_size=100)
    got = sink.inner.frame()
    assert got.height == 20_000
    assert sorted(got["v"].to_list()) == list(range(20_000))
    assert result.records_in == 20_000


def test_two_workers_equal_one_worker_on_a_keyed_pipeline():
    rows = [
        {"user": f"u{i % 97}", "amount": (i * 37) % 1000, "ok": i % 5 != 0} for i in range(30_000)
    ]

    def build():
        flow = tf.Dataflow("eq")
        out = CollectSink()
        (
            flow.source(TestingSource(rows, batch_size=1000))
            .filter(pl.col("ok"))
            .key_by("user")
            .agg(
                pl.len().alias("n"),
                pl.col("amount").sum().alias("s"),
                pl.col("amount").max().alias("mx"),
            )
            .sink(out)
        )
        return flow, out

    results = []
    for workers in (1, 2):
        flow, out = build()
        tf.run(flow, workers=workers, batch_size=1000)
        results.append(out.frame().sort("user"))
    assert results[0].height == 97
    assert results[0].equals(results[1])


def test_worker_failure_is_reported_with_the_step():
    flow = tf.Dataflow("boom")
    flow.source(TestingSource([{"x": 1}, {"x": 2}])).map(
        lambda r: {"y": 1 / 0}, on_error="raise", name="divide"
    ).sink(CollectSink())
    try:
        tf.run(flow, workers=2)
    except tf.JobError as exc:
        assert exc.step_id == "boom.divide"
        assert "ZeroDivisionError" in str(exc)
    else:
        raise AssertionError("the job should have failed")


class Recorder:
    def __init__(self):
        self.events = []
        self.rows = []

    def on_start(self, flow, steps, workers):
        self.events.append(("start", flow, workers, [s.step_id for s in steps]))

    def on_stats(self, stats, elapsed):
        self.events.append(("stats",))

    def on_rows(self, topic, rows):
        self.rows.append((topic, rows))

    def on_finish(self, result):
        self.events.append(("finish", result.completed, result.records_in))


class PublishingSink(Sink):
    def build(self, ctx):
        class W(SinkWriter):
            def write(self, batch):
                ctx.publish("latest", batch.tail(2))

            def close(self):
                pass

        return W()


def test_observers_see_graph_published_rows_and_result(workers):
    flow = tf.Dataflow("obs")
    flow.source(TestingSource([{"x": i} for i in range(10)], batch_size=5)).sink(
        PublishingSink(), name="live"
    )
    rec = Recorder()
    tf.run(flow, workers=workers, batch_size=5, observers=[rec])
    start = rec.events[0]
    assert start[0] == "start" and start[2] == workers and "obs.live" in start[3]
    assert rec.events[-1] == ("finish", True, 10)
    assert rec.rows and all(t == "latest" and r.height <= 2 for t, r in rec.rows)
    assert {v for _, r in rec.rows for v in r["x"].to_list()} <= set(range(10))
