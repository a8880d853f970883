"""SimPy simulator of a training job under failures, with Gemini or persistent checkpoints.

Entry points: ``simulate(scenario, seed)`` for one run, ``replicate(scenario, seeds)`` for
several in parallel. See docs/simulator.md for the model and its assumptions.
"""

from __future__ import annotations

from sim.replicate import SimResult, aggregate, replicate, simulate, write_result
from sim.simulation import SimProgress

__all__ = ["SimProgress", "SimResult", "aggregate", "replicate", "simulate", "write_result"]
