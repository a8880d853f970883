"""The closed-form timeline: iteration ends, pauses, captures, commits, and its inverse."""

from __future__ import annotations

import dataclasses

import pytest

from sim.strategies import StrategyModel, Timeline


def _model(
    pause_every: int | None = None, pause_s: float = 0.0, next_end: bool = False
) -> StrategyModel:
    return StrategyModel(
        "persistent" if pause_every else "gemini",
        1.0,
        1.0,
        0.25,
        "next_iteration_end" if next_end else "on_arrival",
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


def test_commit_at_next_end_counts_iteration_k_once_k_plus_1_has_ended() -> None:
    timeline = Timeline(0.0, 4, _model(next_end=True))  # iteration 5 ends at 1, 6 at 2, ...
    assert [timeline.commit_time(k) for k in (5, 6, 7)] == pytest.approx([2.0, 3.0, 4.0])
    assert timeline.committed_by(1.9) is None  # 5 has arrived in memory, but 6 has not ended
    assert timeline.committed_by(timeline.end(6)) == 5  # save(6) has committed it
    assert timeline.committed_by(2.5) == 5
    assert timeline.committed_by(timeline.end(9) + 0.5) == 8


def test_captured_by_counts_an_iteration_from_its_end() -> None:
    # end(k) is when save(k) returned, its capture done; its replicas follow (0.25 s later).
    gemini = Timeline(0.0, 0, _model())
    assert gemini.captured_by(0.5) is None
    assert gemini.captured_by(2.0) == 2  # captured as it ends; committed_by says 1
    assert gemini.committed_by(2.0) == 1
    assert gemini.captured_by(2.2) == 2
    restored = Timeline(10.0, 4, _model())  # since the restore only: 5 ends at 11
    assert restored.captured_by(10.9) is None
    assert restored.captured_by(11.0) == 5


def test_captured_by_keeps_to_the_checkpointed_iterations() -> None:
    every_three = Timeline(0.0, 0, dataclasses.replace(_model(), checkpoint_every=3))
    assert [every_three.captured_by(t) for t in (2.9, 3.0, 5.5, 6.0)] == [None, 3, 3, 6]
    assert every_three.committed_by(6.0) == 3


def test_lost_work_starts_at_the_update_or_once_the_blocking_save_has_returned() -> None:
    timeline = Timeline(10.0, 0, _model(pause_every=3, pause_s=0.5))  # 3 ends at 13, saves
    assert timeline.lost_since(2, 12.4) == pytest.approx(12.0)  # no save after 2
    assert timeline.lost_since(3, 13.2) == pytest.approx(13.0)  # during save(3)
    assert timeline.lost_since(3, 13.5) == pytest.approx(13.5)  # save(3) returned
    assert timeline.lost_since(3, 14.2) == pytest.approx(13.5)
    assert timeline.lost_since(0, 10.5) == pytest.approx(10.0)  # nothing reached: the start
    restored = Timeline(20.0, 3, _model(pause_every=3, pause_s=0.5))
    assert restored.lost_since(3, 20.5) == pytest.approx(20.0)  # the base: no save after it
    gemini = Timeline(0.0, 0, _model())
    assert gemini.lost_since(3, 3.7) == pytest.approx(3.0)
