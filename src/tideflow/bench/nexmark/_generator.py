"""A vectorized Nexmark event generator (NumPy + Arrow).

Events are produced in fixed chunks of :data:`CHUNK_EVENTS` event numbers; each chunk draws from
its own random stream seeded by ``(seed, chunk index)``, so the output depends only on the
settings, never on how the caller batches it. Within a chunk every field is drawn for all events
at once (no per-event Python).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tideflow._errors import ConfigError
from tideflow.bench.nexmark import _model as m

__all__ = ["EventBatch", "generate", "generate_tables", "iter_batches", "write_events"]

log = logging.getLogger(__name__)

CHUNK_EVENTS = 100_000
"""Event numbers per random-stream chunk (part of the determinism contract)."""

Format = Literal["parquet", "jsonl"]
FORMATS: tuple[str, ...] = ("parquet", "jsonl")

I64 = npt.NDArray[np.int64]

# Letters used for random strings; a byte b maps to _LETTERS[b % 26].
_LUT = np.frombuffer(bytes(ord("a") + (i % 26) for i in range(256)), dtype=np.uint8)


def _random_strings(rng: np.random.Generator, lengths: I64) -> pa.StringArray:
    """Random lowercase strings of the given lengths, built directly as Arrow buffers."""
    n = len(lengths)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    data = _LUT[np.frombuffer(rng.bytes(total), dtype=np.uint8)] if total else np.zeros(0, np.uint8)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _uniform_below(rng: np.random.Generator, bound: I64 | int, size: int) -> I64:
    """Uniform integers in ``[0, bound)`` for a per-element ``bound`` (>= 1)."""
    return (rng.random(size) * bound).astype(np.int64)


def _extra(rng: np.random.Generator, current: I64, desired_avg: int) -> pa.StringArray:
    """Padding so the average record size reaches ``desired_avg`` bytes (+/- 20 %)."""
    delta_avg = np.maximum(desired_avg - current, 0)
    spread = np.rint(delta_avg * 0.2).astype(np.int64)
    lengths = delta_avg - spread + _uniform_below(rng, 2 * spread + 1, len(current))
    return _random_strings(rng, np.where(delta_avg > 0, lengths, 0))


def _prices(rng: np.random.Generator, size: int) -> I64:
    """Log-uniform prices in cents between $1 and $1,000,000."""
    return np.rint(10.0 ** (rng.random(size) * 6.0) * 100.0).astype(np.int64)


def _last_person(n: I64) -> I64:
    """Base-0 id of the newest person at event number ``n``."""
    return n // m.TOTAL_PROPORTION  # one person per group of 50 events


def _last_auction(n: I64) -> I64:
    """Base-0 id of the newest auction at event number ``n`` (may be -1 at the very start)."""
    epoch = n // m.TOTAL_PROPORTION
    off = n % m.TOTAL_PROPORTION
    in_group = np.clip(off - m.PERSON_PROPORTION, -1, m.AUCTION_PROPORTION - 1)
    return np.where(
        in_group < 0,
        (epoch - 1) * m.AUCTION_PROPORTION + m.AUCTION_PROPORTION - 1,
        epoch * m.AUCTION_PROPORTION + in_group,
    )


def _some_person(rng: np.random.Generator, n: I64) -> I64:
    """A random recently active person (may be one not created yet, as the model allows)."""
    num_people = _last_person(n) + 1
    active = np.minimum(num_people, m.NUM_ACTIVE_PEOPLE)
    return num_people - active + _uniform_below(rng, active + m.PERSON_ID_LEAD, len(n))


def _some_auction(rng: np.random.Generator, n: I64) -> I64:
    """A random auction among those in flight (may be one not created yet)."""
    last = np.maximum(_last_auction(n), 0)
    low: I64 = np.maximum(last - m.NUM_IN_FLIGHT_AUCTIONS, 0)
    picked: I64 = low + _uniform_below(rng, last - low + 1 + m.AUCTION_ID_LEAD, len(n))
    return picked


def _timestamps_ms(settings: m.GeneratorSettings, n: I64) -> I64:
    return settings.base_ms + (n * settings.interval_us) // 1000


@dataclasses.dataclass(frozen=True)
class _Channels:
    names: pa.Array
    urls: pa.Array


def _channels(seed: int) -> _Channels:
    """The channel table: 4 hot channels then ``channel-0`` .. ``channel-9999`` with urls."""
    rng = np.random.default_rng([seed, 0x7FFF_FFFF])
    total = len(m.HOT_CHANNELS) + m.NUM_CHANNELS
    dirs = [_random_strings(rng, 3 + _uniform_below(rng, 5, total)) for _ in range(3)]
    base = pc.binary_join_element_wise(
        "https://www.nexmark.com", dirs[0], dirs[1], dirs[2], "item.htm?query=1", "/"
    )
    idx = np.arange(m.NUM_CHANNELS, dtype=np.int64)
    with_id = rng.random(m.NUM_CHANNELS) < m.CHANNEL_ID_SHARE
    channel_id = (idx * 2_654_435_761 + 12_345) % 2_147_483_647  # a fixed scramble of i
    suffix = np.where(with_id, np.char.add("&channel_id=", channel_id.astype(str)), "")
    suffix_all = pa.array(["", "", "", "", *suffix.tolist()], pa.string())
    urls = pc.binary_join_element_wise(base, suffix_all, "")
    names = pa.array([*m.HOT_CHANNELS, *[f"channel-{i}" for i in range(m.NUM_CHANNELS)]])
    return _Channels(names=names, urls=urls)


def _strings_of(pool: tuple[str, ...], idx: I64) -> pa.Array:
    return pa.array(pool, pa.string()).take(pa.array(idx))


def _credit_cards(rng: np.random.Generator, size: int) -> pa.StringArray:
    digits = (np.frombuffer(rng.bytes(size * 19), dtype=np.uint8) % 10 + ord("0")).reshape(size, 19)
    digits[:, [4, 9, 14]] = ord(" ")
    offsets = np.arange(size + 1, dtype=np.int32) * 19
    return pa.StringArray.from_buffers(
        size, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(digits))
    )


def _chunk(
    settings: m.GeneratorSettings, channels: _Channels, start: int, stop: int
) -> dict[str, pa.Table]:
    """The three tables for event numbers ``[start, stop)``, with an ``event_number`` column."""
    rng = np.random.default_rng([settings.seed, start // CHUNK_EVENTS])
    n = np.arange(start, stop, dtype=np.int64)
    off = n % m.TOTAL_PROPORTION
    out: dict[str, pa.Table] = {}

    # persons
    pn = n[off < m.PERSON_PROPORTION]
    k = len(pn)
    first = _uniform_below(rng, len(m.FIRST_NAMES), k)
    last = _uniform_below(rng, len(m.LAST_NAMES), k)
    full = [f"{a} {b}" for a in m.FIRST_NAMES for b in m.LAST_NAMES]
    name = pa.array(full, pa.string()).take(pa.array(first * len(m.LAST_NAMES) + last))
    email = pc.binary_join_element_wise(
        _random_strings(rng, np.full(k, 7, np.int64)),
        pc.binary_join_element_wise(_random_strings(rng, np.full(k, 5, np.int64)), ".com", ""),
        "@",
    )
    card = _credit_cards(rng, k)
    city = _strings_of(m.US_CITIES, _uniform_below(rng, len(m.US_CITIES), k))
    state = _strings_of(m.US_STATES, _uniform_below(rng, len(m.US_STATES), k))
    size = 8 + sum(
        pc.utf8_length(a).to_numpy(zero_copy_only=False).astype(np.int64)
        for a in (name, email, card, city, state)
    )
    out["person"] = pa.table(
        {
            "id": _last_person(pn) + m.FIRST_PERSON_ID,
            "name": name,
            "email_address": email,
            "credit_card": card,
            "city": city,
            "state": state,
            "date_time": _timestamps_ms(settings, pn),
            "extra": _extra(rng, size, m.AVG_PERSON_BYTES),
            "event_number": pn,
        }
    )

    # auctions
    an = n[(off >= m.PERSON_PROPORTION) & (off < m.PERSON_PROPORTION + m.AUCTION_PROPORTION)]
    k = len(an)
    hot = _uniform_below(rng, m.HOT_SELLER_RATIO, k) > 0
    hot_seller = (_last_person(an) // m.HOT_GROUP) * m.HOT_GROUP
    seller = np.where(hot, hot_seller, _some_person(rng, an)) + m.FIRST_PERSON_ID
    category = m.FIRST_CATEGORY_ID + _uniform_below(rng, m.NUM_CATEGORIES, k)
    initial = _prices(rng, k)
    reserve = initial + _prices(rng, k)
    ts = _timestamps_ms(settings, an)
    # Auctions last up to twice the time in which NUM_IN_FLIGHT_AUCTIONS new ones open.
    ahead = (m.NUM_IN_FLIGHT_AUCTIONS * m.TOTAL_PROPORTION) // m.AUCTION_PROPORTION
    horizon = _timestamps_ms(settings, an + ahead) - ts
    expires = ts + 1 + _uniform_below(rng, np.maximum(2 * horizon, 1), k)
    item_len = 3 + _uniform_below(rng, 17, k)
    desc_len = 3 + _uniform_below(rng, 97, k)
    out["auction"] = pa.table(
        {
            "id": _last_auction(an) + m.FIRST_AUCTION_ID,
            "item_name": _random_strings(rng, item_len),
            "description": _random_strings(rng, desc_len),
            "initial_bid": initial,
            "reserve": reserve,
            "date_time": ts,
            "expires": expires,
            "seller": seller,
            "category": category,
            "extra": _extra(rng, 8 + item_len + desc_len + 40, m.AVG_AUCTION_BYTES),
            "event_number": an,
        }
    )

    # bids
    bn = n[off >= m.PERSON_PROPORTION + m.AUCTION_PROPORTION]
    k = len(bn)
    hot = _uniform_below(rng, m.HOT_AUCTION_RATIO, k) > 0
    hot_auction = (np.maximum(_last_auction(bn), 0) // m.HOT_GROUP) * m.HOT_GROUP
    auction = np.where(hot, hot_auction, _some_auction(rng, bn)) + m.FIRST_AUCTION_ID
    hot = _uniform_below(rng, m.HOT_BIDDER_RATIO, k) > 0
    hot_bidder = (_last_person(bn) // m.HOT_GROUP) * m.HOT_GROUP + 1
    bidder = np.where(hot, hot_bidder, _some_person(rng, bn)) + m.FIRST_PERSON_ID
    price = _prices(rng, k)
    hot = _uniform_below(rng, m.HOT_CHANNEL_RATIO, k) > 0
    channel = np.where(
        hot,
        _uniform_below(rng, len(m.HOT_CHANNELS), k),
        len(m.HOT_CHANNELS) + _uniform_below(rng, m.NUM_CHANNELS, k),
    )
    take = pa.array(channel)
    out["bid"] = pa.table(
        {
            "auction": auction,
            "bidder": bidder,
            "price": price,
            "channel": channels.names.take(take),
            "url": channels.urls.take(take),
            "date_time": _timestamps_ms(settings, bn),
            "extra": _extra(rng, np.full(k, 32, np.int64), m.AVG_BID_BYTES),
            "event_number": bn,
        }
    )
    return {kind: _conform(kind, table) for kind, table in out.items()}


def _conform(kind: str, table: pa.Table) -> pa.Table:
    schema = m.SCHEMAS[kind].append(pa.field("event_number", pa.int64()))
    cols = []
    for field in schema:
        col = table.column(field.name)
        if pa.types.is_timestamp(field.type):
            col = col.cast(pa.int64()).cast(field.type)
        cols.append(col.cast(field.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _chunks(settings: m.GeneratorSettings) -> Iterator[tuple[int, int, dict[str, pa.Table]]]:
    channels = _channels(settings.seed)
    for start in range(0, settings.events, CHUNK_EVENTS):
        stop = min(start + CHUNK_EVENTS, settings.events)
        yield start, stop, _chunk(settings, channels, start, stop)


def generate_tables(settings: m.GeneratorSettings) -> dict[str, pa.Table]:
    """Generate all events in memory, as one Arrow table per kind (with ``event_number``).

    Parameters
    ----------
    settings
        What to generate.

    Returns
    -------
    dict
        ``{"person": ..., "auction": ..., "bid": ...}``, each in event-time order, with the
        contract columns plus ``event_number`` (the position in the interleaved stream).

    Examples
    --------
    >>> t = generate_tables(m.GeneratorSettings(events=500, seed=1))
    >>> [t[k].num_rows for k in ("person", "auction", "bid")]
    [10, 30, 460]
    """
    parts: dict[str, list[pa.Table]] = {k: [] for k in m.KINDS}
    for _, _, chunk in _chunks(settings):
        for kind, table in chunk.items():
            parts[kind].append(table)
    return {
        kind: pa.concat_tables(parts[kind])
        if parts[kind]
        else m.SCHEMAS[kind].append(pa.field("event_number", pa.int64())).empty_table()
        for kind in m.KINDS
    }


def write_events(
    settings: m.GeneratorSettings, out: Path | str, *, fmt: Format = "parquet"
) -> dict[str, int]:
    """Generate events and write ``person``, ``auction`` and ``bid`` files into ``out``.

    Parquet files carry exactly the contract columns (``date_time``/``expires`` as
    ``timestamp[ms, UTC]``); JSON lines files carry the same fields with times as epoch
    milliseconds. Rows are in event-time order. Memory stays bounded (chunked writing).

    Parameters
    ----------
    settings
        What to generate.
    out
        Directory to write into (created if missing).
    fmt
        ``"parquet"`` or ``"jsonl"``.

    Returns
    -------
    dict
        Rows written per kind.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_events(m.GeneratorSettings(events=100), d)
    {'person': 2, 'auction': 6, 'bid': 92}
    """
    if fmt not in FORMATS:
        msg = f"nexmark generate: unknown --format {fmt!r}; expected one of {list(FORMATS)}"
        raise ConfigError(msg)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(m.KINDS, 0)
    if fmt == "parquet":
        writers = {
            kind: pq.ParquetWriter(
                directory / f"{kind}.parquet",
                m.SCHEMAS[kind],
                compression="zstd",
                compression_level=1,
            )
            for kind in m.KINDS
        }
        try:
            for _, _, chunk in _chunks(settings):
                for kind, table in chunk.items():
                    writers[kind].write_table(table.drop_columns(["event_number"]))
                    counts[kind] += table.num_rows
        finally:
            for writer in writers.values():
                writer.close()
    else:
        files = {kind: (directory / f"{kind}.jsonl").open("wb") for kind in m.KINDS}
        try:
            for _, _, chunk in _chunks(settings):
                for kind, table in chunk.items():
                    frame = pl.from_arrow(table.drop_columns(["event_number"]))
                    assert isinstance(frame, pl.DataFrame)
                    frame = frame.with_columns(pl.col(pl.Datetime).dt.epoch("ms"))
                    frame.write_ndjson(files[kind])
                    counts[kind] += table.num_rows
        finally:
            for f in files.values():
                f.close()
    meta = {
        "events": settings.events,
        "seed": settings.seed,
        "format": fmt,
        "base_time": settings.base_time.isoformat(),
        "event_rate": settings.event_rate,
        "rows": counts,
    }
    (directory / "nexmark.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("nexmark: wrote %s events to %s (%s)", settings.events, directory, counts)
    return counts


@dataclasses.dataclass(frozen=True)
class EventBatch:
    """One micro-batch of the interleaved event stream, split by kind.

    Attributes
    ----------
    start, stop
        The event numbers ``[start, stop)`` this batch covers.
    person, auction, bid
        The events of each kind in the range (contract columns, plus ``event_number`` and, when
        requested, ``created_at``: the wall-clock instant the event was due at the given rate).
    """

    start: int
    stop: int
    person: pl.DataFrame
    auction: pl.DataFrame
    bid: pl.DataFrame


def iter_batches(
    settings: m.GeneratorSettings,
    *,
    batch_events: int = 10_000,
    rate: float | None = None,
    created_at: bool = False,
) -> Iterator[EventBatch]:
    """Stream the events in process as Polars micro-batches, optionally throttled.

    Parameters
    ----------
    settings
        What to generate.
    batch_events
        Event numbers per batch (all three kinds together).
    rate
        Wall-clock events per second. Event ``i`` is due at ``t0 + i / rate``; a batch is
        yielded once its last event is due. ``None`` = as fast as possible.
    created_at
        Add a ``created_at`` column (``datetime[us, UTC]``): when each event was due (or, without
        a rate, when its batch was yielded), for end-to-end latency measurements.

    Examples
    --------
    >>> batches = list(iter_batches(m.GeneratorSettings(events=120), batch_events=50))
    >>> [(b.start, b.stop, b.bid.height) for b in batches]
    [(0, 50, 46), (50, 100, 46), (100, 120, 16)]
    """
    if batch_events <= 0:
        msg = f"nexmark iter_batches: batch_events must be > 0, got {batch_events}"
        raise ConfigError(msg)
    if rate is not None and rate <= 0:
        msg = f"nexmark iter_batches: rate must be > 0 events/s, got {rate}"
        raise ConfigError(msg)
    t0_wall = time.time()
    t0_mono = time.monotonic()
    for first, last, chunk in _chunks(settings):
        frames = {}
        for kind, table in chunk.items():
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            frames[kind] = frame
        for start in range(first, last, batch_events):
            stop = min(start + batch_events, last)
            if rate is not None:
                delay = t0_mono + stop / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            parts = {}
            for kind, frame in frames.items():
                part = frame.filter(pl.col("event_number").is_between(start, stop, closed="left"))
                if created_at:
                    if rate is not None:
                        due_us = (t0_wall * 1e6 + pl.col("event_number") * (1e6 / rate)).cast(
                            pl.Int64
                        )
                    else:
                        due_us = pl.lit(int(time.time() * 1e6), pl.Int64)
                    part = part.with_columns(
                        due_us.cast(pl.Datetime("us", "UTC")).alias("created_at")
                    )
                parts[kind] = part
            yield EventBatch(start, stop, parts["person"], parts["auction"], parts["bid"])


def generate(events: int, *, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Generate events in memory as Polars frames with exactly the contract columns.

    Examples
    --------
    >>> frames = generate(1000, seed=3)
    >>> frames["bid"].columns
    ['auction', 'bidder', 'price', 'channel', 'url', 'date_time', 'extra']
    """
    tables = generate_tables(m.GeneratorSettings(events=events, seed=seed))
    out = {}
    for kind, table in tables.items():
        frame = pl.from_arrow(table.drop_columns(["event_number"]))
        assert isinstance(frame, pl.DataFrame)
        out[kind] = frame
    return out
