"""Windows against a brute-force reference on random out-of-order inputs.

The reference replays the same batches: records are checked against the watermark as it was
before their batch, then the watermark advances to (largest time seen - delay) and due windows
fire. It is written per record in plain Python, with no shared code with the engine.
"""

from collections import defaultdict
from datetime import timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow import windows
from tideflow.testing import CollectSink, TestingSource

MIN = -(2**63)
AGGS = (
    pl.len().alias("n"),
    pl.col("v").sum().alias("s"),
    pl.col("v").min().alias("lo"),
    pl.col("v").max().alias("hi"),
    pl.col("v").mean().alias("avg"),
)


def values(vs):
    return {
        "n": len(vs),
        "s": sum(vs),
        "lo": min(vs),
        "hi": max(vs),
        "avg": round(sum(vs) / len(vs), 9),
    }


# -- references ---------------------------------------------------------------------------------
def ref_aligned(batches, size, hop, delay, lateness):
    wm = MIN
    wins = defaultdict(list)
    fired = set()
    out, late = [], []
    for batch in batches:
        touched = set()
        for k, t, v in batch:
            ok = False
            first = (t // hop) * hop
            for ws in range(first, first - size, -hop):
                if not (ws <= t < ws + size):
                    continue
                end = ws + size
                if end > wm:
                    wins[(k, ws)].append(v)
                    ok = True
                elif end + lateness > wm:
                    wins[(k, ws)].append(v)
                    touched.add((k, ws))
                    ok = True
            if not ok:
                late.append((k, t, v))
        for kw in touched:
            out.append((*kw, "update", *values(wins[kw]).values()))
            fired.add(kw)
        if batch:
            wm = max(wm, max(t for _, t, _ in batch) - delay)
        for kw in sorted(wins):
            if kw not in fired and kw[1] + size <= wm:
                out.append((*kw, "final", *values(wins[kw]).values()))
                fired.add(kw)
    for kw in sorted(wins):
        if kw not in fired:
            out.append((*kw, "final", *values(wins[kw]).values()))
    return sorted(out), sorted(late)


def ref_sessions(batches, gap, delay, lateness):
    wm = MIN
    sessions = defaultdict(list)  # key -> list of dict(start, end, vals, fired)
    out, late = [], []

    def emit(k, s, kind):
        out.append((k, s["start"], kind, *values(s["vals"]).values()))

    for batch in batches:
        kept = {k: [(s["start"], s["end"]) for s in ss] for k, ss in sessions.items()}
        accepted = []
        for k, t, v in batch:
            if t + gap + lateness <= wm and not any(
                t < e and t + gap > s for s, e in kept.get(k, [])
            ):
                late.append((k, t, v))
            else:
                accepted.append((k, t, v))
        touched = set()
        for k, t, v in accepted:
            new = {"start": t, "end": t + gap, "vals": [v], "fired": False, "new": True}
            merged = []
            for s in sessions[k]:
                if s["start"] < new["end"] and new["start"] < s["end"]:
                    new = {
                        "start": min(s["start"], new["start"]),
                        "end": max(s["end"], new["end"]),
                        "vals": s["vals"] + new["vals"],
                        "fired": s["fired"] or new["fired"],
                        "new": True,
                    }
                else:
                    merged.append(s)
            sessions[k] = [*merged, new]
            touched.add(k)
        for k in touched:
            for s in sessions[k]:
                if s["fired"] and s.get("new"):
                    emit(k, s, "update")
                s["new"] = False
        if batch:
            wm = max(wm, max(t for _, t, _ in batch) - delay)
        for k, ss in sessions.items():
            for s in ss:
                if not s["fired"] and s["end"] <= wm:
                    emit(k, s, "final")
                    s["fired"] = True
            sessions[k] = [s for s in ss if s["end"] + lateness > wm]
    for k, ss in sessions.items():
        for s in ss:
            if not s["fired"]:
                emit(k, s, "final")
    return sorted(out), sorted(late)


# -- running the engine ------------------------------------------------------------------------
T0 = 1_700_000_000_000_000  # µs


def run_windows(batches, window, delay, lateness, workers=1, idle=timedelta(seconds=10)):
    items = [
        pl.DataFrame(
            {"k": [r[0] for r in b], "t": [T0 + r[1] for r in b], "v": [r[2] for r in b]},
            schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64},
        )
        for b in batches
        if b
    ]
    flow = tf.Dataflow("win")
    out, late = CollectSink(), CollectSink()
    stream = flow.source(TestingSource(items, batch_size=1)).event_time(
        "t", unit="us", delay=timedelta(microseconds=delay), idle=idle
    )
    w = (
        stream.key_by("k")
        .window(window, allowed_lateness=timedelta(microseconds=lateness))
        .agg(*AGGS)
    )
    combined = any(n.step_id.endswith(".combine") for n in flow.nodes)
    assert combined == (not isinstance(window, windows.Session))
    w.results.sink(out)
    w.late.sink(late)
    tf.run(flow, workers=workers, batch_size=1)
    res = out.frame()
    rows = []
    for r in res.iter_rows(named=True):
        start = int(r["window_start"].timestamp() * 1_000_000) - T0
        kind = r.get("result", "final")
        rows.append((r["k"], start, kind, r["n"], r["s"], r["lo"], r["hi"], round(r["avg"], 9)))
    lates = late.frame()
    late_rows = (
        sorted(
            (r["k"], int(r["t"].timestamp() * 1_000_000) - T0, r["v"])
            for r in lates.iter_rows(named=True)
        )
        if lates.height
        else []
    )
    if lates.height:
        assert lates["late_reason"].str.contains("closed").all()
    return sorted(rows), late_rows


record = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 100), st.integers(-50, 50))
batches_st = st.lists(st.lists(record, min_size=1, max_size=8), min_size=1, max_size=8)


def as_kind(rows, mark):
    return rows if mark else [(*r[:2], "final", *r[3:]) for r in rows]


@settings(max_examples=60, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 30),
    lateness=st.sampled_from([0, 15, 40]),
    size=st.sampled_from([10, 25]),
)
def test_tumbling_equals_reference(batches, delay, lateness, size):
    want, want_late = ref_aligned(batches, size, size, delay, lateness)
    got, got_late = run_windows(
        batches, windows.tumbling(timedelta(microseconds=size)), delay, lateness
    )
    assert got == as_kind(want, lateness > 0)
    assert got_late == want_late


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 30),
    lateness=st.sampled_from([0, 20]),
    size_hop=st.sampled_from([(20, 5), (30, 10), (25, 10)]),
)
def test_sliding_equals_reference(batches, delay, lateness, size_hop):
    size, hop = size_hop
    want, want_late = ref_aligned(batches, size, hop, delay, lateness)
    got, got_late = run_windows(
        batches,
        windows.sliding(timedelta(microseconds=size), timedelta(microseconds=hop)),
        delay,
        lateness,
    )
    assert got == as_kind(want, lateness > 0)
    assert got_late == want_late


@settings(max_examples=60, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 30),
    lateness=st.sampled_from([0, 25]),
    gap=st.sampled_from([5, 12]),
)
def test_sessions_equal_reference(batches, delay, lateness, gap):
    want, want_late = ref_sessions(batches, gap, delay, lateness)
    got, got_late = run_windows(
        batches, windows.session(timedelta(microseconds=gap)), delay, lateness
    )
    assert got == as_kind(want, lateness > 0)
    assert got_late == want_late


