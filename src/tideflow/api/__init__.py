"""The dataflow API."""

from __future__ import annotations

from tideflow.api._dataflow import Dataflow, KeyedStream, Split, Stream

__all__ = ["Dataflow", "KeyedStream", "Split", "Stream"]
