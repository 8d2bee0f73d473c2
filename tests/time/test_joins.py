"""Joins against brute-force nested-loop references on random out-of-order inputs.

One source carries both sides (column ``side``) so that the order in which the engine sees
records and watermarks is fixed: per batch, records are checked against the watermark as it
was before the batch, then the watermark moves to (largest time seen - delay). The references
are plain Python loops over all pairs, sharing no code with the engine.
"""

from collections import Counter, defaultdict
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow import windows
from tideflow._errors import ConfigError
from tideflow.testing import CollectSink, FakeClock, TestingSource

MIN = -(2**63)
T0 = 1_700_000_000_000_000  # µs

record = st.tuples(
    st.sampled_from(["L", "R"]),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 60),
    st.integers(0, 99),
)
batches_st = st.lists(st.lists(record, min_size=1, max_size=6), min_size=1, max_size=7)


def us(t):
    return int(t.timestamp() * 1_000_000) - T0 if t is not None else None


# -- references ----------------------------------------------------------------------------------
def late_split(batches, delay, is_late):
    """(accepted records, late records) replaying the watermark batch by batch."""
    wm = MIN
    ok, late = [], []
    for batch in batches:
        for rec in batch:
            (late if is_late(rec, wm) else ok).append(rec)
        wm = max(wm, max(t for _, _, t, _ in batch) - delay)
    return ok, late


