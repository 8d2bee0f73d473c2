"""The main job: real-time monitoring of card transactions (``tideflow demo``).

Synthetic card transactions (with a small share of bad records) flow through:

1. ``validate``: records without a card or with a non-positive amount go to the dead letters;
2. per-card running statistics (count, spend, mean, max), vectorized, upserted into SQLite;
3. per-card rules with explicit state: a *burst* (many transactions within a minute), a
   *spend spike* (an amount far above the card's running mean), a *new country*;
4. alerts appended to SQLite and shown on the terminal; dead letters to a JSON-lines file.

No Kafka or database server is needed: everything is embedded.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console

import tideflow
from tideflow import windows
from tideflow._errors import ConfigError
from tideflow.api import Dataflow
from tideflow.connectors import files
from tideflow.connectors._base import Sink, SinkContext, SinkWriter
from tideflow.demo._io import (
    DemoIO,
    check_services,
    feed_flow,
    read_transactions,
    start_feeder,
    summary_rows,
    table_sink,
)

__all__ = ["RULES", "add_demo_options", "build_flow", "make_transactions", "run_demo"]

log = logging.getLogger("tideflow.demo")

COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "PL", "SE", "US", "GB", "BR", "IN", "JP"]
T0_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
N_CARDS = 100_000
#: Rule settings: burst = BURST_COUNT transactions within BURST_WINDOW_MS; spike = amount over
#: SPIKE_FACTOR times the card's running mean after SPIKE_MIN_HISTORY transactions; new country
#: after NEW_COUNTRY_MIN_HISTORY transactions.
BURST_COUNT = 6
BURST_WINDOW_MS = 60_000
SPIKE_FACTOR = 8.0
SPIKE_MIN_HISTORY = 5
NEW_COUNTRY_MIN_HISTORY = 3
#: Windowed rules: VELOCITY_COUNT transactions within a minute (sliding by VELOCITY_HOP), or
#: HOURLY_SPEND spent within an hour (sliding by 10 minutes); sessions end after SESSION_GAP.
VELOCITY_COUNT = 5
VELOCITY_HOP = timedelta(seconds=10)
HOURLY_SPEND = 2500.0
SESSION_GAP = timedelta(minutes=10)
RULES = ("burst", "spend_spike", "new_country", "velocity", "hourly_spend")

TX_SCHEMA = {
    "tx_id": pl.Int64(),
    "card": pl.String(),
    "amount": pl.Float64(),
    "country": pl.String(),
    "merchant": pl.String(),
    "ts": pl.Datetime("ms", "UTC"),
}
ALERT_SCHEMA = {
    "card": pl.String(),
    "ts": pl.Datetime("ms", "UTC"),
    "rule": pl.String(),
    "amount": pl.Float64(),
    "country": pl.String(),
    "detail": pl.String(),
}


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of ``x`` and a salt: a reproducible uniform hash per index."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _unit(x: np.ndarray, salt: int) -> np.ndarray:
    return (_mix(x, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def make_transactions(start: int, n: int) -> pl.DataFrame:
    """Transactions ``start .. start + n - 1``; each row depends only on its index.

    About 0.3% are abroad, 0.2% are amount spikes, bursts of 8 hit one card, and 0.1% are bad
    records (no card, or a non-positive amount).

    Examples
    --------
    >>> df = make_transactions(0, 1000)
    >>> df.height, df.columns
    (1000, ['tx_id', 'card', 'amount', 'country', 'merchant', 'ts'])
    >>> make_transactions(10, 5).equals(make_transactions(0, 20).slice(10, 5))
    True
    """
    i = np.arange(start, start + n, dtype=np.int64)
    # Card: skewed popularity; bursts of 8 consecutive transactions on one card.
    card_id = (N_CARDS * _unit(i, 1) ** 1.2).astype(np.int64)
    block = i - (i % 16)
    in_burst = (_unit(block, 2) < 0.004) & (i % 16 < 8)
    card_id = np.where(in_burst, (N_CARDS * _unit(block, 3)).astype(np.int64), card_id)
    home = (_mix(card_id, 4) % np.uint64(len(COUNTRIES))).astype(np.int64)
    abroad = _unit(i, 5) < 0.003
    country_idx = np.where(abroad, (home + 1 + (_unit(i, 6) * 11).astype(np.int64)) % 12, home)
    card_mean = 15.0 + 120.0 * _unit(card_id, 7)
    amount = np.round(card_mean * np.exp(0.5 * (_unit(i, 8) - 0.5)), 2)
    amount = np.where(_unit(i, 9) < 0.002, np.round(amount * 25.0, 2), amount)
    bad = _unit(i, 10)
    amount = np.where(bad < 0.0005, -amount, amount)
    # Event time: 200 transactions per second of event time; a burst within 40 ms.
    ts = T0_MS + i * 5
    cards = pl.Series("card", card_id).cast(pl.String)
    frame = pl.DataFrame(
        {
            "tx_id": i,
            "card": pl.select(pl.lit("card-") + cards.str.zfill(5)).to_series(),
            "amount": amount,
            "country": pl.Series(np.array(COUNTRIES)[country_idx]),
            "merchant": pl.Series((_mix(i, 11) % np.uint64(500)).astype(np.int64)).cast(pl.String),
            "ts": pl.Series(ts).cast(pl.Datetime("ms", "UTC")),
        }
    )
    missing_card = (bad >= 0.0005) & (bad < 0.001)
    return frame.with_columns(
        card=pl.when(pl.Series(missing_card)).then(None).otherwise(pl.col("card")),
        merchant=pl.lit("m-") + pl.col("merchant"),
    )


def card_rules(state: dict[str, Any], tx: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The rules per record (the reference for :func:`card_rules_batch`).

    State: count, spend, countries seen (in order), the last five event times (ms) and
    whether the previous transaction was inside a burst. A burst alert fires when a card
    reaches ``BURST_COUNT`` transactions within ``BURST_WINDOW_MS``, once per burst.
    """
    ts: datetime = tx["ts"]
    ms = int(ts.timestamp() * 1000)
    amount = float(tx["amount"])
    n, spend = state["n"], state["spend"]
    alerts: list[dict[str, Any]] = []

    def alert(rule: str, detail: str) -> None:
        alerts.append(
            {
                "card": tx["card"],
                "ts": ts,
                "rule": rule,
                "amount": amount,
                "country": tx["country"],
                "detail": detail,
            }
        )

    prev = state["recent"]
    in_burst = len(prev) >= BURST_COUNT - 1 and 0 <= ms - prev[-(BURST_COUNT - 1)] < BURST_WINDOW_MS
    if in_burst and not state["burst"]:
        alert("burst", f"{BURST_COUNT} transactions within {BURST_WINDOW_MS // 1000}s")
    if n >= SPIKE_MIN_HISTORY and amount > SPIKE_FACTOR * (spend / n):
        alert("spend_spike", f"over {SPIKE_FACTOR:g}x the running mean")
    countries = state["countries"]
    if n >= NEW_COUNTRY_MIN_HISTORY and tx["country"] not in countries:
        alert("new_country", f"first in {tx['country']} after {n} transactions")
    new_state = {
        "n": n + 1,
        "spend": spend + amount,
        "countries": countries if tx["country"] in countries else [*countries, tx["country"]],
        "recent": [*prev, ms][-(BURST_COUNT - 1) :],
        "burst": in_burst,
    }
    return new_state, alerts or None


