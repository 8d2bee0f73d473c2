"""Benchmarks of tideflow side by side with peer engines (``tideflow bench ...``)."""

from __future__ import annotations

__all__: list[str] = []