def ref_window_join(batches, size, hop, delay, how):
    def starts(t):
        first = (t // hop) * hop
        return [ws for ws in range(first, first - size, -hop) if ws <= t < ws + size]

    def is_late(rec, wm):
        return all(ws + size <= wm for ws in starts(rec[2]))

    ok, late = late_split(batches, delay, is_late)
    wm_at = {}  # a record only goes to its windows that were open when it arrived
    wm = MIN
    groups = defaultdict(lambda: ([], []))
    for batch in batches:
        for rec in batch:
            side, k, t, v = rec
            for ws in starts(t):
                if ws + size > wm:
                    groups[(k, ws)][side == "R"].append((t, v))
        wm = max(wm, max(t for _, _, t, _ in batch) - delay)
    del wm_at, ok
    out = []
    for (k, ws), (ls, rs) in groups.items():
        if how in ("semi", "anti"):  # left rows with (semi) or without (anti) a partner
            if bool(rs) == (how == "semi"):
                out += [(k, ws, lt, lv, None, None) for lt, lv in ls]
            continue
        for lt, lv in ls:
            for rt, rv in rs:
                out.append((k, ws, lt, lv, rt, rv))
        if how in ("left", "full") and not rs:
            out += [(k, ws, lt, lv, None, None) for lt, lv in ls]
        if how in ("right", "full") and not ls:
            out += [(k, ws, None, None, rt, rv) for rt, rv in rs]
    return Counter(out), Counter(late)


def ref_interval_join(batches, lower, upper, delay):
    ok, late = late_split(batches, delay, lambda rec, wm: rec[2] < wm)
    out = [
        (k1, t1, v1, t2, v2)
        for s1, k1, t1, v1 in ok
        if s1 == "L"
        for s2, k2, t2, v2 in ok
        if s2 == "R" and k1 == k2 and t1 + lower <= t2 <= t1 + upper
    ]
    return Counter(out), Counter(late)


# -- running the engine --------------------------------------------------------------------------
#: Integer keys of letters: compact (a -> 0, b -> 1, ...; the key index by direct address),
#: sparse (2**40 apart: its sorted segments) or jumping (a, b compact, the next ones far: the
#: index leaves the direct address when they come).
SPARSE = 2**40


def int_key(letter, int_keys):
    """The key of ``letter`` (a string unless ``int_keys`` is "int", "sparse" or "jump")."""
    i = ord(letter) - ord("a")
    if not int_keys:
        return letter
    if int_keys == "sparse" or (int_keys == "jump" and i >= 2):
        return i * SPARSE
    return i


def sides(batches, delay, int_keys=False):
    """The flow, its keyed left and right sides; ``int_keys``: keys as integers (see
    :func:`int_key`)."""
    key_type = pl.Int64 if int_keys else pl.String
    items = [
        pl.DataFrame(
            {
                "side": [r[0] for r in b],
                "k": [int_key(r[1], int_keys) for r in b],
                "t": [T0 + r[2] for r in b],
                "v": [r[3] for r in b],
            },
            schema={"side": pl.String, "k": key_type, "t": pl.Int64, "v": pl.Int64},
        )
        for b in batches
    ]
    flow = tf.Dataflow("joins")
    schema = {"side": pl.String(), "k": key_type(), "t": pl.Int64(), "v": pl.Int64()}
    s = flow.source(TestingSource(items, batch_size=1, schema=schema)).event_time(
        "t", unit="us", delay=timedelta(microseconds=delay)
    )
    parts = s.split(left=pl.col("side") == "L", right=pl.col("side") == "R")
    left = parts.left.drop("side").key_by("k")
    right = parts.right.drop("side").key_by("k")
    return flow, left, right


def letter(key):
    """The letter of a key (see :func:`int_key`)."""
    if not isinstance(key, int):
        return key
    return chr(ord("a") + (key // SPARSE if key >= SPARSE else key))


def late_rows(sink):
    frame = sink.frame()
    if frame.height == 0:
        return Counter()
    assert frame["late_reason"].str.len_chars().min() > 0
    return Counter(
        (
            "L" if r["late_side"] == "left" else "R",
            letter(r["k"]),
            us(r["t"] if r["late_side"] == "left" else r["t_right"]),
            r["v"] if r["late_side"] == "left" else r["v_right"],
        )
        for r in frame.iter_rows(named=True)
    )


def run_window_join(batches, window, delay, how, workers=1):
    flow, left, right = sides(batches, delay)
    out, late = CollectSink(), CollectSink()
    j = left.join_window(right, window, how=how)
    j.results.sink(out)
    j.late.sink(late)
    tf.run(flow, workers=workers, batch_size=1)
    frame = out.frame()
    got = Counter(
        (r["k"], us(r["window_start"]), us(r["t"]), r["v"], us(r.get("t_right")), r.get("v_right"))
        for r in frame.iter_rows(named=True)
    )
    if frame.height:
        right_cols = [] if how in ("semi", "anti") else ["t_right", "v_right"]
        assert frame.columns == ["k", "window_start", "window_end", "t", "v", *right_cols]
        assert (
            frame["window_end"] - frame["window_start"]
        ).dt.total_microseconds().unique().len() == 1
    return got, late_rows(late)


def run_interval_join(batches, lower, upper, delay, workers=1):
    flow, left, right = sides(batches, delay)
    j = left.join_interval(
        right, lower=timedelta(microseconds=lower), upper=timedelta(microseconds=upper)
    )
    got, late, _ = collect_pairs(flow, j, workers)
    return got, late


def collect_pairs(flow, j, workers):
    """Run ``flow``; the pairs of interval join ``j``, its late rows and its result sink."""
    out, late = CollectSink(), CollectSink()
    j.results.sink(out)
    j.late.sink(late)
    tf.run(flow, workers=workers, batch_size=1)
    got = Counter(
        (
            letter(r["k"]),
            us(r["t"]),
            r["v"],
            us(r["t_right"]),
            r["v_right"],
        )
        for r in out.frame().iter_rows(named=True)
    )
    return got, late_rows(late), out


# -- windowed join ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 25),
    how=st.sampled_from(["inner", "left", "right", "full"]),
    size=st.sampled_from([10, 25]),
)
def test_tumbling_join_equals_reference(batches, delay, how, size):
    want, want_late = ref_window_join(batches, size, size, delay, how)
    got, got_late = run_window_join(
        batches, windows.tumbling(timedelta(microseconds=size)), delay, how
    )
    assert got == want
    assert got_late == want_late


@settings(max_examples=15, deadline=None)
@given(batches=batches_st, delay=st.integers(0, 25), how=st.sampled_from(["inner", "full"]))
def test_sliding_join_equals_reference(batches, delay, how):
    want, want_late = ref_window_join(batches, 20, 10, delay, how)
    got, got_late = run_window_join(
        batches,
        windows.sliding(timedelta(microseconds=20), timedelta(microseconds=10)),
        delay,
        how,
    )
    assert got == want
    assert got_late == want_late


def test_outer_join_keeps_unmatched_rows_of_both_sides():
    batches = [[("L", "a", 1, 1), ("R", "a", 2, 2), ("L", "b", 3, 3)], [("R", "c", 15, 4)]]
    got, _ = run_window_join(batches, windows.tumbling(timedelta(microseconds=10)), 0, "full")
    assert got == Counter(
        {("a", 0, 1, 1, 2, 2): 1, ("b", 0, 3, 3, None, None): 1, ("c", 10, None, None, 15, 4): 1}
    )


def test_late_records_of_both_sides_go_to_late():
    batches = [[("L", "a", 50, 1)], [("L", "a", 3, 2), ("R", "b", 4, 3)], [("R", "a", 55, 4)]]
    got, late = run_window_join(batches, windows.tumbling(timedelta(microseconds=10)), 0, "inner")
    assert got == Counter({("a", 50, 50, 1, 55, 4): 1})
    assert late == Counter({("L", "a", 3, 2): 1, ("R", "b", 4, 3): 1})


# -- interval join ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 25),
    bounds=st.sampled_from([(-5, 5), (0, 10), (-12, -3), (2, 2)]),
)
def test_interval_join_equals_reference(batches, delay, bounds):
    lower, upper = bounds
    want, want_late = ref_interval_join(batches, lower, upper, delay)
    got, got_late = run_interval_join(batches, lower, upper, delay)
    assert got == want
    assert got_late == want_late


def test_interval_join_buffers_are_pruned_by_the_watermark():
    from tideflow.runtime._joins import IntervalJoinOperator

    seen = []
    orig = IntervalJoinOperator._advance

    def spy(self, wm):
        orig(self, wm)
        seen.append(sum(f.height for b in self.buffers for f in b))

    batches = [[("L", "a", t, t), ("R", "a", t + 1, t)] for t in range(0, 60, 2)]
    IntervalJoinOperator._advance = spy
    try:
        got, _ = run_interval_join(batches, 0, 3, 0)
    finally:
        IntervalJoinOperator._advance = orig
    assert got == ref_interval_join(batches, 0, 3, 0)[0]
    assert max(seen[:-1]) <= 6  # a few records per side, not the whole history


@settings(max_examples=15, deadline=None)
@given(batches=batches_st, delay=st.integers(0, 25))
@example(batches=[[("L", "a", 9, 1)], [("L", "b", 15, 2)], [("R", "a", 16, 3)]], delay=0)
def test_windows_after_an_interval_join_see_no_late_pairs(batches, delay):
    lower, upper = -3, 8
    pairs, _ = ref_interval_join(batches, lower, upper, delay)
    check_windows_after_join(
        pairs,
        batches,
        delay,
        lambda left, right: left.join_interval(
            right, lower=timedelta(microseconds=lower), upper=timedelta(microseconds=upper)
        ),
    )


def check_windows_after_join(pairs, batches, delay, join):
    """10 µs windows counting a join's pairs equal the reference's, and none is late."""
    want = Counter()
    for (k, t, *_), n in pairs.items():
        want[(k, (t // 10) * 10)] += n
    flow, left, right = sides(batches, delay)
    j = join(left, right)
    out, late = CollectSink(), CollectSink()
    w = j.results.key_by("k").window(windows.tumbling(timedelta(microseconds=10)))
    w = w.agg(pl.len().alias("n"))
    w.results.sink(out)
    w.late.sink(late)
    tf.run(flow, batch_size=1)
    got = Counter()
    for r in out.frame().iter_rows(named=True):
        got[(r["k"], us(r["window_start"]))] += r["n"]
    assert late.frame().height == 0
    assert got == want


# -- interval join: per-record end, unbounded sides, emission at close -----------------------------
def ref_interval_join_end(batches, lower, span, delay):
    """Left (k, t, v) ends at t + span(v) (None: never); right partners in [t + lower, end].

    With no bound on either side (a regular join) no record is late.
    """
    regular = lower is None and span is None
    ok, late = late_split(batches, delay, lambda rec, wm: not regular and rec[2] < wm)
    out = [
        (k1, t1, v1, t2, v2)
        for s1, k1, t1, v1 in ok
        if s1 == "L"
        for s2, k2, t2, v2 in ok
        if s2 == "R"
        and k1 == k2
        and (lower is None or t1 + lower <= t2)
        and (span is None or t2 <= t1 + span(v1))
    ]
    return Counter(out), Counter(late)


def span_of(v):
    return v % 15


def with_end(left):
    """The left side with its end column: t + span_of(v)."""
    return left.stream.with_columns(
        end=pl.col("t") + pl.duration(microseconds=pl.col("v") % 15)
    ).key_by("k")


def run_interval_join_end(
    batches,
    lower,
    bounded_end,
    delay,
    emit,
    workers=1,
    unique=False,
    int_keys=False,
    left_where=None,
):
    flow, left, right = sides(batches, delay, int_keys)
    if bounded_end:
        left = with_end(left)
    j = left.join_interval(
        right,
        lower=None if lower is None else timedelta(microseconds=lower),
        upper="end" if bounded_end else None,
        emit=emit,
        left_unique=unique,
        left_where=left_where,
    )
    return collect_pairs(flow, j, workers)


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 25),
    lower=st.sampled_from([None, -4, 0, 3]),
    bounded_end=st.booleans(),
    emit=st.sampled_from(["arrival", "close"]),
)
def test_interval_join_with_record_end_equals_reference(batches, delay, lower, bounded_end, emit):
    want, want_late = ref_interval_join_end(batches, lower, span_of if bounded_end else None, delay)
    got, got_late, out = run_interval_join_end(batches, lower, bounded_end, delay, emit)
    assert got == want
    assert got_late == want_late
    if emit == "close":  # every left record's pairs arrive together, in one batch
        where = {}
        for i, frame in enumerate(out.frames()):
            for r in frame.iter_rows(named=True):
                assert where.setdefault((r["k"], r["t"], r["v"]), i) == i


def unique_left(batches):
    """The batches with only the first left record of each key."""
    seen, out = set(), []
    for batch in batches:
        kept = [r for r in batch if r[0] == "R" or (r[1] not in seen and not seen.add(r[1]))]
        if kept:
            out.append(kept)
    return out


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 25),
    lower=st.sampled_from([None, -4, 0]),
    bounded_end=st.booleans(),
    emit=st.sampled_from(["arrival", "close"]),
)
def test_join_with_a_unique_left_key_equals_reference(batches, delay, lower, bounded_end, emit):
    batches = unique_left(batches)
    want, want_late = ref_interval_join_end(batches, lower, span_of if bounded_end else None, delay)
    got, got_late, _ = run_interval_join_end(batches, lower, bounded_end, delay, emit, unique=True)
    assert got == want
    assert got_late == want_late