#: State columns of :func:`card_rules_batch`: t1..t5 are the last event times (t5 newest).
CARD_STATE = {
    "n": pl.Int64(),
    "spend": pl.Float64(),
    "seen": pl.String(),
    "burst": pl.Boolean(),
    **{f"t{i}": pl.Int64() for i in range(1, BURST_COUNT)},
}


def card_rules_batch(batch: pl.DataFrame, state: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rules of :func:`card_rules`, vectorized over a micro-batch with per-card state."""
    k = BURST_COUNT - 1
    times = [f"t{i}" for i in range(1, k + 1)]
    df = (
        batch.with_columns(ms=pl.col("ts").dt.epoch("ms"))
        .with_row_index("__row")
        .sort("card", "ms", "__row")
        .join(state, on="card", how="left", maintain_order="left")
        .with_columns(
            pl.col("n").fill_null(0),
            pl.col("spend").fill_null(0.0),
            pl.col("seen").fill_null("|"),
            pl.col("burst").fill_null(False),
        )
    )
    # Rows are sorted by card, then event time: per-card positions and running sums come from
    # run boundaries, with no per-group evaluation.
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    starts = pl.col("card") != pl.col("card").shift(1)
    df = df.with_columns(
        w=idx - pl.when(starts.fill_null(True)).then(idx).forward_fill(),
        cum_excl=pl.col("amount").cum_sum() - pl.col("amount"),
    )
    prev_k: pl.Expr = pl.when(pl.col("w") >= k).then(pl.col("ms").shift(k))
    for i in range(k):  # the k-th previous time comes from the state for the first k rows
        prev_k = pl.when(pl.col("w") == i).then(pl.col(times[i])).otherwise(prev_k)
    group_base = pl.when(pl.col("w") == 0).then(pl.col("cum_excl")).forward_fill()
    df = df.with_columns(
        n_prior=pl.col("n") + pl.col("w"),
        spend_prior=pl.col("spend") + pl.col("cum_excl") - group_base,
        in_burst=(pl.col("ms") - prev_k)
        .is_between(0, BURST_WINDOW_MS, closed="left")
        .fill_null(False),
        first_pair=pl.struct("card", "country").is_first_distinct(),
    )
    df = df.with_columns(
        prev_burst=pl.when(pl.col("w") == 0)
        .then(pl.col("burst"))
        .otherwise(pl.col("in_burst").shift(1)),
        new_country=pl.col("first_pair")
        & ~pl.col("seen").str.contains("|" + pl.col("country") + "|", literal=True)
        & (pl.col("n_prior") >= NEW_COUNTRY_MIN_HISTORY),
    )
    spike = (pl.col("n_prior") >= SPIKE_MIN_HISTORY) & (
        pl.col("amount") > SPIKE_FACTOR * pl.col("spend_prior") / pl.col("n_prior")
    )
    base = ["card", "ts", "amount", "country"]
    burst = df.filter(pl.col("in_burst") & ~pl.col("prev_burst")).select(
        *base,
        rule=pl.lit("burst"),
        detail=pl.lit(f"{BURST_COUNT} transactions within {BURST_WINDOW_MS // 1000}s"),
    )
    spikes = df.filter(spike).select(
        *base, rule=pl.lit("spend_spike"), detail=pl.lit(f"over {SPIKE_FACTOR:g}x the running mean")
    )
    countries = df.filter(pl.col("new_country")).select(
        *base,
        rule=pl.lit("new_country"),
        detail=pl.format("first in {} after {} transactions", "country", "n_prior"),
    )
    alerts = pl.concat([burst, spikes, countries]).select(list(ALERT_SCHEMA))
    # New state: counts, seen countries, the last k times, the burst flag of the last row.
    new_pairs = (
        df.filter(
            pl.col("first_pair")
            & ~pl.col("seen").str.contains("|" + pl.col("country") + "|", literal=True)
        )
        .group_by("card", maintain_order=True)
        .agg(added=pl.col("country").str.join("|"))
    )
    grouped = df.group_by("card", maintain_order=True).agg(
        *[pl.col(t).first() for t in times],
        n=pl.col("n").first() + pl.len(),
        spend=pl.col("spend").first() + pl.col("amount").sum(),
        seen=pl.col("seen").first(),
        burst=pl.col("in_burst").last(),
        ms=pl.col("ms"),
    )
    grouped = grouped.join(new_pairs, on="card", how="left").with_columns(
        seen=pl.when(pl.col("added").is_null())
        .then(pl.col("seen"))
        .otherwise(pl.col("seen") + pl.col("added") + "|"),
        recent=pl.concat_list(times).list.drop_nulls().list.concat(pl.col("ms")).list.reverse(),
    )
    new_state = grouped.select(
        "card",
        "n",
        "spend",
        "seen",
        "burst",
        *[
            pl.col("recent").list.get(k - i, null_on_oob=True).alias(times[i - 1])
            for i in range(1, k + 1)
        ],
    )
    return alerts, new_state


def _new_card_state() -> dict[str, Any]:
    return {"n": 0, "spend": 0.0, "countries": [], "recent": [], "burst": False}


class _AlertConsole(Sink):
    """Shows alerts on the terminal, at most a few lines per batch."""

    single_writer = True

    def __init__(self, per_batch: int = 3) -> None:
        self.per_batch = per_batch

    def build(self, ctx: SinkContext) -> SinkWriter:
        return _AlertConsoleWriter(self.per_batch)


class _AlertConsoleWriter(SinkWriter):
    def __init__(self, per_batch: int) -> None:
        self.console = Console(stderr=False, highlight=False)
        self.per_batch = per_batch

    def write(self, batch: pl.DataFrame) -> None:
        for row in batch.head(self.per_batch).iter_rows(named=True):
            self.console.print(
                f"[bold red]ALERT[/] {row['rule']:<12} {row['card']}  {row['amount']:>9.2f} "
                f"{row['country']}  {row['detail']}"
            )
        if batch.height > self.per_batch:
            self.console.print(f"      … and {batch.height - self.per_batch} more alerts")

    def close(self) -> None:
        pass


def build_flow(
    out_dir: Path,
    *,
    events: int | None,
    rate: float | None,
    show_alerts: bool = True,
    live: bool = False,
    io: DemoIO | None = None,
    since: datetime | None = None,
) -> Dataflow:
    """The fraud-monitoring dataflow, writing into ``out_dir``.

    With ``live``, it also publishes live tables for the dashboard (see :func:`add_live_tables`).
    ``io`` names real services to use instead of the embedded defaults (see :class:`DemoIO`);
    ``since`` is where a Kafka read starts (default: now).
    """
    io = io or DemoIO()
    db = out_dir / "demo.sqlite"
    flow = Dataflow("fraud")
    tx = read_transactions(flow, io, events=events, rate=rate, since=since or datetime.now(UTC))
    valid = tx.validate(
        {
            "card is missing": pl.col("card").is_not_null(),
            "amount must be positive": pl.col("amount") > 0,
        },
        name="validate",
    )
    with flow.scope("features"):
        stats = valid.key_by("card").agg(
            pl.len().alias("tx_count"),
            pl.col("amount").sum().alias("spend"),
            pl.col("amount").mean().alias("mean_amount"),
            pl.col("amount").max().alias("max_amount"),
            pl.col("ts").max().alias("last_seen"),
            emit="updates",
            name="card_stats",
        )
    stats.sink(table_sink(io, db, "card_stats", mode="upsert", key="card"), name="card_stats_db")
    with flow.scope("rules"):
        alerts = valid.key_by("card").transform(
            card_rules_batch, state=CARD_STATE, name="card_rules"
        )
    with flow.scope("windows"):
        # Kafka partitions are read at their own pace: watermarks per partition.
        timed = valid.event_time(
            "ts", delay=timedelta(seconds=5), per="partition" if io.kafka else None
        )
        by_card = timed.key_by("card")
        minute = by_card.window(windows.sliding(timedelta(minutes=1), VELOCITY_HOP)).agg(
            pl.len().alias("tx_1m"),
            pl.col("amount").sum().alias("spend_1m"),
            pl.col("ts").max().alias("last_tx"),
            name="last_minute",
        )
        hour = by_card.window(windows.sliding(timedelta(hours=1), timedelta(minutes=10))).agg(
            pl.len().alias("tx_1h"),
            pl.col("amount").sum().alias("spend_1h"),
            pl.col("ts").max().alias("last_tx"),
            name="last_hour",
        )
        sessions = by_card.window(windows.session(SESSION_GAP)).agg(
            pl.len().alias("tx_count"), pl.col("amount").sum().alias("spend"), name="sessions"
        )
    velocity = minute.results.filter(
        # One alert per burst: the window whose last hop holds the burst's last transaction.
        (pl.col("tx_1m") >= VELOCITY_COUNT)
        & (pl.col("last_tx") >= pl.col("window_end") - VELOCITY_HOP)
    ).select(
        "card",
        pl.col("window_end").dt.cast_time_unit("ms").alias("ts"),
        rule=pl.lit("velocity"),
        amount=pl.col("spend_1m"),
        country=pl.lit(None, dtype=pl.String),
        detail=pl.format("{} transactions in a minute", "tx_1m"),
    )
    hourly = hour.results.filter(
        (pl.col("spend_1h") >= HOURLY_SPEND)
        & (pl.col("last_tx") >= pl.col("window_end") - timedelta(minutes=10))
    ).select(
        "card",
        pl.col("window_end").dt.cast_time_unit("ms").alias("ts"),
        rule=pl.lit("hourly_spend"),
        amount=pl.col("spend_1h"),
        country=pl.lit(None, dtype=pl.String),
        detail=pl.format("{} spent within an hour", pl.col("spend_1h").round(2)),
    )
    alerts = alerts.union(velocity, hourly, name="all_alerts")
    sessions.results.filter(pl.col("tx_count") >= 3).sink(
        table_sink(io, db, "card_sessions", mode="append"), name="sessions_db"
    )
    alerts.sink(table_sink(io, db, "alerts", mode="append"), name="alerts_db")
    if io.kafka:
        from tideflow.connectors import kafka

        alerts.sink(
            kafka.sink_kafka(io.alerts_topic, bootstrap=io.kafka, key="card"), name="alerts_kafka"
        )
    if show_alerts:
        alerts.sink(_AlertConsole(), name="alerts_console")
    flow.dead_letters.sink(
        files.sink_jsonl(out_dir / "dead-letters.jsonl"), name="dead_letter_file"
    )
    if live:
        add_live_tables(valid, alerts)
    return flow


# -- dashboard (tideflow demo --dashboard HOST:PORT) ---------------------------------------------
#: Transactions at or above this amount are "large": what the demo's online model learns to tell.
LARGE_AMOUNT = 100.0


def add_live_tables(valid: Any, alerts: Any) -> None:
    """Live tables for the dashboard: ``alerts``, ``rules`` (per rule), ``spend_per_minute``,
    and ``model`` (an online model's prequential accuracy over the last 2,000 transactions)."""
    from tideflow.connectors import live as live_sinks
    from tideflow.ml import evaluate, linear_model, metrics, preprocessing

    with valid.flow.scope("dashboard"):
        alerts.sink(live_sinks.sink_live("alerts", keep=200), name="alerts_live")
        per_rule = alerts.key_by("rule").agg(
            pl.len().alias("alerts"),
            pl.col("card").n_unique().alias("cards"),
            emit="updates",
            name="per_rule",
        )
        per_rule.sink(live_sinks.sink_live("rules", key="rule"), name="rules_live")
        per_minute = (
            valid.with_columns(minute=pl.col("ts").dt.truncate("1m"), name="minute")
            .key_by("minute")
            .agg(
                pl.col("amount").sum().alias("spend"),
                pl.len().alias("transactions"),
                emit="updates",
                name="spend_per_minute",
            )
        )
        per_minute.sink(
            live_sinks.sink_live("spend_per_minute", keep=60, key="minute"), name="spend_live"
        )
        # A toy online model for the model panels: is a transaction large (from its log amount
        # and hour)? One global logistic regression (its input is gathered on worker 0).
        features = valid.with_columns(
            log_amount=pl.col("amount").log(),
            hour=pl.col("ts").dt.hour().cast(pl.Float64),
            large=pl.col("amount") >= LARGE_AMOUNT,
            name="model_features",
        )
        quality = evaluate(
            features,
            preprocessing.StandardScaler() | linear_model.LogisticRegression(),
            metrics.Accuracy(),
            target="large",
            features=["log_amount", "hour"],
            window=2000,
            name="large_amount_model",
        )
        quality.sink(live_sinks.sink_live("model", keep=500), name="model_live")


def dashboard_panels() -> tuple[Any, ...]:
    """The demo's dashboard panels: alert feed, spend per minute, cards flagged per rule, the
    biggest spenders from keyed state, and the model's accuracy per country."""
    from tideflow.dashboard import Panel, model_panel

    return (
        Panel(
            "Spend per minute (event time)",
            "SELECT minute, spend FROM spend_per_minute ORDER BY minute",
            kind="line",
            x="minute",
            y=("spend",),
        ),
        Panel(
            "Cards flagged per rule",
            "SELECT rule, cards FROM rules ORDER BY rule",
            kind="bar",
            x="rule",
            y=("cards",),
        ),
        Panel(
            "Top spenders (keyed state of fraud.features.card_stats, one consistent cut)",
            "SELECT card, tx_count, round(spend, 2) AS spend, round(max_amount, 2) AS max_amount "
            "FROM fraud_features_card_stats ORDER BY spend DESC LIMIT 10",
        ),
        model_panel("model", "Toy model: is a transaction large? (accuracy, last 2,000)"),
        Panel(
            "Alert feed (latest)",
            "SELECT ts, card, rule, amount, country, detail FROM alerts ORDER BY ts DESC LIMIT 25",
        ),
    )


def add_demo_options(p: argparse.ArgumentParser) -> None:
    """Options of ``tideflow demo``."""
    p.add_argument(
        "--events",
        type=int,
        default=None,
        help="stop after this many transactions (default: run until Ctrl-C)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="transactions per second (default: as fast as possible)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("tideflow-demo"),
        help="output directory for demo.sqlite and dead-letters.jsonl (default ./tideflow-demo)",
    )
    p.add_argument("--quiet-alerts", action="store_true", help="do not print alerts")
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="take checkpoints into OUT/checkpoints this often (cleared at each start); default "
        "10 with --dashboard (its checkpoint panel), none without; 0 turns them off",
    )
    p.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        default=os.environ.get("TIDEFLOW_DEMO_KAFKA") or None,
        help="run the transactions through this Kafka cluster (topic "
        "tideflow-demo-transactions; alerts also to tideflow-demo-alerts) instead of "
        "in process [TIDEFLOW_DEMO_KAFKA]",
    )
    p.add_argument(
        "--postgres",
        metavar="DSN",
        default=os.environ.get("TIDEFLOW_DEMO_POSTGRES") or None,
        help="write card stats, alerts and sessions to PostgreSQL (schema tideflow_demo) "
        "instead of SQLite [TIDEFLOW_DEMO_POSTGRES]",
    )
    p.add_argument(
        "--kafka-prefix",
        default="tideflow-demo",
        help="with --kafka: topics PREFIX-transactions and PREFIX-alerts (default %(default)s)",
    )
    p.add_argument(
        "--postgres-schema",
        default="tideflow_demo",
        help="with --postgres: the schema of the demo's tables, replaced at each start "
        "(default %(default)s)",
    )