@settings(max_examples=30, deadline=None)
@given(batches=batches_st, n=st.integers(1, 4))
def test_count_windows_equal_reference(batches, n):
    per_key = defaultdict(list)
    for b in batches:
        for k, _, v in b:
            per_key[k].append(v)
    want = sorted(
        (k, i // n, *values(vs[i : i + n]).values())
        for k, vs in per_key.items()
        for i in range(0, len(vs), n)
    )
    flow = tf.Dataflow("cw")
    out = CollectSink()
    rows = [{"k": k, "v": v} for b in batches for k, _, v in b]
    flow.source(TestingSource(rows, batch_size=3)).key_by("k").window(windows.count(n)).agg(
        *AGGS
    ).results.sink(out)
    tf.run(flow, batch_size=3)
    got = sorted(
        (r["k"], r["window"], r["n"], r["s"], r["lo"], r["hi"], round(r["avg"], 9))
        for r in out.rows()
    )
    assert got == want


def test_in_order_results_with_two_workers_equal_one():
    """Without late data, N workers give exactly the final windows of one worker."""
    batches = [[("abcdefg"[(i * j) % 7], i * 10 + j, i + j) for j in range(10)] for i in range(40)]
    for window in (
        windows.tumbling(timedelta(microseconds=50)),
        windows.sliding(timedelta(microseconds=60), timedelta(microseconds=20)),
        windows.session(timedelta(microseconds=15)),
    ):
        one = run_windows(batches, window, 1000, 0, workers=1)
        two = run_windows(batches, window, 1000, 0, workers=2)
        assert one == two
        assert one[0] and not one[1]


def _stop_in(seconds, until=None):
    """Ctrl-C this process after ``seconds``, or once ``until()`` holds (30 s at most)."""
    import os
    import signal
    import threading
    import time

    def stop():
        end = time.monotonic() + 30
        if until is None:
            time.sleep(seconds)
        else:
            while not until() and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=stop, daemon=True).start()


@pytest.mark.parametrize("idle", [timedelta(milliseconds=200), None])
def test_idle_input_does_not_hold_the_watermark_back(idle):
    """Worker 1 never gets data. With an idle timeout, worker 0's windows still fire."""
    batch = pl.DataFrame({"k": ["x"] * 1000, "t": [T0 + 1000 * i for i in range(1000)]})
    flow = tf.Dataflow("idle")
    out = CollectSink()
    src = flow.source(TestingSource([batch], bounded=False))  # one item: worker 0 only
    (
        src.event_time("t", unit="us", idle=idle)
        .key_by("k")
        .window(windows.tumbling(timedelta(milliseconds=100)))
        .agg(pl.len().alias("n"))
        .results.sink(out)
    )
    if idle is None:
        _stop_in(4)
    else:
        _stop_in(0.5, until=lambda: out.frame().height >= 9)
    result = tf.run(flow, workers=2)
    assert not result.completed
    got = out.frame()
    if idle is None:
        assert got.height == 0  # the idle worker holds the watermark back forever
    else:
        # Watermark 999 ms: the nine windows that ended by then fire, the tenth waits.
        assert sorted(got["n"].to_list()) == [100] * 9


def test_window_needs_event_time():
    flow = tf.Dataflow("f")
    s = flow.source(TestingSource([], schema={"k": pl.String, "v": pl.Int64}))
    with pytest.raises(tf.ConfigError, match="event_time"):
        s.key_by("k").window(windows.tumbling(timedelta(seconds=1))).agg(pl.len())
    with pytest.raises(tf.ConfigError, match="hop"):
        s.event_time("v", unit="s").key_by("k").window(
            windows.sliding(timedelta(seconds=1), timedelta(seconds=2))
        ).agg(pl.len())


def test_processing_time_windows_with_a_fake_clock():
    from tideflow.testing import FakeClock

    clock = FakeClock(1_000.0)
    items = [
        pl.DataFrame({"k": ["a", "a"], "v": [1, 2]}),
        clock.advance_marker(15),
        pl.DataFrame({"k": ["a"], "v": [5]}),
    ]
    flow = tf.Dataflow("pt")
    out = CollectSink()
    flow.source(TestingSource(items, batch_size=1)).key_by("k").window(
        windows.tumbling(timedelta(seconds=10)), clock="processing"
    ).agg(pl.col("v").sum().alias("s")).results.sink(out)
    result = tf.run(flow, batch_size=1, clock=clock)
    assert result.completed
    got = out.frame().sort("window_start")
    assert got["s"].to_list() == [3, 5]
    starts = [int(t.timestamp()) for t in got["window_start"]]
    assert starts == [1000, 1010]


def _rows(spec):
    return [
        pl.DataFrame(
            {"k": [k for k, _, _ in b], "t": [T0 + t for _, t, _ in b], "v": [v for *_, v in b]}
        )
        for b in spec
    ]