def random_batches(seed, unique):
    """15 batches of 1-8 random records (``unique``: only each key's first left record)."""
    import random

    rnd = random.Random(seed)
    batches = [
        [
            (rnd.choice("LR"), rnd.choice("abcdefgh"), rnd.randrange(100), rnd.randrange(99))
            for _ in range(rnd.randrange(1, 9))
        ]
        for _ in range(15)
    ]
    return unique_left(batches) if unique else batches


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    unique=st.booleans(),
    int_keys=st.sampled_from([False, "int", "sparse", "jump"]),
    emit=st.sampled_from(["arrival", "close"]),
)
def test_regular_join_equals_reference(batches, unique, int_keys, emit):
    """The key index of a regular join (integer keys: exact codes, by direct address or
    sorted; strings: hashed)."""
    if unique:
        batches = unique_left(batches)
    want, want_late = ref_interval_join_end(batches, None, None, 0)
    got, late, _out = run_interval_join_end(
        batches, None, False, 0, emit, unique=unique, int_keys=int_keys
    )
    assert got == want
    assert not want_late and late == Counter()


@pytest.mark.parametrize("unique", [False, True])
def test_regular_join_with_two_workers_equals_the_reference(unique):
    batches = random_batches(11, unique)
    want, _ = ref_interval_join_end(batches, None, None, 0)
    for int_keys in (False, "int", "sparse", "jump"):
        got, late, _ = run_interval_join_end(
            batches, None, False, 0, "arrival", workers=2, unique=unique, int_keys=int_keys
        )
        assert got == want
        assert not late


