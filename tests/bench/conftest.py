"""Shared fixtures: one small generated Nexmark data set per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tideflow.bench.nexmark import GeneratorSettings, write_events

SMALL_EVENTS = 30_000


@pytest.fixture(scope="session")
def nexmark_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30,000 events (600 people, 1,800 auctions, 27,600 bids), seed 11."""
    out = tmp_path_factory.mktemp("nexmark")
    write_events(GeneratorSettings(events=SMALL_EVENTS, seed=11), out)
    return out