def test_early_firings_every_n_records_then_final():
    items = _rows([[("a", 1, 1)], [("a", 2, 2)], [("a", 3, 3)], [("a", 50, 4)]])
    flow = tf.Dataflow("early")
    out = CollectSink()
    flow.source(TestingSource(items, batch_size=1)).event_time("t", unit="us").key_by("k").window(
        windows.tumbling(timedelta(microseconds=10)), early=2
    ).agg(pl.col("v").sum().alias("s")).results.sink(out)
    tf.run(flow, batch_size=1)
    got = out.frame().sort("window_start", "result")
    first = got.filter(pl.col("window_start").dt.epoch("us") == T0)
    # early after records 2 and 4 (the 4th counts before its watermark closes the window)
    assert first.filter(pl.col("result") == "early")["s"].to_list() == [3, 6]
    assert first.filter(pl.col("result") == "final")["s"].to_list() == [6]


def test_reduce_fold_and_apply_over_window_records():
    items = _rows([[("a", 1, 1), ("a", 2, 5), ("b", 3, 7), ("a", 12, 2)]])
    for kind in ("reduce", "fold", "apply"):
        flow = tf.Dataflow("fn")
        out = CollectSink()
        w = (
            flow.source(TestingSource(items))
            .event_time("t", unit="us")
            .key_by("k")
            .window(windows.tumbling(timedelta(microseconds=10)))
        )
        if kind == "reduce":
            res = w.reduce(lambda a, r: {**a, "v": a["v"] + r["v"]})
        elif kind == "fold":
            res = w.fold(lambda: {"v": 0}, lambda acc, r: {"v": acc["v"] + r["v"]})
        else:
            res = w.apply(lambda df: df.select(pl.col("v").sum()))
        res.results.sink(out)
        tf.run(flow)
        got = sorted(out.frame().select("k", "v").rows())
        assert got == [("a", 2), ("a", 6), ("b", 7)], kind


def test_session_windows_with_a_user_function():
    items = _rows([[("a", 1, 1), ("a", 3, 2), ("a", 30, 4)]])
    flow = tf.Dataflow("sfn")
    out = CollectSink()
    flow.source(TestingSource(items)).event_time("t", unit="us").key_by("k").window(
        windows.session(timedelta(microseconds=5))
    ).fold(lambda: 0, lambda acc, r: acc + r["v"]).results.sink(out)
    tf.run(flow)
    assert sorted(out.frame()["value"].to_list()) == [3, 4]