LEFT_WHERE = (pl.col("v") % 3 != 0) & (pl.col("k") != "b")


def left_where(int_keys):
    """LEFT_WHERE for keys of ``int_keys``."""
    return (pl.col("v") % 3 != 0) & (pl.col("k") != int_key("b", int_keys))


def meets(pair):
    """The reference of LEFT_WHERE on a pair's left record (k, t, v, ...)."""
    return pair[2] % 3 != 0 and pair[0] != "b"


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 25),
    lower=st.sampled_from([None, -4, 0]),
    bounded_end=st.booleans(),
    emit=st.sampled_from(["arrival", "close"]),
    unique=st.booleans(),
    int_keys=st.sampled_from([False, "int", "sparse"]),
)
def test_left_where_keeps_the_pairs_of_left_records_meeting_it(
    batches, delay, lower, bounded_end, emit, unique, int_keys
):
    if unique:
        batches = unique_left(batches)
    want, want_late = ref_interval_join_end(batches, lower, span_of if bounded_end else None, delay)
    got, got_late, _ = run_interval_join_end(
        batches,
        lower,
        bounded_end,
        delay,
        emit,
        unique=unique,
        int_keys=int_keys,
        left_where=left_where(int_keys),
    )
    assert got == Counter({p: n for p, n in want.items() if meets(p)})
    assert got_late == want_late


@pytest.mark.parametrize("int_keys", [False, "int"])
@pytest.mark.parametrize("unique", [False, True])
def test_left_where_with_two_workers_equals_the_reference(unique, int_keys):
    batches = random_batches(5, unique)
    want, _ = ref_interval_join_end(batches, None, None, 0)
    got, late, _ = run_interval_join_end(
        batches,
        None,
        False,
        0,
        "arrival",
        workers=2,
        unique=unique,
        int_keys=int_keys,
        left_where=left_where(int_keys),
    )
    assert got == Counter({p: n for p, n in want.items() if meets(p)})
    assert not late
    assert 0 < sum(got.values()) < sum(want.values())  # the condition dropped some, not all


def test_left_where_settings_are_checked():
    _flow, left, right = sides([[("L", "a", 1, 1)]], 0)
    with pytest.raises(tf.ConfigError, match=r"left_where reads \['v_right'\], which are not"):
        left.join_interval(right, lower=None, upper=None, left_where=pl.col("v_right") > 1)
    with pytest.raises(tf.ConfigError, match="left_where must be a Polars expression"):
        left.join_interval(right, lower=None, upper=None, left_where="v > 1")
    with pytest.raises(tf.ConfigError, match="left_where and best cannot be combined"):
        left.join_interval(
            right,
            lower=timedelta(0),
            upper=timedelta(microseconds=5),
            emit="close",
            best=tf.BestMatch("v"),
            left_where=pl.col("v") > 1,
        )


