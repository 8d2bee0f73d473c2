"""The dataflow API."""

from __future__ import annotations

from tideflow.api._dataflow import Dataflow, KeyedStream, Split, Stream
from tideflow.api._joins import BestMatch, JoinOut

__all__ = ["BestMatch", "Dataflow", "JoinOut", "KeyedStream", "Split", "Stream"]
