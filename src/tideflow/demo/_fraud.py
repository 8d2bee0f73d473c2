"""Placeholder replaced by the fraud demo."""

from __future__ import annotations

import argparse

from tideflow.api import Dataflow


def add_demo_options(p: argparse.ArgumentParser) -> None:
    """Options of ``tideflow demo``."""


def build_flow(args: argparse.Namespace) -> Dataflow:
    """The demo dataflow."""
    raise NotImplementedError


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    return 0