def test_unique_left_key_keeps_matched_right_records_out_of_the_buffer():
    from tideflow.runtime._joins import IntervalJoinOperator

    held = []
    orig = IntervalJoinOperator._advance

    def spy(self, wm):
        orig(self, wm)
        held.append(self.buffered(1))

    # a regular join: without the promise every right record would stay buffered
    batches = [[("R", "a", 1, 1)], [("L", "a", 2, 2)]] + [[("R", "a", t, t)] for t in range(3, 9)]
    IntervalJoinOperator._advance = spy
    try:
        got, _, _ = run_interval_join_end(batches, None, False, 0, "arrival", unique=True)
    finally:
        IntervalJoinOperator._advance = orig
    assert got == ref_interval_join_end(batches, None, None, 0)[0]
    assert max(held) <= 1


@settings(max_examples=15, deadline=None)
@given(batches=batches_st, delay=st.integers(0, 25))
def test_windows_after_a_close_join_see_no_late_pairs(batches, delay):
    pairs, _ = ref_interval_join_end(batches, 0, span_of, delay)
    check_windows_after_join(
        pairs,
        batches,
        delay,
        lambda left, right: with_end(left).join_interval(
            right, lower=timedelta(0), upper="end", emit="close"
        ),
    )


def test_close_join_holds_pairs_until_the_end_passes():
    from tideflow.runtime._joins import IntervalJoinOperator

    held = []
    orig = IntervalJoinOperator._advance

    def spy(self, wm):
        orig(self, wm)
        held.append(sum(f.height for f in self.pending))

    batches = [[("L", "a", 0, 10)], [("R", "a", 5, 1)], [("R", "b", 8, 2)], [("R", "b", 30, 3)]]
    IntervalJoinOperator._advance = spy
    try:
        got, _, _out = run_interval_join_end(batches, 0, True, 0, "close")
    finally:
        IntervalJoinOperator._advance = orig
    assert got == Counter({("a", 0, 10, 5, 1): 1})
    assert held[:3] == [0, 1, 1] and held[-1] == 0  # out when the watermark passes 10


def test_interval_join_checks_the_end_column():
    _flow, left, right = sides([[("L", "a", 0, 1)]], 0)
    with pytest.raises(ConfigError, match="must name a UTC timestamp column"):
        left.join_interval(right, lower=timedelta(0), upper="v")
    with pytest.raises(ConfigError, match="emit"):
        left.join_interval(right, lower=timedelta(0), upper=None, emit="later")


@settings(max_examples=40, deadline=None)
@given(
    batches=batches_st,
    delay=st.integers(0, 25),
    how=st.sampled_from(["semi", "anti"]),
    size_hop=st.sampled_from([(10, 10), (25, 25), (20, 10)]),
)
def test_semi_and_anti_window_joins_equal_reference(batches, delay, how, size_hop):
    size, hop = size_hop  # hop == size: tumbling windows
    window = windows.sliding(timedelta(microseconds=size), timedelta(microseconds=hop))
    want, want_late = ref_window_join(batches, size, hop, delay, how)
    got, got_late = run_window_join(batches, window, delay, how)
    assert got == want
    assert got_late == want_late


# -- two workers --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["window", "interval", "close", "semi", "anti"])
def test_two_workers_equal_the_reference(kind):
    import random

    rnd = random.Random(7)
    batches = [
        [
            (rnd.choice("LR"), rnd.choice("abcde"), rnd.randrange(100), rnd.randrange(99))
            for _ in range(5)
        ]
        for _ in range(12)
    ]
    delay = 1000  # nothing is late whatever the interleaving of the workers
    if kind in ("window", "semi", "anti"):
        how = "full" if kind == "window" else kind
        want, _ = ref_window_join(batches, 10, 10, delay, how)
        got, late = run_window_join(
            batches, windows.tumbling(timedelta(microseconds=10)), delay, how, workers=2
        )
    elif kind == "interval":
        want, _ = ref_interval_join(batches, -4, 6, delay)
        got, late = run_interval_join(batches, -4, 6, delay, workers=2)
    else:
        want, _ = ref_interval_join_end(batches, -2, span_of, delay)
        got, late, _ = run_interval_join_end(batches, -2, True, delay, "close", workers=2)
    assert got == want
    assert not late


