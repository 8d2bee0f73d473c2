"""The demo's vectorized rules equal the per-record reference on random transaction streams."""

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tideflow.demo._fraud import (
    ALERT_SCHEMA,
    CARD_STATE,
    _new_card_state,
    card_rules,
    card_rules_batch,
)
from tideflow.runtime._keyed import KeyedTable

T0 = datetime(2026, 1, 1, tzinfo=UTC)

tx_st = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.integers(0, 30_000),  # ms since previous transaction
        st.floats(1, 500).map(lambda x: round(x, 2)),
        st.sampled_from(["DE", "FR", "US"]),
    ),
    max_size=120,
)


def make_rows(spec):
    rows, t = [], T0
    for i, (card, gap, amount, country) in enumerate(spec):
        t = t + timedelta(milliseconds=gap)
        rows.append({"card": card, "ts": t, "amount": amount, "country": country, "tx_id": i})
    return rows


def reference(rows):
    states, alerts = {}, []
    for r in rows:
        st_ = states.get(r["card"]) or _new_card_state()
        states[r["card"]], out = card_rules(st_, r)
        alerts.extend(out or [])
    return sorted(
        (a["card"], a["ts"], a["rule"], a["amount"], a["country"], a["detail"]) for a in alerts
    )


def vectorized(rows, sizes):
    table = KeyedTable(("card",), CARD_STATE)
    schema = {
        "card": pl.String,
        "ts": pl.Datetime("ms", "UTC"),
        "amount": pl.Float64,
        "country": pl.String,
        "tx_id": pl.Int64,
    }
    out, i = [], 0
    sizes = [*sizes, len(rows)]
    for s in sizes:
        chunk = rows[i : i + max(s, 1)]
        i += max(s, 1)
        if not chunk:
            break
        batch = pl.DataFrame(chunk, schema=schema)
        state = table.get(batch.select("card").unique(maintain_order=True))
        alerts, new_state = card_rules_batch(batch, state)
        assert alerts.schema == pl.Schema(ALERT_SCHEMA)
        table.put(new_state.select("card", *CARD_STATE))
        out.extend(alerts.iter_rows())
        if i >= len(rows):
            break
    return sorted(out)


@settings(max_examples=120, deadline=None)
@given(spec=tx_st, sizes=st.lists(st.integers(1, 40), max_size=10))
def test_vectorized_rules_equal_per_record_rules(spec, sizes):
    rows = make_rows(spec)
    assert vectorized(rows, sizes) == reference(rows)


def test_each_rule_fires_on_a_crafted_stream():
    t = T0
    rows = []
    for i in range(6):  # card a: 6 transactions in 5 seconds -> burst
        rows.append(
            {
                "card": "a",
                "ts": t + timedelta(seconds=i),
                "amount": 10.0,
                "country": "DE",
                "tx_id": i,
            }
        )
    rows.append(
        {"card": "a", "ts": t + timedelta(seconds=7), "amount": 900.0, "country": "DE", "tx_id": 6}
    )
    rows.append(
        {"card": "a", "ts": t + timedelta(seconds=8), "amount": 10.0, "country": "BR", "tx_id": 7}
    )
    rules = [a[2] for a in reference(rows)]
    assert sorted(rules) == ["burst", "new_country", "spend_spike"]
    assert sorted(r[2] for r in vectorized(rows, [3, 5])) == sorted(rules)
