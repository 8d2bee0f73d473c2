"""The Nexmark queries written in SQL and run by DuckDB: the reference every engine must match.

Conventions shared by all queries (the tideflow pipelines and the peers follow them too):

- Event time is ``date_time``. Windows are half-open ``[start, end)``; tumbling windows are
  aligned to the epoch; a sliding window of size S and hop H contains every record whose time
  falls in its range. Window bounds are UTC timestamps (ms).
- "Arrival order" is the position of a bid in ``bid.parquet`` (the generator writes events in
  event-number order). Where a public definition leaves ties open (latest bid, top-N), ties are
  broken by arrival order, exactly as a streaming operator that sees the file in order would.
- A bid is *valid* for an auction when ``auction.date_time <= bid.date_time <= auction.expires``
  (the public SQL's ``BETWEEN``, both ends included). Reserve prices are not checked.
- Queries whose public definitions are continuous (q4, q6, q9, q12-q22) are checked on the
  *final result of a bounded run*: end of input moves the watermark to +infinity, so every window
  fires and every auction closes; the final result is then the last value of every key (updates
  that were later retracted or superseded do not count). Each query's docstring below says
  exactly what that final result is.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import duckdb
import polars as pl

from tideflow._errors import ConfigError

__all__ = ["QUERIES", "QUERY_NAMES", "QuerySpec", "normalize", "run_reference", "spec"]


@dataclasses.dataclass(frozen=True)
class QuerySpec:
    """One Nexmark query: its result columns, inputs, definition and reference SQL.

    Attributes
    ----------
    name
        ``"q0"`` .. ``"q22"``.
    columns
        The result columns, in order (the contract).
    inputs
        Which event kinds the query reads.
    definition
        What the (bounded-run) result is, in words.
    sql
        The DuckDB SQL computing it over the views ``person``, ``auction``, ``bid`` (``bid`` has
        an extra ``seq`` column: the arrival order) and the macro ``ts_ms(epoch_ms)``.
    windowed
        True when the query needs event-time windows (or processing time).
    """

    name: str
    columns: tuple[str, ...]
    inputs: tuple[str, ...]
    definition: str
    sql: str
    windowed: bool = False


_BID = ("bid",)
_STATS = (
    "count(*) AS total_bids",
    "count(*) FILTER (WHERE price < 10000) AS rank1_bids",
    "count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids",
    "count(*) FILTER (WHERE price >= 1000000) AS rank3_bids",
)
_DISTINCT_STATS = tuple(
    f"count(DISTINCT {col}) {cond}AS {pre}_{col}s"
    for col in ("bidder", "auction")
    for pre, cond in (
        ("total", ""),
        ("rank1", "FILTER (WHERE price < 10000) "),
        ("rank2", "FILTER (WHERE price >= 10000 AND price < 1000000) "),
        ("rank3", "FILTER (WHERE price >= 1000000) "),
    )
)
_STAT_COLS = tuple(s.rsplit(" AS ", 1)[1] for s in _STATS + _DISTINCT_STATS)

# The final price of every auction that got at least one valid bid (q4, q6).
_FINALS = """
    SELECT a.id, a.seller, a.category, a.expires, max(b.price) AS final
    FROM auction a JOIN bid b
      ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires
    GROUP BY a.id, a.seller, a.category, a.expires