# -- table joins --------------------------------------------------------------------------------
def test_bounded_table_is_loaded_before_stream_records_join():
    flow = tf.Dataflow("tab")
    events = flow.source(
        TestingSource([{"id": i % 4, "n": i} for i in range(10)], batch_size=3), name="events"
    )
    table = flow.source(
        TestingSource(
            [{"uid": 0, "tier": "x"}, {"uid": 1, "tier": "y"}, {"uid": 0, "tier": "z"}],
            batch_size=1,
        ),
        name="users",
    )
    out, inner = CollectSink(), CollectSink()
    events.join_table(table.key_by("uid"), on="id").sink(out)
    events.join_table(table.key_by("uid"), on="id", how="inner", name="inner").sink(inner)
    tf.run(flow, batch_size=1)
    final = {0: "z", 1: "y"}
    got = sorted(out.frame().rows())
    assert got == sorted((i % 4, i, final.get(i % 4)) for i in range(10))
    assert sorted(inner.frame().rows()) == sorted(
        (i % 4, i, final[i % 4]) for i in range(10) if i % 4 in final
    )


def test_bounded_table_with_two_workers():
    flow = tf.Dataflow("tab2")
    events = flow.source(TestingSource([{"id": i % 7, "n": i} for i in range(40)], batch_size=5))
    table = flow.source(TestingSource([{"id": i, "sq": i * i} for i in range(5)], batch_size=2))
    out = CollectSink()
    events.join_table(table, on="id").sink(out)
    tf.run(flow, workers=2)
    want = sorted((i % 7, i, (i % 7) ** 2 if i % 7 < 5 else None) for i in range(40))
    assert sorted(out.frame().rows()) == want


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["T", "E"]), st.sampled_from(["a", "b", "c"]), st.integers(0, 9)),
        min_size=1,
        max_size=25,
    )
)
def test_changelog_table_joins_the_current_row(ops):
    items = [{"op": o, "k": k, "v": v} for o, k, v in ops]
    flow = tf.Dataflow("cl")
    schema = {"op": pl.String(), "k": pl.String(), "v": pl.Int64()}
    parts = flow.source(TestingSource(items, batch_size=1, schema=schema)).split(
        table=pl.col("op") == "T", events=pl.col("op") == "E"
    )
    table = parts.table.select("k", pl.col("v").alias("val"))
    out = CollectSink()
    parts.events.drop("op").join_table(table, on="k", mode="changelog").sink(out)
    tf.run(flow, batch_size=1)
    current, want = {}, []
    for o, k, v in ops:
        if o == "T":
            current[k] = v
        else:
            want.append((k, v, current.get(k)))
    got = out.frame().rows() if out.frame().height else []
    assert got == want


def test_join_table_checks_its_settings():
    flow = tf.Dataflow("bad")
    s = flow.source(TestingSource([], schema={"id": pl.Int64()}))
    t = flow.source(TestingSource([], schema={"uid": pl.Int64()}), name="t")
    with pytest.raises(ConfigError, match="has no column"):
        s.join_table(t, on="id")
    with pytest.raises(ConfigError, match="how="):
        s.join_table(t.key_by("uid"), on="id", how="outer")
    with pytest.raises(ConfigError, match="event time"):
        s.key_by("id").join_window(t.key_by("uid"), windows.tumbling(timedelta(seconds=1)))


# -- lookup -------------------------------------------------------------------------------------
def test_lookup_caches_with_ttl_and_lru():
    clock = FakeClock(1_000.0)
    asked: list[list[int]] = []

    def fetch(keys: pl.DataFrame) -> pl.DataFrame:
        asked.append(sorted(keys["id"].to_list()))
        return keys.filter(pl.col("id") != 9).with_columns(name=pl.format("n{}", pl.col("id")))

    items = [
        pl.DataFrame({"id": [1, 2, 1, 9]}),  # misses 1, 2, 9 (one call)
        pl.DataFrame({"id": [2, 9]}),  # hits (9 is a cached "not found")
        clock.advance_marker(30),
        pl.DataFrame({"id": [1, 3]}),  # 1 still fresh; 3 missing; cache now over max_size
        clock.advance_marker(40),  # 1, 2, 9 fetched at t=1000 expire (ttl 60 s)
        pl.DataFrame({"id": [2, 3]}),  # 2 expired -> asked again; 3 fresh
        pl.DataFrame({"id": [1]}),  # 1 expired
    ]
    flow = tf.Dataflow("lk")
    out = CollectSink()
    flow.source(TestingSource(items)).lookup(
        fetch, on="id", ttl=timedelta(seconds=60), max_size=3
    ).sink(out)
    tf.run(flow, batch_size=1, clock=clock)
    assert asked == [[1, 2, 9], [3], [2], [1]]
    got = out.frame()
    assert got.columns == ["id", "name"]
    assert got.rows() == [
        (1, "n1"),
        (2, "n2"),
        (1, "n1"),
        (9, None),
        (2, "n2"),
        (9, None),
        (1, "n1"),
        (3, "n3"),
        (2, "n2"),
        (3, "n3"),
        (1, "n1"),
    ]


