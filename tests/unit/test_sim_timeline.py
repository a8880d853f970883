"""The closed-form timeline: iteration ends, pauses, commits, and its inverse."""

from __future__ import annotations

import pytest

from sim.strategies import StrategyModel, Timeline


def _model(pause_every: int | None = None, pause_s: float = 0.0) -> StrategyModel:
    return StrategyModel(
        "persistent" if pause_every else "gemini",
        1.0,
        1.0,
        0.25,
        pause_every,
        pause_s,
        pause_every,
        0.0,
        1.0,
        0.0,
        "test",
    )


def test_blocking_saves_push_later_iterations() -> None:
    timeline = Timeline(10.0, 0, _model(pause_every=3, pause_s=0.5))
    ends = [timeline.end(k) for k in range(1, 8)]
    assert ends == pytest.approx([11, 12, 13, 14.5, 15.5, 16.5, 18.0])


def test_reached_by_inverts_end_and_commits_lag_by_the_delay() -> None:
    timeline = Timeline(5.0, 7, _model(pause_every=4, pause_s=0.3))
    for k in range(8, 60):
        assert timeline.reached_by(timeline.end(k)) == k
        assert timeline.reached_by(timeline.end(k) - 1e-6) == k - 1
    gemini = Timeline(0.0, 0, _model())
    assert gemini.committed_by(2.2) == 1  # iteration 2 ends at 2, commits at 2.25
    assert gemini.committed_by(2.25) == 2
    assert gemini.committed_by(0.5) is None
