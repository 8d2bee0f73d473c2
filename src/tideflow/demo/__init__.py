"""The main job: real-time card-transaction monitoring (``tideflow demo``)."""

from __future__ import annotations

from tideflow.demo._fraud import add_demo_options, build_flow, run_demo

__all__ = ["add_demo_options", "build_flow", "run_demo"]