def test_lookup_evicts_least_recently_used():
    asked: list[list[int]] = []

    def fetch(keys: pl.DataFrame) -> pl.DataFrame:
        asked.append(sorted(keys["id"].to_list()))
        return keys.with_columns(x=pl.col("id") * 2)

    items = [pl.DataFrame({"id": [i]}) for i in (1, 2, 1, 3, 1, 2)]
    flow = tf.Dataflow("lru")
    out = CollectSink()
    flow.source(TestingSource(items)).lookup(fetch, on="id", max_size=2, how="inner").sink(out)
    tf.run(flow, batch_size=1)
    # 3 evicts 2 (1 was used more recently); 2 must be fetched again.
    assert asked == [[1], [2], [3], [2]]
    assert out.frame()["x"].to_list() == [2, 4, 2, 6, 2, 4]


# -- the docs page ------------------------------------------------------------------------------
def test_docs_examples_run():
    import pathlib
    import re

    page = pathlib.Path(__file__).parents[2] / "docs" / "joins.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 9
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})


# -- interval join keeping the best match per left record ----------------------------------------
def ref_best_join(batches, lower, span, delay, rank):
    """Every pair as in :func:`ref_interval_join_end`, then per left record (by its arrival)
    the first of its matches by ``rank`` (smaller first), ties to the earlier arrival."""
    ok, late = late_split(
        batches, delay, lambda rec, wm: not (lower is None and span is None) and rec[2] < wm
    )
    out = []
    for s1, k1, t1, v1 in ok:
        if s1 != "L":
            continue
        matches = [
            (t2, v2)
            for s2, k2, t2, v2 in ok
            if s2 == "R"
            and k1 == k2
            and (lower is None or t1 + lower <= t2)
            and (span is None or t2 <= t1 + span(v1))
        ]
        if matches:
            t2, v2 = min(matches, key=rank)  # min() keeps the first of equal ranks
            out.append((k1, t1, v1, t2, v2))
    return Counter(out), Counter(late)


#: (BestMatch, the same order as a Python sort key): by "w" = v % 3 descending (ties go to the
#: earlier arrival), or a total order (w desc, time, v) for runs with several workers.
BEST_ORDERS = {
    "w": (tf.BestMatch("w", descending=True), lambda m: -(m[1] % 3)),
    "total": (
        tf.BestMatch(["w", "t", "v"], descending=[True, False, False]),
        lambda m: (-(m[1] % 3), m[0], m[1]),
    ),
}


def run_best_join(batches, lower, bounded_end, delay, order, workers=1, unique=False):
    flow, left, right = sides(batches, delay)
    if bounded_end:
        left = with_end(left)
    right = right.stream.with_columns(w=pl.col("v") % 3).key_by("k")
    j = left.join_interval(
        right,
        lower=None if lower is None else timedelta(microseconds=lower),
        upper="end" if bounded_end else None,
        emit="close",
        left_unique=unique,
        best=BEST_ORDERS[order][0],
    )
    got, late, out = collect_pairs(flow, j, workers)
    frame = out.frame()
    if frame.height:  # the pair's columns, and one row per left record
        assert frame.columns[-3:] == ["t_right", "v_right", "w"]
        assert (frame["w"] == frame["v_right"] % 3).all()
    return got, late


#: Records close in time and value, so that left records meet several right ones with ties.
dense_batches_st = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(["L", "R"]),
            st.sampled_from(["a", "b"]),
            st.integers(0, 20),
            st.integers(0, 9),
        ),
        min_size=1,
        max_size=6,
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=80, deadline=None)
@given(
    batches=st.one_of(batches_st, dense_batches_st),
    delay=st.integers(0, 25),
    lower=st.sampled_from([None, -4, 0, 3]),
    bounded_end=st.booleans(),
    order=st.sampled_from(["w", "total"]),
    unique=st.booleans(),
)
@example(  # a tie on w across batches: the earlier arrival stays
    batches=[[("L", "a", 0, 1)], [("R", "a", 1, 3)], [("R", "a", 2, 6)]],
    delay=0,
    lower=0,
    bounded_end=False,
    order="w",
    unique=False,
)
@example(  # ties inside one batch, and a better match after them
    batches=[[("R", "a", 1, 3), ("R", "a", 2, 6), ("L", "a", 0, 1)], [("R", "a", 3, 5)]],
    delay=5,
    lower=-4,
    bounded_end=False,
    order="w",
    unique=False,
)
def test_best_match_join_equals_reference(batches, delay, lower, bounded_end, order, unique):
    if unique:
        batches = unique_left(batches)
    span = span_of if bounded_end else None
    want, want_late = ref_best_join(batches, lower, span, delay, BEST_ORDERS[order][1])
    got, got_late = run_best_join(batches, lower, bounded_end, delay, order, unique=unique)
    assert got == want
    assert got_late == want_late


