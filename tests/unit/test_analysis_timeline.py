"""Timelines from events: recovery phases per node, windows, the animated GIF."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run

from analysis.results import load_run
from analysis.timeline import animate_failure, build_timeline, failure_window

HARD = SyntheticFailure(4, "hardware", (2,), 1.0, 0.5, 2.0, 1.5, 0.5, "peer", 3)


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_run(write_synthetic_run(tmp_path / "r", SyntheticRun(failures=(HARD,))))


def test_recovery_spans_per_node(run) -> None:  # type: ignore[no-untyped-def]
    timeline = build_timeline(run)
    assert timeline.nodes == (0, 1, 2, 3)
    (recovery,) = timeline.recoveries
    t0 = 4 * 0.5
    assert (recovery.injected, recovery.detected, recovery.stopped) == pytest.approx(
        (t0, t0 + 1.0, t0 + 1.5)
    )
    assert recovery.ready == pytest.approx(t0 + 3.5)
    assert recovery.resumed == pytest.approx(t0 + 5.5)
    assert recovery.recompute_end == pytest.approx(t0 + 5.5 + 0.5)  # one lost iteration

    def states(node: int) -> list[tuple[str, float, float]]:
        return [
            (s.state, round(s.start, 6), round(s.end, 6))
            for s in sorted(timeline.spans, key=lambda s: s.start)
            if s.node == node and s.start >= t0
        ]

    assert states(2)[:4] == [
        ("down", 2.0, 5.5),
        ("restart", 5.5, 7.0),
        ("retrieval", 7.0, 7.5),
        ("recompute", 7.5, 8.0),
    ]
    assert [s for s, _, _ in states(0)[:5]] == [
        "detection",
        "stop",
        "replacement",
        "restart",
        "retrieval",
    ]
    kinds = {m.kind for m in timeline.markers}
    assert kinds == {"checkpoint", "persist", "failure", "resume"}
    assert [m.node for m in timeline.markers if m.kind == "failure"] == [2]


def test_failure_window_and_unknown_index(run) -> None:  # type: ignore[no-untyped-def]
    timeline = build_timeline(run)
    recovery, lo, hi = failure_window(timeline)
    assert lo < recovery.injected < recovery.recompute_end < hi
    with pytest.raises(ValueError, match="no failure 7"):
        failure_window(timeline, 7)


def test_gif_is_small_and_animated(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from analysis.plots import setup_style

    setup_style()
    path = animate_failure(run, tmp_path / "r.gif", frames=4, dpi=40)
    assert 0 < path.stat().st_size < 200_000
    with Image.open(path) as image:
        assert image.format == "GIF"
        assert image.n_frames == 4
