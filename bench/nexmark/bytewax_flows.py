"""Nexmark queries as Bytewax 0.21 dataflows (a bench-only peer; needs ``bytewax``).

Written for this harness from Bytewax's public operator API; one worker, run in process with
``bytewax.testing.run_main``. Records are Python dicts, as Bytewax users write them. The results
follow the conventions of ``tideflow.bench.nexmark._reference`` (windows aligned to the epoch and
half-open, valid bids, arrival-order ties) and are checked against the DuckDB reference.

Queries whose result is only known at the end of a bounded run (q4, q6, q9, q15-q19 final
values) use ``fold_final`` (emits at end of input); windowed queries use Bytewax's event clock
with 10 s of allowed out-of-orderness (the source interleaves kinds within 1 s slices).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.operators import windowing as win
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, run_main

from tideflow._errors import ConfigError
from tideflow.bench.nexmark._reference import spec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SLICE_MS = 1000
WAIT = timedelta(seconds=10)

Rec = dict[str, Any]


# --- input ---------------------------------------------------------------------------------
class _Partition(StatelessSourcePartition[Any]):
    def __init__(self, tables: dict[str, pa.Table], tagged: bool) -> None:
        self._tables = tables
        self._times = {
            k: t.column("date_time").cast(pa.int64()).to_numpy() for k, t in tables.items()
        }
        self._pos = dict.fromkeys(tables, 0)
        starts = [int(t[0]) for t in self._times.values() if len(t)]
        self._t = (min(starts) // SLICE_MS) * SLICE_MS if starts else 0
        self._tagged = tagged

    def next_batch(self) -> Iterable[Any]:
        if all(self._pos[k] >= len(self._times[k]) for k in self._tables):
            raise StopIteration
        end = self._t + SLICE_MS
        self._t = end
        out: list[Any] = []
        for kind, table in self._tables.items():
            lo = self._pos[kind]
            hi = bisect.bisect_left(self._times[kind], end, lo=lo)
            self._pos[kind] = hi
            if hi > lo:
                rows = table.slice(lo, hi - lo).to_pylist()
                out.extend((kind, r) for r in rows) if self._tagged else out.extend(rows)
        return out


class ParquetEvents(DynamicSource[Any]):
    """Nexmark events from Parquet files, in 1 s event-time slices (kinds interleaved).

    With several kinds the items are ``(kind, record)`` tuples, otherwise plain records. Bids get
    a ``seq`` field (arrival order) when ``seq`` is true.
    """

    def __init__(self, directory: Path, kinds: dict[str, list[str]], *, seq: bool = False):
        self._directory = directory
        self._kinds = kinds
        self._seq = seq

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        tables = {}
        for kind, cols in self._kinds.items():
            if worker_index != 0:
                break
            wanted = cols if "date_time" in cols else [*cols, "date_time"]
            table = pq.read_table(self._directory / f"{kind}.parquet", columns=wanted)
            if kind == "bid" and self._seq:
                table = table.append_column("seq", pa.array(range(table.num_rows), pa.int64()))
            tables[kind] = table
        return _Partition(tables, tagged=len(self._kinds) > 1)


_BID_ALL = ["auction", "bidder", "price", "channel", "url", "date_time", "extra"]
_AUCTION_ALL = [
    "id",
    "item_name",
    "description",
    "initial_bid",
    "reserve",
    "date_time",
    "expires",
    "seller",
    "category",
    "extra",
]


def _ts(rec: Any) -> datetime:
    value: datetime = rec[1]["date_time"] if isinstance(rec, tuple) else rec["date_time"]
    return value.replace(tzinfo=UTC)  # Arrow gives another UTC tzinfo; Bytewax wants this one


def _clock() -> win.EventClock[Any]:
    return win.EventClock(_ts, wait_for_system_duration=WAIT)


def _window_start(window_id: int, offset: timedelta) -> datetime:
    return EPOCH + offset * window_id


# --- queries ---------------------------------------------------------------------------------
Build = Callable[[Dataflow, Path], Stream[Rec]]


def _bids(flow: Dataflow, d: Path, cols: list[str], *, seq: bool = False) -> Stream[Rec]:
    return op.input("bids", flow, ParquetEvents(d, {"bid": cols}, seq=seq))


def _q0(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "date_time", "extra"])
    return op.map(
        "q0",
        bids,
        lambda b: {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"],
            "date_time": b["date_time"],
            "extra": b["extra"],
        },
    )


def _q1(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "date_time"])
    return op.map(
        "q1",
        bids,
        lambda b: {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"] * 0.908,
            "date_time": b["date_time"],
        },
    )


def _q2(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "price"])
    hits = op.filter("q2_filter", bids, lambda b: b["auction"] % 123 == 0)
    return op.map("q2", hits, lambda b: {"auction": b["auction"], "price": b["price"]})


def _q3(flow: Dataflow, d: Path) -> Stream[Rec]:
    events = op.input(
        "events",
        flow,
        ParquetEvents(
            d,
            {
                "person": ["id", "name", "city", "state", "date_time"],
                "auction": ["id", "seller", "category", "date_time"],
            },
        ),
    )

    def relevant(ev: tuple[str, Rec]) -> bool:
        kind, r = ev
        return r["state"] in ("OR", "ID", "CA") if kind == "person" else r["category"] == 10

    keyed = op.key_on(
        "by_person",
        op.filter("q3_filter", events, relevant),
        lambda ev: str(ev[1]["id"] if ev[0] == "person" else ev[1]["seller"]),
    )

    def join(state: Any, ev: tuple[str, Rec]) -> tuple[Any, list[Rec]]:
        person, pending = state if state is not None else (None, [])
        kind, r = ev
        if kind == "person":
            person = r
            out = [_q3_row(person, a) for a in pending]
            return (person, []), out
        if person is not None:
            return (person, pending), [_q3_row(person, r["id"])]
        return (None, [*pending, r["id"]]), []

    joined = op.stateful_flat_map("q3_join", keyed, join)
    return op.key_rm("q3", joined)


def _q3_row(person: Rec, auction_id: int) -> Rec:
    return {
        "name": person["name"],
        "city": person["city"],
        "state": person["state"],
        "id": auction_id,
    }


def _auction_bids(flow: Dataflow, d: Path, auction_cols: list[str], bid_cols: list[str]) -> Any:
    events = op.input(
        "events", flow, ParquetEvents(d, {"auction": auction_cols, "bid": bid_cols}, seq=True)
    )
    return op.key_on(
        "by_auction",
        events,
        lambda ev: str(ev[1]["id"] if ev[0] == "auction" else ev[1]["auction"]),
    )


def _winner_fold(state: Any, ev: tuple[str, Rec]) -> Any:
    """Per auction: the auction record, the best valid bid so far, bids seen before it."""
    auction, best, early = state
    kind, r = ev
    if kind == "auction":
        auction = r
        for b in early:
            best = _better(auction, best, b)
        return (auction, best, [])
    if auction is None:
        early.append(r)
        return (auction, best, early)
    return (auction, _better(auction, best, r), early)


def _better(auction: Rec, best: Rec | None, bid: Rec) -> Rec | None:
    if not auction["date_time"] <= bid["date_time"] <= auction["expires"]:
        return best
    if best is None:
        return bid
    if (-bid["price"], bid["date_time"], bid["seq"]) < (
        -best["price"],
        best["date_time"],
        best["seq"],
    ):
        return bid
    return best


def _winners(flow: Dataflow, d: Path, auction_cols: list[str], bid_cols: list[str]) -> Any:
    keyed = _auction_bids(flow, d, auction_cols, bid_cols)
    folded = op.fold_final("winner", keyed, lambda: (None, None, []), _winner_fold)
    return op.filter_map_value(
        "closed", folded, lambda s: (s[0], s[1]) if s[0] is not None and s[1] else None
    )


def _q4(flow: Dataflow, d: Path) -> Stream[Rec]:
    winners = _winners(
        flow, d, ["id", "category", "date_time", "expires"], ["auction", "price", "date_time"]
    )
    by_cat = op.key_on("by_category", op.key_rm("w", winners), lambda ab: str(ab[0]["category"]))
    sums = op.fold_final(
        "avg", by_cat, lambda: (0, 0), lambda s, ab: (s[0] + ab[1]["price"], s[1] + 1)
    )
    return op.map("q4", sums, lambda kv: {"category": int(kv[0]), "final": kv[1][0] / kv[1][1]})


def _q6(flow: Dataflow, d: Path) -> Stream[Rec]:
    winners = _winners(
        flow, d, ["id", "seller", "date_time", "expires"], ["auction", "price", "date_time"]
    )
    by_seller = op.key_on("by_seller", op.key_rm("w", winners), lambda ab: str(ab[0]["seller"]))

    def keep(s: list[tuple[Any, int, int]], ab: tuple[Rec, Rec]) -> list[tuple[Any, int, int]]:
        s.append((ab[0]["expires"], ab[0]["id"], ab[1]["price"]))
        s.sort()
        return s[-10:]

    last10 = op.fold_final("last10", by_seller, list, keep)
    return op.map(
        "q6",
        last10,
        lambda kv: {"seller": int(kv[0]), "avg_price": sum(p for *_, p in kv[1]) / len(kv[1])},
    )


def _q9(flow: Dataflow, d: Path) -> Stream[Rec]:
    winners = _winners(flow, d, _AUCTION_ALL, ["auction", "bidder", "price", "date_time", "extra"])

    def row(ab: tuple[Rec, Rec]) -> Rec:
        a, b = ab
        return {
            **a,
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"],
            "bid_date_time": b["date_time"],
            "bid_extra": b["extra"],
        }

    return op.map("q9", op.key_rm("w", winners), row)


def _q5(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "date_time"])
    hop = timedelta(seconds=2)
    counts = win.count_window(
        "counts",
        bids,
        _clock(),
        win.SlidingWindower(length=timedelta(seconds=10), offset=hop, align_to=EPOCH),
        lambda b: str(b["auction"]),
    )
    per_window = op.key_on(
        "by_window",
        op.map("flat", counts.down, lambda kv: (kv[1][0], int(kv[0]), kv[1][1])),
        lambda t: str(t[0]),
    )

    def top(s: tuple[int, list[int]], t: tuple[int, int, int]) -> tuple[int, list[int]]:
        best, auctions = s
        if t[2] > best:
            return (t[2], [t[1]])
        if t[2] == best:
            auctions.append(t[1])
        return (best, auctions)

    tops = op.fold_final("top", per_window, lambda: (0, []), top)

    def rows(kv: tuple[str, tuple[int, list[int]]]) -> list[Rec]:
        start = _window_start(int(kv[0]), hop)
        return [
            {
                "window_start": start,
                "window_end": start + timedelta(seconds=10),
                "auction": a,
                "num": kv[1][0],
            }
            for a in kv[1][1]
        ]

    return op.flat_map("q5", tops, rows)


def _q7(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "date_time"])
    keyed = op.key_on("all", bids, lambda _: "all")
    size = timedelta(seconds=10)

    def fold(s: tuple[int, list[Rec]], b: Rec) -> tuple[int, list[Rec]]:
        if b["price"] > s[0]:
            return (b["price"], [b])
        if b["price"] == s[0]:
            s[1].append(b)
        return s

    def merge(a: tuple[int, list[Rec]], b: tuple[int, list[Rec]]) -> tuple[int, list[Rec]]:
        return a if a[0] > b[0] else b if b[0] > a[0] else (a[0], a[1] + b[1])

    out = win.fold_window(
        "max", keyed, _clock(), win.TumblingWindower(size, EPOCH), lambda: (-1, []), fold, merge
    )

    def rows(kv: tuple[str, tuple[int, tuple[int, list[Rec]]]]) -> list[Rec]:
        wid, (_, bids_) = kv[1]
        start = _window_start(wid, size)
        return [{"window_start": start, "window_end": start + size, **b} for b in bids_]

    return op.flat_map("q7", out.down, rows)


def _q8(flow: Dataflow, d: Path) -> Stream[Rec]:
    events = op.input(
        "events",
        flow,
        ParquetEvents(
            d, {"person": ["id", "name", "date_time"], "auction": ["seller", "date_time"]}
        ),
    )
    keyed = op.key_on(
        "by_person", events, lambda ev: str(ev[1]["id"] if ev[0] == "person" else ev[1]["seller"])
    )
    size = timedelta(seconds=10)

    def fold(s: tuple[str | None, bool], ev: tuple[str, Rec]) -> tuple[str | None, bool]:
        return (ev[1]["name"], s[1]) if ev[0] == "person" else (s[0], True)

    def merge(a: tuple[str | None, bool], b: tuple[str | None, bool]) -> tuple[str | None, bool]:
        return (a[0] or b[0], a[1] or b[1])

    out = win.fold_window(
        "both",
        keyed,
        _clock(),
        win.TumblingWindower(size, EPOCH),
        lambda: (None, False),
        fold,
        merge,
    )

    def row(kv: tuple[str, tuple[int, tuple[str | None, bool]]]) -> Rec | None:
        wid, (name, sold) = kv[1]
        if name is None or not sold:
            return None
        return {"id": int(kv[0]), "name": name, "window_start": _window_start(wid, size)}

    return op.filter_map("q8", out.down, row)


def _q11(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["bidder", "date_time"])
    keyed = op.key_on("by_bidder", bids, lambda b: str(b["bidder"]))
    gap = timedelta(seconds=10)

    def fold(s: tuple[int, Any, Any], b: Rec) -> tuple[int, Any, Any]:
        t = b["date_time"]
        return (
            s[0] + 1,
            t if s[1] is None or t < s[1] else s[1],
            t if s[2] is None or t > s[2] else s[2],
        )

    def merge(a: tuple[int, Any, Any], b: tuple[int, Any, Any]) -> tuple[int, Any, Any]:
        return (a[0] + b[0], min(a[1], b[1]), max(a[2], b[2]))

    out = win.fold_window(
        "sessions", keyed, _clock(), win.SessionWindower(gap), lambda: (0, None, None), fold, merge
    )
    return op.map(
        "q11",
        out.down,
        lambda kv: {
            "bidder": int(kv[0]),
            "bid_count": kv[1][1][0],
            "window_start": kv[1][1][1],
            "window_end": kv[1][1][2] + gap,
        },
    )


def _q12(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["bidder", "date_time"])
    size = timedelta(seconds=10)
    counts = win.count_window(
        "counts",
        bids,
        win.SystemClock(),
        win.TumblingWindower(size, EPOCH),
        lambda b: str(b["bidder"]),
    )
    return op.map(
        "q12",
        counts.down,
        lambda kv: {
            "bidder": int(kv[0]),
            "bid_count": kv[1][1],
            "window_start": _window_start(kv[1][0], size),
            "window_end": _window_start(kv[1][0], size) + size,
        },
    )


def _q13(flow: Dataflow, d: Path) -> Stream[Rec]:
    side = {k: f"side-{k}" for k in range(10_000)}
    bids = _bids(flow, d, ["auction", "bidder", "price", "date_time"])
    return op.map("q13", bids, lambda b: {**b, "value": side[b["auction"] % 10_000]})


def _hour_class(t: datetime) -> str:
    h = t.hour
    return "dayTime" if 8 <= h <= 18 else "nightTime" if h <= 6 or h >= 20 else "otherTime"


def _q14(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "date_time", "extra"])
    hits = op.filter(
        "q14_filter", bids, lambda b: 1_000_000_000 < 908 * b["price"] < 50_000_000_000
    )
    return op.map(
        "q14",
        hits,
        lambda b: {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"] * 0.908,
            "bid_time_type": _hour_class(b["date_time"]),
            "date_time": b["date_time"],
            "extra": b["extra"],
            "c_counts": b["extra"].count("c"),
        },
    )


def _rank(price: int) -> int:
    return 1 if price < 10_000 else 2 if price < 1_000_000 else 3


def _stats_fold(s: dict[str, Any], b: Rec) -> dict[str, Any]:
    r = _rank(b["price"])
    s["bids"][0] += 1
    s["bids"][r] += 1
    for col in ("bidder", "auction"):
        s[col][0].add(b[col])
        s[col][r].add(b[col])
    if "minute" in s:
        minute = b["date_time"].strftime("%H:%M")
        s["minute"] = max(s["minute"], minute)
    return s


def _stats_row(s: dict[str, Any]) -> Rec:
    names = ("total", "rank1", "rank2", "rank3")
    out: Rec = {f"{n}_bids": s["bids"][i] for i, n in enumerate(names)}
    for col in ("bidder", "auction"):
        out.update({f"{n}_{col}s": len(s[col][i]) for i, n in enumerate(names)})
    return out


def _new_stats(minute: bool) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        s: dict[str, Any] = {
            "bids": [0, 0, 0, 0],
            "bidder": [set(), set(), set(), set()],
            "auction": [set(), set(), set(), set()],
        }
        if minute:
            s["minute"] = ""
        return s

    return build


def _q15(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "date_time"])
    keyed = op.key_on("by_day", bids, lambda b: b["date_time"].strftime("%Y-%m-%d"))
    stats = op.fold_final("stats", keyed, _new_stats(False), _stats_fold)
    return op.map("q15", stats, lambda kv: {"day": kv[0], **_stats_row(kv[1])})


def _q16(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "channel", "date_time"])
    keyed = op.key_on(
        "by_channel_day",
        bids,
        lambda b: b["channel"] + "\x00" + b["date_time"].strftime("%Y-%m-%d"),
    )
    stats = op.fold_final("stats", keyed, _new_stats(True), _stats_fold)

    def row(kv: tuple[str, dict[str, Any]]) -> Rec:
        channel, day = kv[0].split("\x00")
        return {"channel": channel, "day": day, "minute": kv[1]["minute"], **_stats_row(kv[1])}

    return op.map("q16", stats, row)


def _q17(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "price", "date_time"])
    keyed = op.key_on(
        "by_auction_day", bids, lambda b: f"{b['auction']}/{b['date_time'].strftime('%Y-%m-%d')}"
    )

    def fold(s: list[int], b: Rec) -> list[int]:
        p = b["price"]
        s[0] += 1
        s[_rank(p)] += 1
        s[4] = min(s[4], p)
        s[5] = max(s[5], p)
        s[6] += p
        return s

    stats = op.fold_final("stats", keyed, lambda: [0, 0, 0, 0, 2**63 - 1, -1, 0], fold)

    def row(kv: tuple[str, list[int]]) -> Rec:
        auction, day = kv[0].split("/")
        s = kv[1]
        return {
            "auction": int(auction),
            "day": day,
            "total_bids": s[0],
            "rank1_bids": s[1],
            "rank2_bids": s[2],
            "rank3_bids": s[3],
            "min_price": s[4],
            "max_price": s[5],
            "avg_price": s[6] / s[0],
            "sum_price": s[6],
        }

    return op.map("q17", stats, row)


def _q18(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, _BID_ALL)
    keyed = op.key_on("by_bidder_auction", bids, lambda b: f"{b['bidder']}/{b['auction']}")
    last = op.reduce_final("last", keyed, lambda a, b: b if b["date_time"] >= a["date_time"] else a)
    return op.key_rm("q18", last)


def _q19(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, _BID_ALL, seq=True)
    keyed = op.key_on("by_auction", bids, lambda b: str(b["auction"]))

    def fold(top: list[tuple[int, int, Rec]], b: Rec) -> list[tuple[int, int, Rec]]:
        item = (-b["price"], b["seq"], b)
        if len(top) < 10 or item[:2] < top[-1][:2]:
            bisect.insort(top, item, key=lambda t: t[:2])
            del top[10:]
        return top

    tops = op.fold_final("top10", keyed, list, fold)

    def rows(kv: tuple[str, list[tuple[int, int, Rec]]]) -> list[Rec]:
        out = []
        for rank, (_, _, b) in enumerate(kv[1], start=1):
            out.append({k: b[k] for k in _BID_ALL} | {"rank_number": rank})
        return out

    return op.flat_map("q19", tops, rows)


def _q20(flow: Dataflow, d: Path) -> Stream[Rec]:
    keyed = _auction_bids(flow, d, _AUCTION_ALL, _BID_ALL)

    def row(a: Rec, b: Rec) -> Rec:
        return {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"],
            "channel": b["channel"],
            "url": b["url"],
            "bid_date_time": b["date_time"],
            "bid_extra": b["extra"],
            "item_name": a["item_name"],
            "description": a["description"],
            "initial_bid": a["initial_bid"],
            "reserve": a["reserve"],
            "auction_date_time": a["date_time"],
            "expires": a["expires"],
            "seller": a["seller"],
            "category": a["category"],
            "auction_extra": a["extra"],
        }

    def join(state: Any, ev: tuple[str, Rec]) -> tuple[Any, list[Rec]]:
        auction, pending = state if state is not None else (None, [])
        kind, r = ev
        if kind == "auction":
            if r["category"] != 10:
                return (r, []), []
            return (r, []), [row(r, b) for b in pending]
        if auction is None:
            return (None, [*pending, r]), []
        return (auction, pending), [row(auction, r)] if auction["category"] == 10 else []

    return op.key_rm("q20", op.stateful_flat_map("join", keyed, join))


_HOT = {"apple": "0", "google": "1", "facebook": "2", "baidu": "3"}


def _channel_id(b: Rec) -> Rec | None:
    cid = _HOT.get(b["channel"].lower())
    if cid is None:
        url = b["url"]
        i = url.find("channel_id=")
        if i < 0 or (i > 0 and url[i - 1] != "&"):
            return None
        cid = url[i + len("channel_id=") :].split("&", 1)[0]
    return {
        "auction": b["auction"],
        "bidder": b["bidder"],
        "price": b["price"],
        "channel": b["channel"],
        "channel_id": cid,
    }


def _q21(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "channel", "url"])
    return op.filter_map("q21", bids, _channel_id)


def _q22(flow: Dataflow, d: Path) -> Stream[Rec]:
    bids = _bids(flow, d, ["auction", "bidder", "price", "channel", "url"])

    def row(b: Rec) -> Rec:
        parts = b["url"].split("/")
        dirs = [parts[k] if k < len(parts) else None for k in (3, 4, 5)]
        return {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"],
            "channel": b["channel"],
            "dir1": dirs[0],
            "dir2": dirs[1],
            "dir3": dirs[2],
        }

    return op.map("q22", bids, row)


QUERIES: dict[str, Build] = {
    "q0": _q0,
    "q1": _q1,
    "q2": _q2,
    "q3": _q3,
    "q4": _q4,
    "q5": _q5,
    "q6": _q6,
    "q7": _q7,
    "q8": _q8,
    "q9": _q9,
    "q11": _q11,
    "q12": _q12,
    "q13": _q13,
    "q14": _q14,
    "q15": _q15,
    "q16": _q16,
    "q17": _q17,
    "q18": _q18,
    "q19": _q19,
    "q20": _q20,
    "q21": _q21,
    "q22": _q22,
}


def _schema(query: str, rows: list[Rec]) -> pa.Schema:
    """Arrow schema of a result: column order from the contract, types from the values."""
    columns = spec(query).columns
    fields = []
    for c in columns:
        sample = next((r[c] for r in rows if r.get(c) is not None), None)
        if isinstance(sample, bool):
            t = pa.bool_()
        elif isinstance(sample, int):
            t = pa.int64()
        elif isinstance(sample, float):
            t = pa.float64()
        elif isinstance(sample, datetime):
            t = pa.timestamp("ms", tz="UTC")
        else:
            t = pa.string()
        fields.append(pa.field(c, t))
    return pa.schema(fields)


def run(query: str, input_dir: Path, output: Path) -> int:
    """Run ``query`` on Bytewax over ``input_dir``; write the result Parquet to ``output``."""
    build = QUERIES.get(query)
    if build is None:
        msg = f"nexmark bytewax peer: no flow for {query}; available: {sorted(QUERIES)}"
        raise ConfigError(msg)
    flow = Dataflow(f"nexmark_{query}")
    out: list[Rec] = []
    op.output("out", build(flow, Path(input_dir)), TestingSink(out))
    run_main(flow)
    schema = _schema(query, out)
    table = pa.Table.from_pylist(out, schema=schema)
    pq.write_table(table, output)
    return table.num_rows


# --- throttled runs (latency) ----------------------------------------------------------------
class _Clock:
    """Wall-clock origin shared by the throttled source and the timing sink."""

    t0: float = 0.0


class _ThrottledPartition(StatelessSourcePartition[Any]):
    def __init__(self, records: list[Rec], due: Any, clock: _Clock) -> None:
        self._records = records
        self._due = due
        self._pos = 0
        clock.t0 = time.time()
        self._clock = clock

    def next_batch(self) -> Iterable[Any]:
        if self._pos >= len(self._records):
            raise StopIteration
        now = time.time() - self._clock.t0
        end = int(np.searchsorted(self._due, now, side="right"))
        batch = self._records[self._pos : end]
        self._pos = max(self._pos, end)
        return batch

    def next_awake(self) -> datetime | None:
        if self._pos >= len(self._records):
            return None
        return datetime.fromtimestamp(self._clock.t0 + float(self._due[self._pos]), tz=UTC)


class _ThrottledSource(DynamicSource[Any]):
    def __init__(self, records: list[Rec], due: Any, clock: _Clock) -> None:
        self._args = (records, due, clock)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ThrottledPartition:
        return _ThrottledPartition(*self._args)


class _TimingPartition(StatelessSinkPartition[Any]):
    def __init__(self, clock: _Clock, latencies: list[float], rows: list[Rec] | None) -> None:
        self._clock = clock
        self._latencies = latencies
        self._rows = rows

    def write_batch(self, items: list[Any]) -> None:
        now = time.time() - self._clock.t0
        if self._rows is not None:  # window results: keep them with their arrival time
            self._rows.extend({**row, "_arrived": now} for row in items)
        else:
            self._latencies.extend(now - due for due, _ in items)


class _TimingSink(DynamicSink[Any]):
    def __init__(self, clock: _Clock, latencies: list[float], rows: list[Rec] | None) -> None:
        self._args = (clock, latencies, rows)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TimingPartition:
        return _TimingPartition(*self._args)


_PANE = timedelta(seconds=2)
_PANES_PER_WINDOW = 5  # 10 s windows sliding by 2 s


class _HotWindows(op.StatefulBatchLogic[Any, Rec, Any]):
    """q5, second step: 2 s pane counts in (pane id, {auction: bids}); out, per 10 s window
    ending at a closed pane's end, the auctions tied for the most bids. Windows that end after
    the last pane are emitted at the end of input."""

    def __init__(self) -> None:
        self.panes: dict[int, dict[int, int]] = {}
        self.done = -(2**62)  # start pane id of the last emitted window

    def _window(self, first: int) -> list[Rec]:
        total: dict[int, int] = {}
        for pane in range(first, first + _PANES_PER_WINDOW):
            for auction, n in self.panes.get(pane, {}).items():
                total[auction] = total.get(auction, 0) + n
        if not total:
            return []
        best = max(total.values())
        start = _window_start(first, _PANE)
        end = start + _PANE * _PANES_PER_WINDOW
        return [
            {"window_start": start, "window_end": end, "auction": a, "num": n}
            for a, n in total.items()
            if n == best
        ]

    def _emit_until(self, last_first: int) -> list[Rec]:
        if self.done < -(2**61):
            self.done = min(self.panes) - _PANES_PER_WINDOW
        out: list[Rec] = []
        for first in range(self.done + 1, last_first + 1):
            out.extend(self._window(first))
        self.done = max(self.done, last_first)
        for pane in [p for p in self.panes if p <= self.done]:
            del self.panes[pane]
        return out

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Rec], bool]:
        newest = max(v[0] for v in values)
        for pane, counts in values:
            self.panes[pane] = counts
        return self._emit_until(newest - _PANES_PER_WINDOW + 1), False

    def on_eof(self) -> tuple[Iterable[Rec], bool]:
        if not self.panes:
            return [], True
        return self._emit_until(max(self.panes)), True

    def snapshot(self) -> Any:
        return (self.panes, self.done)


def _count_bid(counts: dict[int, int], bid: Rec) -> dict[int, int]:
    counts[bid["auction"]] = counts.get(bid["auction"], 0) + 1
    return counts


def _merge_counts(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    for k, n in b.items():
        a[k] = a.get(k, 0) + n
    return a


class _MaxTimeLogic(win.ClockLogic[Rec, datetime]):
    def __init__(self, resume: datetime | None) -> None:
        self.max = resume if resume is not None else datetime.min.replace(tzinfo=UTC)

    def before_batch(self) -> None:
        pass

    def on_item(self, value: Rec) -> tuple[datetime, datetime]:
        ts: datetime = value["date_time"]
        self.max = max(self.max, ts)
        return ts, self.max

    def on_notify(self) -> datetime:
        return self.max

    def on_eof(self) -> datetime:
        return datetime.max.replace(tzinfo=UTC)

    def to_system_utc(self, timestamp: datetime) -> datetime | None:
        return None

    def snapshot(self) -> datetime:
        return self.max


class _MaxTimeClock(win.Clock[Rec, datetime]):
    """Watermark = the largest event time seen (tideflow's with no delay). Bytewax's
    ``EventClock`` also advances its watermark with the system time since the newest item, so
    with no waiting an in-order input's records that share a millisecond across two batches
    would be late (half of q5's counts were dropped in a 50 k/s run)."""

    def build(self, resume_state: datetime | None) -> _MaxTimeLogic:
        return _MaxTimeLogic(resume_state)


def _hot_items_streaming(bids: Stream[Rec]) -> Stream[Rec]:
    """q5 with results as soon as the watermark passes a window's end: bids counted per
    auction in 2 s panes under one key (one clock over all bids: the watermark is the
    largest event time seen, the input being in time order), then each 10 s window summed from its five panes."""
    keyed = op.key_on("all", bids, lambda _: "all")
    panes = win.fold_window(
        "panes",
        keyed,
        _MaxTimeClock(),
        win.TumblingWindower(length=_PANE, align_to=EPOCH),
        dict,
        _count_bid,
        _merge_counts,
    )
    windows = op.stateful_batch("hot", panes.down, lambda _resume: _HotWindows())
    return op.map("rows", windows, lambda kv: kv[1])


def run_latency(
    query: str, bids: pa.Table, rate: float, *, epoch_ms: float = 1.0
) -> tuple[list[float], list[Rec] | None, float]:
    """Run q0-q2 or q5 on Bytewax with bids released at ``rate`` events/s.

    Returns per-row latencies (q0-q2), the q5 result rows with their arrival time
    (``_arrived``, seconds after the start), and the elapsed time. ``epoch_ms`` is Bytewax's
    ``epoch_interval``.
    """
    fns: dict[str, Callable[[Rec], Rec | None]] = {
        "q0": lambda b: {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"],
            "date_time": b["date_time"],
            "extra": b["extra"],
        },
        "q1": lambda b: {
            "auction": b["auction"],
            "bidder": b["bidder"],
            "price": b["price"] * 0.908,
            "date_time": b["date_time"],
        },
        "q2": lambda b: (
            {"auction": b["auction"], "price": b["price"]} if b["auction"] % 123 == 0 else None
        ),
    }
    fn = fns.get(query)
    if fn is None and query != "q5":
        msg = f"nexmark bytewax latency: no flow for {query}; available: {sorted(fns)} and q5"
        raise ConfigError(msg)
    due = bids.column("event_number").to_numpy() / rate
    if fn is None:  # q5 reads the auction and the time only (as tideflow's pipeline does)
        bids = bids.select(["auction", "date_time"])
    else:
        bids = bids.drop_columns(["event_number"])
    records = bids.to_pylist()
    for rec, d in zip(records, due.tolist(), strict=True):
        rec["_due"] = d
    clock = _Clock()
    latencies: list[float] = []
    rows: list[Rec] | None = [] if query == "q5" else None
    flow = Dataflow(f"nexmark_latency_{query}")
    src = op.input("bids", flow, _ThrottledSource(records, due, clock))
    if fn is None:
        results: Stream[Any] = _hot_items_streaming(src)
    else:
        f = fn
        results = op.filter_map("query", src, lambda b: (b["_due"], r) if (r := f(b)) else None)
    op.output("timing", results, _TimingSink(clock, latencies, rows))
    run_main(flow, epoch_interval=timedelta(milliseconds=epoch_ms))
    return latencies, rows, time.time() - clock.t0