def distinct_values(batches):
    """The batches with every record's value made unique (a total order with ``v`` last)."""
    out, n = [], 0
    for batch in batches:
        out.append([(s, k, t, n + i) for i, (s, k, t, _) in enumerate(batch)])
        n += len(batch)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_best_match_join_with_two_workers_equals_the_reference(seed):
    import random

    rnd = random.Random(seed)
    batches = [
        [
            (rnd.choice("LR"), rnd.choice("abcdefgh"), rnd.randrange(60), rnd.randrange(99))
            for _ in range(rnd.randrange(1, 9))
        ]
        for _ in range(12)
    ]
    batches = distinct_values(batches)
    # A delay above the time range: no record is late, however the two workers interleave.
    for lower, bounded_end in ((0, True), (-4, False), (None, False)):
        span = span_of if bounded_end else None
        want, want_late = ref_best_join(batches, lower, span, 60, BEST_ORDERS["total"][1])
        got, got_late = run_best_join(batches, lower, bounded_end, 60, "total", workers=2)
        assert got == want
        assert not want_late and not got_late


def test_best_match_join_checks_its_settings_before_the_job_starts():
    flow, left, right = sides([[("L", "a", 0, 1)]], 0)
    left = with_end(left)
    cases = [
        ("close", tf.BestMatch("price"), r"step 'joins.best_0'.*no column \['price'\]"),
        ("arrival", tf.BestMatch("v"), r"step 'joins.best_1'.*pass emit='close'"),
        (
            "close",
            tf.BestMatch(["v", "t"], descending=[True]),
            r"step 'joins.best_2'.*one descending flag per column",
        ),
    ]
    for i, (emit, best, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            left.join_interval(
                right, lower=timedelta(0), upper="end", emit=emit, best=best, name=f"best_{i}"
            )
    assert not any(n.kind == "join_interval" for n in flow.nodes)  # nothing was added


@pytest.mark.parametrize(("workers", "int_keys"), [(1, True), (1, False), (2, True)])
def test_best_match_join_at_scale_equals_a_columnar_reference(workers, int_keys):
    # Thousands of open left records, most right records after their left one: the open
    # store and the match store are rebuilt from their live rows several times on the way.
    rng = np.random.default_rng(7)
    n_left, n_right, span = 12_000, 36_000, 400
    left = pl.DataFrame(
        {
            "k": rng.permutation(n_left),
            "t": np.sort(rng.integers(0, 20_000, n_left)),
            "v": rng.integers(0, 50, n_left),
        }
    )
    # Each right record names a left record and comes near its time (a few before it).
    of = rng.integers(0, n_left, n_right)
    right = pl.DataFrame(
        {
            "k": left["k"].to_numpy()[of],
            "t": left["t"].to_numpy()[of] + rng.integers(-50, 450, n_right),
            "v": rng.integers(0, 1_000_000, n_right),
        }
    ).filter(pl.col("t") >= 0)
    if not int_keys:
        left, right = (f.with_columns(pl.format("key{}", "k").alias("k")) for f in (left, right))
    events = pl.concat(
        [left.with_columns(side=pl.lit("L")), right.with_columns(side=pl.lit("R"))]
    ).sort("t", maintain_order=True)
    items = [events.slice(i, 1_500) for i in range(0, events.height, 1_500)]
    flow = tf.Dataflow("joins")
    s = flow.source(TestingSource(items, batch_size=1, schema=events.schema)).event_time(
        "t", unit="us", delay=timedelta(microseconds=50)
    )
    parts = s.split(left=pl.col("side") == "L", right=pl.col("side") == "R")
    lhs = parts.left.drop("side").with_columns(end=pl.col("t") + pl.duration(microseconds=span))
    rhs = parts.right.drop("side").with_columns(w=pl.col("v") % 7)
    j = lhs.key_by("k").join_interval(
        rhs.key_by("k"),
        lower=timedelta(0),
        upper="end",
        emit="close",
        left_unique=True,
        best=tf.BestMatch(["w", "t", "v"], descending=[True, False, False]),
    )
    out, late = CollectSink(), CollectSink()
    j.results.sink(out)
    j.late.sink(late)
    tf.run(flow, workers=workers, batch_size=1_500)
    assert late.frame().height == 0
    got = out.frame().select("k", pl.col("t").dt.epoch("us"), "v", "v_right").sort("k")
    want = (
        left.join(right.rename({"t": "t_right", "v": "v_right"}), on="k")
        .filter((pl.col("t_right") >= pl.col("t")) & (pl.col("t_right") <= pl.col("t") + span))
        .sort(
            ["k", pl.col("v_right") % 7, "t_right", "v_right"],
            descending=[False, True, False, False],
        )
        .unique("k", keep="first")
        .select("k", "t", "v", "v_right")
        .sort("k")
    )
    assert want.height > 5_000
    assert got.to_dicts() == want.to_dicts()