def _summary(out_dir: Path, io: DemoIO) -> list[str]:
    if io.postgres:
        rows = summary_rows(io)
        lines = [f"  alerts, rule {rule}: {n:,}" for rule, n in rows["rules"]]
        if rows["cards"] is not None:
            lines.append(f"  cards tracked: {rows['cards']:,}")
        return lines
    db = out_dir / "demo.sqlite"
    lines = []
    if not db.exists():
        return lines
    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "alerts" in tables:
            for rule, n in con.execute(
                "select rule, count(*) from alerts group by rule order by 1"
            ):
                lines.append(f"  alerts, rule {rule}: {n:,}")
        if "card_stats" in tables:
            (cards,) = con.execute("select count(*) from card_stats").fetchone()
            lines.append(f"  cards tracked: {cards:,}")
    finally:
        con.close()
    return lines


def _feed(io: DemoIO, events: int, rate: float | None, out: Console) -> None:
    """Write the bounded demo's transactions to Kafka before the job reads them back."""
    # One feeder keeps each partition in event-time order, as a real producer would.
    result = tideflow.run(feed_flow(io, events=events, rate=rate), workers=1)
    if not result.completed:
        msg = "demo --kafka: feeding the transactions topic was stopped"
        raise KeyboardInterrupt(msg)
    out.print(
        f"fed {result.records_in:,} transactions to Kafka topic {io.transactions_topic!r} "
        f"in {result.seconds:,.1f}s"
    )


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo from parsed command-line arguments; returns the exit code."""
    from tideflow.cli._main import run_kwargs

    out_dir: Path = args.out
    if args.events is not None and args.events < 1:
        msg = f"demo: --events must be >= 1, got {args.events}"
        raise ConfigError(msg)
    if args.rate is not None and args.rate <= 0:
        msg = f"demo: --rate must be > 0, got {args.rate}"
        raise ConfigError(msg)
    prefix = getattr(args, "kafka_prefix", "tideflow-demo")
    io = DemoIO(
        kafka=getattr(args, "kafka", None),
        transactions_topic=f"{prefix}-transactions",
        alerts_topic=f"{prefix}-alerts",
        postgres=getattr(args, "postgres", None),
        schema=getattr(args, "postgres_schema", "tideflow_demo"),
    )
    check_services(io)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("demo.sqlite", "demo.sqlite-wal", "demo.sqlite-shm", "dead-letters.jsonl"):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # each start is a fresh run
    out = Console(stderr=False, highlight=False)
    dashboard = getattr(args, "dashboard", None) is not None
    kwargs = run_kwargs(args)
    since = datetime.now(UTC)
    feeder = None
    if io.kafka and args.events is not None:
        _feed(io, args.events, args.rate, out)
    elif io.kafka:
        feeder = start_feeder(io, args.rate)
    flow = build_flow(
        out_dir,
        events=args.events,
        rate=args.rate,
        show_alerts=not args.quiet_alerts,
        live=dashboard or getattr(args, "run_dir", None) is not None,
        io=io,
        since=since,
    )
    if args.rate is not None and args.rate < 100_000:
        kwargs["max_delay"] = timedelta(milliseconds=min(args.max_delay_ms, 200))
    every = getattr(args, "checkpoint_interval", None)
    if every is None and dashboard:
        every = 10.0
    if every is not None and every < 0:
        msg = f"demo: --checkpoint-interval must be >= 0 seconds, got {every}"
        raise ConfigError(msg)
    if every:
        kwargs["checkpoint_dir"] = out_dir / "checkpoints"
        kwargs["checkpoint_interval"] = timedelta(seconds=every)
    from tideflow.dashboard._cli import observers_for

    try:
        with observers_for(args, dashboard_panels() if dashboard else ()) as observers:
            result = tideflow.run(flow, **kwargs, observers=observers)  # type: ignore[arg-type]
    finally:
        if feeder is not None:
            feeder.terminate()
            feeder.join(timeout=10)
    state = "finished" if result.completed else "stopped"
    rate = result.records_in / result.seconds if result.seconds else 0.0
    out.print(
        f"demo {state}: {result.records_in:,} transactions in {result.seconds:,.1f}s "
        f"({rate:,.0f}/s, {result.workers} workers); {result.dead_letters:,} dead letters"
    )
    out.print(f"data: {io.describe()}")
    for line in _summary(out_dir, io):
        out.print(line)
    if io.postgres:
        out.print(
            f"alerts and card stats: PostgreSQL tables {io.schema}.alerts, {io.schema}.card_stats"
        )
    else:
        out.print(f"alerts and card stats: {out_dir / 'demo.sqlite'} (tables alerts, card_stats)")
    if io.kafka:
        out.print(f"alerts also in Kafka topic {io.alerts_topic!r}")
    out.print(f"dead letters:          {out_dir / 'dead-letters.jsonl'}")
    return 0 if result.completed or args.events is None else 130
