"""Timelines from events: recovery phases per node, windows, the animated GIF."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from synthetic import (
    SyntheticFailure,
    SyntheticRun,
    synthetic_events,
    synthetic_summary,
    write_synthetic_run,
)

from analysis.results import RunResult, load_run
from analysis.timeline import (
    MAX_NODES_SHOWN,
    MAX_RECOVERIES_SHOWN,
    STATE_ORDER,
    Span,
    Timeline,
    animate_failure,
    build_timeline,
    choose_nodes,
    draw_gantt,
    failure_window,
    pixel_bars,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PolyCollection

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


# A big run: 1000 nodes, twelve failures (node 17 fails twice, 503 and 504 together); about
# 60,000 spans when every node gets a row.
BIG_FAILURES = tuple(
    SyntheticFailure(at, "software", nodes, 0.1, 0.2, 0.0, 1.0, 0.5)
    for at, nodes in (
        (2, (900,)),
        (4, (17,)),
        (6, (503, 504)),
        (8, (17,)),
        (10, (250,)),
        (12, (3,)),
        (14, (999,)),
        (16, (600,)),
        (18, (42,)),
        (20, (777,)),
        (22, (128,)),
        (24, (64,)),
    )
)


@pytest.fixture(scope="module")
def big_run() -> RunResult:
    spec = SyntheticRun(nodes=1000, iterations=26, failures=BIG_FAILURES)
    events = synthetic_events(spec)
    return RunResult(Path("big"), synthetic_summary(spec, events), tuple(events))


def _bar_collections(ax: Axes) -> list[PolyCollection]:
    """What ``broken_barh`` added (markers are ``PathCollection``s)."""
    from matplotlib.collections import PolyCollection

    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_rows_are_the_failed_nodes_first_then_the_lowest_ids(big_run: RunResult) -> None:
    timeline = build_timeline(big_run)
    assert len(timeline.nodes) == MAX_NODES_SHOWN
    assert timeline.node_count == 1000
    assert timeline.hidden_nodes == 1000 - MAX_NODES_SHOWN
    failed = (900, 17, 503, 504, 250, 3, 999, 600, 42, 777, 128, 64)
    lowest = [n for n in range(1000) if n not in failed][: MAX_NODES_SHOWN - len(failed)]
    assert timeline.nodes == tuple(sorted([*failed, *lowest]))  # drawn in id order
    assert {s.node for s in timeline.spans} == set(timeline.nodes)
    assert {m.node for m in timeline.markers} <= set(timeline.nodes)
    # Fewer rows than failed nodes: the first to fail win; ``focus`` puts a failure first.
    assert build_timeline(big_run, max_nodes=3).nodes == (17, 503, 900)
    assert build_timeline(big_run, max_nodes=3, focus=6).nodes == (17, 900, 999)
    assert choose_nodes(range(10), (), 4) == (0, 1, 2, 3)
    assert len(build_timeline(big_run, max_nodes=None).nodes) == 1000


def test_a_big_run_draws_one_collection_per_row_and_state(big_run: RunResult) -> None:
    import matplotlib.pyplot as plt

    from analysis.timeline import plot_timelines

    full = build_timeline(big_run, max_nodes=None)
    assert len(full.spans) > 50_000
    fig = plot_timelines([big_run])
    try:
        (ax,) = fig.axes
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels) == MAX_NODES_SHOWN
        assert labels[:3] == ["node 0", "node 1", "node 2"]
        assert "node 900" in labels and "node 999" in labels
        assert f"{MAX_NODES_SHOWN} of 1000 nodes shown: those that failed" in ax.get_title()
        assert len(_bar_collections(ax)) <= MAX_NODES_SHOWN * len(STATE_ORDER)  # not per span
    finally:
        plt.close(fig)
    # Even every row of the 60,000 spans: one collection per (row, state), not per span.
    rows = Timeline("t", full.nodes[:50], full.start, full.end, full.spans, (), ())
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        draw_gantt(ax, rows, legend=False)
        spans_shown = sum(1 for s in full.spans if s.node < 50)
        assert len(_bar_collections(ax)) <= 50 * len(STATE_ORDER) < spans_shown
    finally:
        plt.close(fig)


def test_spans_narrower_than_a_pixel_are_merged() -> None:
    # 50,000 spans of 10 ms, recovery phases after training, over 500 s at 1 s a pixel.
    states = ("training", "training", "detection", "restart", "restart")
    spans = [Span(0, i * 0.01, (i + 1) * 0.01, states[i % 5]) for i in range(50_000)]
    wide = Span(0, 500.0, 510.0, "down")  # partly outside the window: clipped
    bars, merged = pixel_bars([*spans, wide], 0.0, 505.0, 1.0)
    assert merged
    # Each pixel holds training (0.4 s), detection (0.2 s) and restart (0.4 s): a recovery
    # phase wins over training, the longest of them restart, so every pixel is a restart
    # mark, and the marks touch: one bar from 0 to 500 s.
    assert bars["restart"] == [pytest.approx((0.0, 500.0))]
    assert bars["down"] == [pytest.approx((500.0, 5.0))]
    assert set(bars) == {"restart", "down"}
    # A span a pixel wide or more is drawn as it is; a lone narrow one a pixel wide.
    exact, merged = pixel_bars(
        [Span(0, 0.0, 3.0, "training"), Span(0, 3.0, 3.2, "stop")], 0.0, 10.0, 1.0
    )
    assert not merged
    assert exact == {"training": [(0.0, 3.0)], "stop": [(3.0, 1.0)]}


def test_a_small_run_keeps_every_row_and_its_title(run: RunResult) -> None:
    import matplotlib.pyplot as plt

    from analysis.timeline import plot_timelines

    timeline = build_timeline(run)
    assert timeline.hidden_nodes == 0 and timeline.rows_note() == ""
    fig = plot_timelines([run])
    try:
        (ax,) = fig.axes
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"node {n}" for n in range(4)]
        assert "nodes shown" not in ax.get_title()
        assert "1-pixel" not in ax.get_title()
        assert ax.get_title().startswith(timeline.title)
    finally:
        plt.close(fig)


def test_a_run_of_many_failures_shows_its_first_ones(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from analysis.timeline import plot_timelines

    failures = [SyntheticFailure(at, nodes=(at % 4,)) for at in range(2, 80, 4)]
    many = load_run(
        write_synthetic_run(tmp_path / "m", SyntheticRun(iterations=90, failures=failures))
    )
    timeline = build_timeline(many)
    assert len(timeline.recoveries) == len(failures) > MAX_RECOVERIES_SHOWN
    lo, hi = timeline.default_window()
    assert lo == timeline.start
    first = sorted(r.injected for r in timeline.recoveries)
    assert first[MAX_RECOVERIES_SHOWN - 1] < hi < first[-1]
    fig = plot_timelines([many])
    try:
        title = fig.axes[0].get_title()
        assert f"first {MAX_RECOVERIES_SHOWN} of {len(failures)} failures" in title
    finally:
        plt.close(fig)


def test_a_failure_nothing_injected_is_drawn_from_its_first_evidence(run: RunResult) -> None:
    """A real cluster's failure (numbered from 1000, no failure_injected): the timeline starts
    it where the summary does, at the detection less its latency, on the detected node."""
    import dataclasses

    events = []
    for event in run.events:
        if event.kind == "failure_injected":
            continue
        if event.kind == "failure_detected":
            details = {"failure": 4, "failure_kind": "hardware", "detection_latency_s": 0.75}
            event = dataclasses.replace(event, node=2, details=details)
        events.append(event)
    unscheduled = dataclasses.replace(run, events=tuple(events))
    (recovery,) = build_timeline(unscheduled).recoveries
    assert recovery.nodes == (2,)
    assert recovery.injected == pytest.approx(recovery.detected - 0.75)