@settings(max_examples=30, deadline=None)
@given(batches=batches_st)
def test_distinct_and_top_k_in_windows(batches):
    want = defaultdict(list)
    for b in batches:
        for k, t, v in b:
            want[(k, (t // 20) * 20)].append(v)
    flow = tf.Dataflow("dk")
    out = CollectSink()
    items = _rows(batches)
    flow.source(TestingSource(items, batch_size=1)).event_time(
        "t", unit="us", delay=timedelta(seconds=1)
    ).key_by("k").window(windows.tumbling(timedelta(microseconds=20))).agg(
        pl.col("v").n_unique().alias("u"), pl.col("v").top_k(2).alias("top")
    ).results.sink(out)
    tf.run(flow, batch_size=1)
    got = {
        (r["k"], int(r["window_start"].timestamp() * 1_000_000) - T0): (r["u"], r["top"])
        for r in out.rows()
    }
    assert got == {kw: (len(set(vs)), sorted(vs, reverse=True)[:2]) for kw, vs in want.items()}


# -- max_by and windows over window results -------------------------------------------------------
def _aligned(size, hop):
    if size == hop:
        return windows.tumbling(timedelta(microseconds=size))
    return windows.sliding(timedelta(microseconds=size), timedelta(microseconds=hop))


def run_max_by(batches, window, delay, lateness, workers):
    items = [
        pl.DataFrame(
            {
                "k": [r[0] for r in b],
                "t": [T0 + r[1] for r in b],
                "v": [r[2] for r in b],
                "id": [f"{i}.{j}" for j, _ in enumerate(b)],
            },
            schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64, "id": pl.String},
        )
        for i, b in enumerate(batches)
        if b
    ]
    flow = tf.Dataflow("maxby")
    out, late = CollectSink(), CollectSink()
    w = (
        flow.source(TestingSource(items, batch_size=1))
        .event_time("t", unit="us", delay=timedelta(microseconds=delay))
        .key_by("k")
        .window(window, allowed_lateness=timedelta(microseconds=lateness))
        .max_by("v")
    )
    assert any(n.step_id.endswith(".combine") for n in flow.nodes)  # runs with a combiner
    w.results.sink(out)
    w.late.sink(late)
    tf.run(flow, workers=workers, batch_size=1)
    rows = sorted(
        (
            r["k"],
            int(r["window_start"].timestamp() * 1_000_000) - T0,
            r.get("result", "final"),
            r["v"],
            r["id"],
        )
        for r in out.rows()
    )
    lates = late.frame()
    late_ids = sorted(lates["id"].to_list()) if lates.height else []
    return rows, late_ids


def ref_max_by(batches, size, hop, delay, lateness):
    """Brute force: replay per record; a window's result is every record tied for its max."""
    wm = MIN
    wins = defaultdict(list)  # (k, ws) -> [(v, id)]
    fired = set()
    out, late = [], []

    def leaders(kw, kind):
        top = max(v for v, _ in wins[kw])
        return [(*kw, kind, v, i) for v, i in wins[kw] if v == top]

    for bi, batch in enumerate(batches):
        touched = set()
        for j, (k, t, v) in enumerate(batch):
            rid, ok = f"{bi}.{j}", False
            first = (t // hop) * hop
            for ws in range(first, first - size, -hop):
                if not (ws <= t < ws + size):
                    continue
                if ws + size > wm:
                    wins[(k, ws)].append((v, rid))
                    ok = True
                elif ws + size + lateness > wm:
                    wins[(k, ws)].append((v, rid))
                    touched.add((k, ws))
                    ok = True
            if not ok:
                late.append(rid)
        for kw in touched:
            out += leaders(kw, "update")
            fired.add(kw)
        if batch:
            wm = max(wm, max(t for _, t, _ in batch) - delay)
        for kw in sorted(wins):
            if kw not in fired and kw[1] + size <= wm:
                out += leaders(kw, "final")
                fired.add(kw)
    for kw in sorted(wins):
        if kw not in fired:
            out += leaders(kw, "final")
    return sorted(out), sorted(late)


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 30),
    lateness=st.sampled_from([0, 20]),
    size_hop=st.sampled_from([(10, 10), (25, 25), (20, 5), (30, 10)]),
)
def test_max_by_equals_reference(batches, delay, lateness, size_hop):
    size, hop = size_hop
    want, want_late = ref_max_by(batches, size, hop, delay, lateness)
    got, got_late = run_max_by(batches, _aligned(size, hop), delay, lateness, workers=1)
    assert got == [(*r[:2], r[2] if lateness else "final", *r[3:]) for r in want]
    assert got_late == want_late


@pytest.mark.parametrize("workers", [1, 2])
def test_max_by_with_workers_equals_reference(workers):
    """In-order data (nothing late): N workers give the leaders of one brute-force pass."""
    import random

    rnd = random.Random(5)
    batches = [
        [(rnd.choice("abcd"), i * 7 + j, rnd.randint(0, 9)) for j in range(7)] for i in range(60)
    ]
    for size, hop in ((50, 50), (60, 20)):
        want, _ = ref_max_by(batches, size, hop, 1000, 0)
        got, late = run_max_by(batches, _aligned(size, hop), 1000, 0, workers=workers)
        assert got == want and not late


def test_max_by_takes_aligned_windows_and_a_known_column():
    flow = tf.Dataflow("mb")
    s = flow.source(TestingSource([], schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64}))
    keyed = s.event_time("t", unit="us").key_by("k")
    with pytest.raises(tf.ConfigError, match=r"max_by.*tumbling or sliding"):
        keyed.window(windows.session(timedelta(seconds=1))).max_by("v")
    with pytest.raises(tf.ConfigError, match="no column 'w' for max_by"):
        keyed.window(windows.tumbling(timedelta(seconds=1))).max_by("w")


