"""The Nexmark data model: constants, schemas and generator settings.

The model follows the public Nexmark description (the NEXMark paper and the Beam/Flink
benchmark suites): an online auction where people register, open auctions and bid. Events are
numbered 0, 1, 2, ...; in every group of 50 consecutive numbers there is 1 person, 3 auctions and
46 bids. Ids are dense and grow with the event number, so the "recent" people and auctions are the
active ones, and a few of them are "hot" (they get most of the auctions and bids).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pyarrow as pa

from tideflow._errors import ConfigError

__all__ = [
    "AUCTION_SCHEMA",
    "BID_SCHEMA",
    "KINDS",
    "PERSON_SCHEMA",
    "SCHEMAS",
    "GeneratorSettings",
]

# --- event mix ---------------------------------------------------------------------------------
PERSON_PROPORTION = 1
AUCTION_PROPORTION = 3
BID_PROPORTION = 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION

# --- ids -------------------------------------------------------------------------------------
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
# People and auctions that may be referenced before they are created (the model allows it).
PERSON_ID_LEAD = 10
AUCTION_ID_LEAD = 10
# Average number of auctions open at a time and number of people considered active.
NUM_IN_FLIGHT_AUCTIONS = 100
NUM_ACTIVE_PEOPLE = 1000
# "Hot" entities: with probability 1 - 1/ratio an event picks the hot one, which is the first id
# of the latest group of HOT_GROUP ids.
HOT_AUCTION_RATIO = 2
HOT_BIDDER_RATIO = 4
HOT_SELLER_RATIO = 4
HOT_GROUP = 100

# --- channels --------------------------------------------------------------------------------
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
HOT_CHANNEL_RATIO = 2  # half of the bids come through a hot channel
NUM_CHANNELS = 10_000
CHANNEL_ID_SHARE = 0.9  # share of the other channels whose url carries a channel_id parameter

# --- sizes (average serialized bytes, padded with the `extra` field) -------------------------
AVG_PERSON_BYTES = 200
AVG_AUCTION_BYTES = 500
AVG_BID_BYTES = 100

# --- vocabularies (made up here; only their role follows the model) --------------------------
FIRST_NAMES = (
    "Ada",
    "Boris",
    "Chloe",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Liam",
)
LAST_NAMES = (
    "Abbott",
    "Brandt",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ivanova",
    "Jensen",
)
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY", "NV", "UT", "CO", "NM", "TX")
US_CITIES = (
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Seattle",
    "Spokane",
    "Cheyenne",
    "Reno",
    "Salt Lake City",
    "Denver",
    "Santa Fe",
    "Austin",
    "Kent",
    "Redmond",
)

KINDS = ("person", "auction", "bid")

_TS = pa.timestamp("ms", tz="UTC")

PERSON_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("email_address", pa.string()),
        ("credit_card", pa.string()),
        ("city", pa.string()),
        ("state", pa.string()),
        ("date_time", _TS),
        ("extra", pa.string()),
    ]
)
AUCTION_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("item_name", pa.string()),
        ("description", pa.string()),
        ("initial_bid", pa.int64()),
        ("reserve", pa.int64()),
        ("date_time", _TS),
        ("expires", _TS),
        ("seller", pa.int64()),
        ("category", pa.int64()),
        ("extra", pa.string()),
    ]
)
BID_SCHEMA = pa.schema(
    [
        ("auction", pa.int64()),
        ("bidder", pa.int64()),
        ("price", pa.int64()),
        ("channel", pa.string()),
        ("url", pa.string()),
        ("date_time", _TS),
        ("extra", pa.string()),
    ]
)
SCHEMAS = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA}

DEFAULT_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
    """What to generate: how many events, from which seed, on which event-time clock.

    Parameters
    ----------
    events
        Total number of events (people + auctions + bids).
    seed
        Seed of the random streams; the same settings always give the same events.
    base_time
        Event time of event 0 (timezone-aware UTC).
    event_rate
        Events per second of *event time* (the spacing of ``date_time``); 10,000/s as in the
        standard Nexmark configuration. Not the wall-clock rate (see ``rate`` of the iterator).

    Examples
    --------
    >>> GeneratorSettings(events=1000, seed=7).interval_us
    100
    """

    events: int
    seed: int = 0
    base_time: datetime = DEFAULT_BASE_TIME
    event_rate: int = 10_000

    def __post_init__(self) -> None:
        if self.events < 0:
            msg = f"nexmark generator: events must be >= 0, got {self.events}"
            raise ConfigError(msg)
        if self.event_rate <= 0 or 1_000_000 % self.event_rate != 0:
            msg = (
                f"nexmark generator: event_rate must divide 1,000,000 (events per second of "
                f"event time), got {self.event_rate}; try 10000"
            )
            raise ConfigError(msg)
        if self.base_time.tzinfo is None:
            msg = "nexmark generator: base_time must be timezone-aware (UTC)"
            raise ConfigError(msg)

    @property
    def interval_us(self) -> int:
        """Event-time spacing of consecutive events, in microseconds."""
        return 1_000_000 // self.event_rate

    @property
    def base_ms(self) -> int:
        """``base_time`` as epoch milliseconds."""
        return int(self.base_time.timestamp() * 1000)