"""


def _q(
    name: str,
    columns: tuple[str, ...],
    inputs: tuple[str, ...],
    definition: str,
    sql: str,
    *,
    windowed: bool = False,
) -> QuerySpec:
    return QuerySpec(
        name, columns, inputs, textwrap.dedent(definition).strip(), textwrap.dedent(sql), windowed
    )


QUERIES: dict[str, QuerySpec] = {
    q.name: q
    for q in (
        _q(
            "q0",
            ("auction", "bidder", "price", "date_time", "extra"),
            _BID,
            "Pass-through: every bid.",
            "SELECT auction, bidder, price, date_time, extra FROM bid",
        ),
        _q(
            "q1",
            ("auction", "bidder", "price", "date_time"),
            _BID,
            "Currency conversion: every bid with its price in euros (0.908 x dollars, float).",
            "SELECT auction, bidder, 0.908 * CAST(price AS DOUBLE) AS price, date_time FROM bid",
        ),
        _q(
            "q2",
            ("auction", "price"),
            _BID,
            "Selection: the bids on auctions whose id is a multiple of 123.",
            "SELECT auction, price FROM bid WHERE auction % 123 = 0",
        ),
        _q(
            "q3",
            ("name", "city", "state", "id"),
            ("person", "auction"),
            """
            Local item suggestion: every (seller, auction) pair where the auction is in category
            10 and the seller lives in OR, ID or CA. A regular (unwindowed) join: the bounded
            result holds every matching pair, whichever of the two arrived first.
            """,
            """
            SELECT p.name, p.city, p.state, a.id
            FROM auction a JOIN person p ON a.seller = p.id
            WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA')
            """,
        ),
        _q(
            "q4",
            ("category", "final"),
            ("auction", "bid"),
            """
            Average closing price per category. An auction's closing price is the highest price
            among its valid bids; auctions without a valid bid do not count. Bounded run: every
            auction closes at the end of input; final = mean (float) of the closing prices of
            the category's auctions, one row per category.
            """,
            f"""
            SELECT category, CAST(avg(final) AS DOUBLE) AS final
            FROM ({_FINALS}) GROUP BY category
            """,
        ),
        _q(
            "q5",
            ("window_start", "window_end", "auction", "num"),
            _BID,
            """
            Hot items: for each 10 s window sliding by 2 s (windows that hold at least one bid),
            every auction tied for the most bids in that window, with its bid count.
            """,
            """
            WITH w AS (
              SELECT auction, (epoch_ms(date_time) // 2000) * 2000 - k * 2000 AS ws
              FROM bid, range(5) r(k)
            ),
            c AS (SELECT ws, auction, count(*) AS num FROM w GROUP BY ws, auction),
            mx AS (SELECT ws, max(num) AS maxn FROM c GROUP BY ws)
            SELECT ts_ms(c.ws) AS window_start, ts_ms(c.ws + 10000) AS window_end, c.auction,
                   c.num
            FROM c JOIN mx ON c.ws = mx.ws AND c.num = mx.maxn
            """,
            windowed=True,
        ),
        _q(
            "q6",
            ("seller", "avg_price"),
            ("auction", "bid"),
            """
            Average selling price by seller: the mean closing price (as in q4) of each seller's
            last 10 closed auctions, ordered by close time (``expires``, then auction id).
            Bounded run: one row per seller with at least one closed auction with a valid bid,
            holding the value after the last close.
            """,
            f"""
            SELECT seller, CAST(avg(final) AS DOUBLE) AS avg_price FROM (
              SELECT seller, final,
                     row_number() OVER (PARTITION BY seller ORDER BY expires DESC, id DESC) AS rn
              FROM ({_FINALS})
            ) WHERE rn <= 10 GROUP BY seller
            """,
        ),
        _q(
            "q7",
            ("window_start", "window_end", "auction", "bidder", "price", "date_time"),
            _BID,
            "Highest bid: the bids carrying the highest price of their 10 s tumbling window.",
            """
            WITH b AS (SELECT *, (epoch_ms(date_time) // 10000) * 10000 AS ws FROM bid),
            m AS (SELECT ws, max(price) AS maxp FROM b GROUP BY ws)
            SELECT ts_ms(b.ws) AS window_start, ts_ms(b.ws + 10000) AS window_end,
                   b.auction, b.bidder, b.price, b.date_time
            FROM b JOIN m ON b.ws = m.ws AND b.price = m.maxp
            """,
            windowed=True,
        ),
        _q(
            "q8",
            ("id", "name", "window_start"),
            ("person", "auction"),
            """
            Monitor new users: people who opened an auction in the same 10 s tumbling window in
            which they registered; one row per person.
            """,
            """
            WITH p AS (SELECT id, name, (epoch_ms(date_time) // 10000) * 10000 AS ws
                       FROM person),
            a AS (SELECT DISTINCT seller, (epoch_ms(date_time) // 10000) * 10000 AS ws
                  FROM auction)
            SELECT DISTINCT p.id, p.name, ts_ms(p.ws) AS window_start
            FROM p JOIN a ON p.id = a.seller AND p.ws = a.ws
            """,
            windowed=True,
        ),
        _q(
            "q9",
            (
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
                "auction",
                "bidder",
                "price",
                "bid_date_time",
                "bid_extra",
            ),
            ("auction", "bid"),
            """
            Winning bids: every auction with at least one valid bid, joined with its winning
            bid: highest price, then earliest date_time, then earliest arrival. Bounded run:
            every auction closes at the end of input.
            """,
            """
            SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller,
                   category, extra, auction, bidder, price, bid_date_time, bid_extra
            FROM (
              SELECT a.*, b.auction, b.bidder, b.price, b.date_time AS bid_date_time,
                     b.extra AS bid_extra,
                     row_number() OVER (PARTITION BY a.id
                                        ORDER BY b.price DESC, b.date_time, b.seq) AS rn
              FROM auction a JOIN bid b
                ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires
            ) WHERE rn = 1
            """,
            windowed=True,
        ),
        _q(
            "q11",
            ("bidder", "bid_count", "window_start", "window_end"),
            _BID,
            """
            User sessions: per bidder, session windows with a 10 s gap (bids less than 10 s
            apart share a session; a session ends 10 s after its last bid).
            """,
            """
            WITH g AS (
              SELECT bidder, epoch_ms(date_time) AS t, seq,
                     CASE WHEN epoch_ms(date_time) - lag(epoch_ms(date_time)) OVER
                               (PARTITION BY bidder ORDER BY date_time, seq) < 10000
                          THEN 0 ELSE 1 END AS new_session
              FROM bid
            ),
            s AS (
              SELECT bidder, t, sum(new_session) OVER
                       (PARTITION BY bidder ORDER BY t, seq ROWS UNBOUNDED PRECEDING) AS sid
              FROM g
            )
            SELECT bidder, count(*) AS bid_count, ts_ms(min(t)) AS window_start,
                   ts_ms(max(t) + 10000) AS window_end
            FROM s GROUP BY bidder, sid
            """,
            windowed=True,
        ),
        _q(
            "q12",
            ("bidder", "bid_count", "window_start", "window_end"),
            _BID,
            """
            Processing-time windows: bids per bidder in 10 s tumbling processing-time windows.
            Window contents depend on the wall clock, so a bounded run is checked on what does
            not: the total bid_count per bidder over all its windows equals its number of bids.
            The reference gives (bidder, bid_count) totals; see ``normalize``.
            """,
            "SELECT bidder, count(*) AS bid_count FROM bid GROUP BY bidder",
            windowed=True,
        ),
        _q(
            "q13",
            ("auction", "bidder", "price", "date_time", "value"),
            _BID,
            """
            Bounded side-input join: every bid joined with the side table
            ``side_input(key 0..9999, value 'side-<key>')`` on ``auction % 10000 = key``.
            """,
            """
            WITH side_input AS (SELECT range AS key, 'side-' || range AS value FROM range(10000))
            SELECT b.auction, b.bidder, b.price, b.date_time, s.value
            FROM bid b JOIN side_input s ON b.auction % 10000 = s.key
            """,
        ),
        _q(
            "q14",
            ("auction", "bidder", "price", "bid_time_type", "date_time", "extra", "c_counts"),
            _BID,
            """
            Calculation: bids whose euro price (0.908 x dollars) is strictly between 1,000,000
            and 50,000,000 (compared exactly, as 908 x price vs 10^9 and 5 x 10^10), with the
            euro price (float), the UTC hour class (dayTime 8-18, nightTime <= 6 or >= 20,
            otherTime) and the number of 'c' characters in extra.
            """,
            """
            SELECT auction, bidder, 0.908 * CAST(price AS DOUBLE) AS price,
                   CASE WHEN hour(date_time) BETWEEN 8 AND 18 THEN 'dayTime'
                        WHEN hour(date_time) <= 6 OR hour(date_time) >= 20 THEN 'nightTime'
                        ELSE 'otherTime' END AS bid_time_type,
                   date_time, extra,
                   CAST(length(extra) - length(replace(extra, 'c', '')) AS BIGINT) AS c_counts
            FROM bid
            WHERE 908 * price > 1000000000 AND 908 * price < 50000000000
            """,
        ),
        _q(
            "q15",
            ("day", *_STAT_COLS),
            _BID,
            """
            Bidding statistics per UTC day ('YYYY-MM-DD'): bid, bidder and auction counts,
            overall and per price rank (rank1 < 10,000 <= rank2 < 1,000,000 <= rank3 cents).
            """,
            f"""
            SELECT strftime(date_time, '%Y-%m-%d') AS day, {", ".join(_STATS + _DISTINCT_STATS)}
            FROM bid GROUP BY day
            """,
        ),
        _q(
            "q16",
            ("channel", "day", "minute", *_STAT_COLS),
            _BID,
            """
            Channel statistics per (channel, UTC day): as q15, plus ``minute``, the latest
            'HH:MM' seen for the group.
            """,
            f"""
            SELECT channel, strftime(date_time, '%Y-%m-%d') AS day,
                   max(strftime(date_time, '%H:%M')) AS minute,
                   {", ".join(_STATS + _DISTINCT_STATS)}
            FROM bid GROUP BY channel, day
            """,
        ),
        _q(
            "q17",
            (
                "auction",
                "day",
                "total_bids",
                "rank1_bids",
                "rank2_bids",
                "rank3_bids",
                "min_price",
                "max_price",
                "avg_price",
                "sum_price",
            ),
            _BID,
            """
            Auction statistics per (auction, UTC day): bid counts overall and per price rank,
            min/max/sum price and the mean price (float).
            """,
            f"""
            SELECT auction, strftime(date_time, '%Y-%m-%d') AS day, {", ".join(_STATS)},
                   min(price) AS min_price, max(price) AS max_price,
                   CAST(avg(price) AS DOUBLE) AS avg_price, CAST(sum(price) AS BIGINT) AS sum_price
            FROM bid GROUP BY auction, day
            """,
        ),
        _q(
            "q18",
            ("auction", "bidder", "price", "channel", "url", "date_time", "extra"),
            _BID,
            """
            Last bid per (bidder, auction): the bid with the latest date_time, the last arrival
            among equal times.
            """,
            """
            SELECT auction, bidder, price, channel, url, date_time, extra FROM (
              SELECT *, row_number() OVER (PARTITION BY bidder, auction
                                           ORDER BY date_time DESC, seq DESC) AS rn
              FROM bid
            ) WHERE rn = 1
            """,
        ),
        _q(
            "q19",
            ("auction", "bidder", "price", "channel", "url", "date_time", "extra", "rank_number"),
            _BID,
            """
            Top 10 bids by price per auction, with their rank (1 = highest); among equal prices
            the earlier arrival ranks first.
            """,
            """
            SELECT auction, bidder, price, channel, url, date_time, extra, rank_number FROM (
              SELECT *, row_number() OVER (PARTITION BY auction ORDER BY price DESC, seq)
                        AS rank_number
              FROM bid
            ) WHERE rank_number <= 10
            """,
        ),
        _q(
            "q20",
            (
                "auction",
                "bidder",
                "price",
                "channel",
                "url",
                "bid_date_time",
                "bid_extra",
                "item_name",
                "description",
                "initial_bid",
                "reserve",
                "auction_date_time",
                "expires",
                "seller",
                "category",
                "auction_extra",
            ),
            ("auction", "bid"),
            """
            Expand bids with their auction, for auctions in category 10. A regular join: the
            bounded result holds every (bid, auction) pair, whichever arrived first.
            """,
            """
            SELECT b.auction, b.bidder, b.price, b.channel, b.url, b.date_time AS bid_date_time,
                   b.extra AS bid_extra, a.item_name, a.description, a.initial_bid, a.reserve,
                   a.date_time AS auction_date_time, a.expires, a.seller, a.category,
                   a.extra AS auction_extra
            FROM bid b JOIN auction a ON b.auction = a.id
            WHERE a.category = 10
            """,
        ),
        _q(
            "q21",
            ("auction", "bidder", "price", "channel", "channel_id"),
            _BID,
            """
            Add channel id: the hot channels map to '0' (apple), '1' (google), '2' (facebook),
            '3' (baidu), case-insensitively; other bids keep the ``channel_id`` url parameter and
            are dropped when their url has none.
            """,
            """
            SELECT auction, bidder, price, channel,
                   CASE lower(channel) WHEN 'apple' THEN '0' WHEN 'google' THEN '1'
                        WHEN 'facebook' THEN '2' WHEN 'baidu' THEN '3'
                        ELSE regexp_extract(url, '(&|^)channel_id=([^&]*)', 2) END AS channel_id
            FROM bid
            WHERE regexp_matches(url, '(&|^)channel_id=')
               OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')
            """,
        ),
        _q(
            "q22",
            ("auction", "bidder", "price", "channel", "dir1", "dir2", "dir3"),
            _BID,
            """
            Url directories: every bid with the first three path segments of its url
            (``https://host/dir1/dir2/dir3/...``).
            """,
            """
            SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1,
                   split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3
            FROM bid
            """,
        ),
    )
}

QUERY_NAMES: tuple[str, ...] = tuple(QUERIES)


def spec(query: str) -> QuerySpec:
    """The spec of ``query``; a ConfigError naming the known queries if there is none.

    Examples
    --------
    >>> spec("q2").columns
    ('auction', 'price')
    """
    try:
        return QUERIES[query]
    except KeyError:
        msg = f"nexmark: unknown query {query!r}; known: {', '.join(QUERY_NAMES)}"
        raise ConfigError(msg) from None


def connect(input_dir: Path | str, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``person``, ``auction``, ``bid`` over ``input_dir``."""
    directory = Path(input_dir)
    missing = [k for k in ("person", "auction", "bid") if not (directory / f"{k}.parquet").exists()]
    if missing:
        msg = (
            f"nexmark: input directory {str(directory)!r} lacks {missing} parquet files; "
            f"create them with `tideflow bench nexmark generate --out {directory}`"
        )
        raise ConfigError(msg)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("CREATE MACRO ts_ms(x) AS CAST(epoch_ms(CAST(x AS BIGINT)) AS TIMESTAMPTZ)")
    for kind in ("person", "auction"):
        path = str(directory / f"{kind}.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW {kind} AS SELECT * FROM read_parquet('{path}')")
    path = str(directory / "bid.parquet").replace("'", "''")
    con.execute(
        "CREATE VIEW bid AS SELECT * EXCLUDE (file_row_number), file_row_number AS seq "
        f"FROM read_parquet('{path}', file_row_number = true)"
    )
    return con


def normalize(frame: pl.DataFrame, query: str | None = None) -> pl.DataFrame:
    """Bring a result to the canonical types: Int64, Float64, String, ``datetime[ms, UTC]``.

    For q12 (processing time) a result with window columns is reduced to the per-bidder total
    ``bid_count``, which is what the reference gives.

    Examples
    --------
    >>> normalize(pl.DataFrame({"a": [1], "b": [2.5]}, schema={"a": pl.Int32, "b": pl.Float32}))
    shape: (1, 2)
    ┌─────┬─────┐
    │ a   ┆ b   │
    │ --- ┆ --- │
    │ i64 ┆ f64 │
    ╞═════╪═════╡
    │ 1   ┆ 2.5 │
    └─────┴─────┘
    """
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype.is_integer():
            exprs.append(col.cast(pl.Int64))
        elif dtype.is_float() or dtype.is_decimal():
            exprs.append(col.cast(pl.Float64))
        elif isinstance(dtype, pl.Datetime):
            if dtype.time_zone is None:
                col = col.dt.replace_time_zone("UTC")
            exprs.append(col.dt.convert_time_zone("UTC").dt.cast_time_unit("ms"))
        else:
            exprs.append(col)
    out = frame.select(exprs)
    if query == "q12" and "window_start" in out.columns:
        out = out.group_by("bidder").agg(pl.col("bid_count").sum())
    return out


def run_reference(query: str, input_dir: Path | str, *, threads: int | None = None) -> pl.DataFrame:
    """Run ``query``'s reference SQL with DuckDB over the Parquet files in ``input_dir``.

    Parameters
    ----------
    query
        ``"q0"`` .. ``"q22"`` (no q10).
    input_dir
        A directory written by ``tideflow bench nexmark generate``.
    threads
        DuckDB threads (default: all cores).

    Returns
    -------
    polars.DataFrame
        The result, with exactly the query's contract columns, normalized types.

    Examples
    --------
    >>> import tempfile
    >>> from tideflow.bench.nexmark import GeneratorSettings, write_events
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = write_events(GeneratorSettings(events=2000, seed=1), d)
    ...     run_reference("q2", d).columns
    ['auction', 'price']
    """
    q = spec(query)
    con = connect(input_dir, threads=threads)
    try:
        frame = con.sql(q.sql).pl()
    finally:
        con.close()
    out = normalize(frame)
    expected = ["bidder", "bid_count"] if query == "q12" else list(q.columns)
    if out.columns != expected:  # a bug in this module, not in the user's input
        msg = f"nexmark reference {query}: columns {out.columns} != contract {expected}"
        raise AssertionError(msg)
    return out