@settings(max_examples=30, deadline=None)
@given(batches=batches_st, workers=st.sampled_from([1, 2]))
def test_windows_over_window_results(batches, workers):
    """Per-key sums in sliding windows, then per window the largest sum: a brute-force pass."""
    size, hop = 20, 5
    sums = defaultdict(int)
    for b in batches:
        for k, t, v in b:
            first = (t // hop) * hop
            for ws in range(first, first - size, -hop):
                if ws <= t < ws + size:
                    sums[(ws, k)] += v
    best = defaultdict(lambda: -(10**9))
    for (ws, _), s in sums.items():
        best[ws] = max(best[ws], s)
    want = sorted((ws, k, s) for (ws, k), s in sums.items() if s == best[ws])

    flow = tf.Dataflow("chain")
    out, late = CollectSink(), CollectSink()
    sums_w = (
        flow.source(TestingSource(_rows(batches), batch_size=1))
        .event_time("t", unit="us", delay=timedelta(seconds=1), idle=None)
        .key_by("k")
        .window(windows.sliding(timedelta(microseconds=size), timedelta(microseconds=hop)))
        .agg(pl.col("v").sum().alias("s"))
    )
    assert sums_w.results.time_column == "window_end" and sums_w.late.time_column is None
    top = (
        sums_w.results.with_columns(ws=pl.col("window_start"))
        .key_by("ws")
        .window(windows.tumbling(timedelta(microseconds=hop)))
        .max_by("s")
    )
    top.results.sink(out)
    top.late.sink(late)
    tf.run(flow, workers=workers, batch_size=1)
    got = sorted((int(r["ws"].timestamp() * 1_000_000) - T0, r["k"], r["s"]) for r in out.rows())
    assert got == want
    assert late.frame().height == 0


# -- the combiner before the exchange ------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(
    batches=st.lists(st.lists(record, min_size=1, max_size=12), min_size=2, max_size=10),
    size_hop=st.sampled_from([(10, 10), (20, 5), (25, 10)]),
)
def test_combined_windows_with_two_workers_equal_reference(batches, size_hop):
    size, hop = size_hop
    want, _ = ref_aligned(batches, size, hop, 1000, 0)
    got, late = run_windows(batches, _aligned(size, hop), 1000, 0, workers=2, idle=None)
    assert got == want and not late


class _Ctx:
    """A minimal operator context that records what an operator emits."""

    worker_index, worker_count = 0, 1

    def __init__(self):
        self.out = []

    def emit(self, batch, port="out"):
        self.out.append((port, batch))

    def watermark(self, wm, idle=False):
        pass


def test_combiner_passes_records_unchanged_after_its_input_was_idle():
    from tideflow.runtime._windowing import WindowCombiner

    flow = tf.Dataflow("idlec")
    s = flow.source(TestingSource([], schema={"k": pl.String, "t": pl.Int64, "v": pl.Int64}))
    s.event_time("t", unit="us").key_by("k").window(
        windows.tumbling(timedelta(microseconds=10))
    ).agg(pl.col("v").sum()).results.sink(CollectSink())
    node = next(n for n in flow.nodes if n.step_id.endswith(".combine"))
    ctx = _Ctx()
    comb = WindowCombiner(node, ctx)
    batch = pl.DataFrame({"k": ["a", "a", "b"], "t": [T0 + 1, T0 + 25, T0 + 31], "v": [1, 2, 3]})
    batch = batch.with_columns(pl.col("t").cast(pl.Datetime("us", "UTC")))
    comb.on_watermark(T0 + 20, False)
    comb.on_batch(0, batch)
    raw, part = ctx.out
    assert raw[0] == "out" and raw[1]["v"].to_list() == [1]  # its window ended at the watermark
    assert part[0] == "partial" and sorted(part[1]["__v"].to_list()) == [2, 3]
    ctx.out.clear()
    comb.on_watermark(T0 + 20, True)  # idle: other workers may move the watermark on
    comb.on_batch(0, batch)
    assert [p for p, _ in ctx.out] == ["out"] and ctx.out[0][1].height == 3
    again = WindowCombiner(node, ctx)
    again.restore(comb.snapshot())
    assert again.idle_seen and again.wm == T0 + 20
