"""Entry point of the ``tideflow`` command."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the ``tideflow`` command line."""
    return 0
