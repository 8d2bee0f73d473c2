"""The ``tideflow`` command line."""

from __future__ import annotations

from tideflow.cli._main import main

__all__ = ["main"]
