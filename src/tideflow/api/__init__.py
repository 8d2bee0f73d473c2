"""The dataflow API."""

from __future__ import annotations

from tideflow.api._dataflow import Dataflow, KeyedStream, Split, Stream
from tideflow.api._joins import JoinOut

__all__ = ["Dataflow", "JoinOut", "KeyedStream", "Split", "Stream"]
