"""Which recovery the demo video shows, the tiers it names, and a short single-run video."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run

from analysis.results import load_run
from analysis.video import VIDEO_SIZE, choose_panels, frame_clock, restore_tiers, write_demo_video

SOFT = SyntheticFailure(4, "software", (1,), 0.05, 0.1, 0.0, 2.0, 0.3, "local", 3)
HARD = SyntheticFailure(10, "hardware", (2,), 3.0, 0.2, 0.5, 2.5, 0.8, "peer", 9)
SLOW_HARD = SyntheticFailure(10, "hardware", (2,), 3.0, 0.2, 0.5, 6.0, 0.8, "peer", 9)


def test_the_gemini_pair_is_shown_from_its_first_common_failure(tmp_path: Path) -> None:
    runs = [
        load_run(write_synthetic_run(tmp_path / name, run))
        for name, run in {
            "sim-nfs": SyntheticRun("sim", "persistent", failures=(SOFT,)),
            "real-nfs": SyntheticRun("real", "persistent", failures=(SOFT,)),
            "sim": SyntheticRun("sim", failures=(HARD,)),
            "real": SyntheticRun("real", failures=(SLOW_HARD, SOFT)),
        }.items()
    ]
    panels = choose_panels(runs)
    assert [(p.run.source, p.run.strategy, p.recovery.index) for p in panels] == [
        ("sim", "gemini", 0),
        ("real", "gemini", 0),
    ]
    # A lost node restored from a peer; the survivors from their own memory.
    assert panels[0].tiers == {0: "local", 1: "local", 2: "peer", 3: "local"}
    # One clock for both sides, long enough for the slower (measured) recovery.
    clock = frame_clock(panels, 11)
    slower = panels[1].recovery.recompute_end - panels[1].recovery.injected
    assert clock[0] < 0 < slower < clock[-1]
    assert len(clock) == 11 and clock == sorted(clock)


def test_tiers_follow_each_nodes_own_restore_event(tmp_path: Path) -> None:
    run = load_run(write_synthetic_run(tmp_path / "r", SyntheticRun("sim", failures=(HARD,))))
    recovery = choose_panels([run])[0].recovery
    assert restore_tiers(run, recovery, (0, 1, 2, 3)) == {
        0: "local",
        1: "local",
        2: "peer",
        3: "local",
    }
    persistent = SyntheticFailure(10, "group", (2, 3), 3.0, 0.2, 0.5, 2.5, 0.8, "persistent", 5)
    rolled = load_run(
        write_synthetic_run(tmp_path / "p", SyntheticRun("sim", failures=(persistent,)))
    )
    recovery = choose_panels([rolled])[0].recovery
    assert set(restore_tiers(rolled, recovery, (0, 1, 2, 3)).values()) == {"persistent"}


def test_a_single_run_makes_a_one_sided_video(tmp_path: Path) -> None:
    import imageio_ffmpeg

    run = load_run(write_synthetic_run(tmp_path / "sim", SyntheticRun("sim", failures=(SOFT,))))
    assert len(choose_panels([run])) == 1
    video = write_demo_video([run], tmp_path / "demo.mp4", frames=6, fps=6)
    assert video == tmp_path / "demo.mp4"
    assert imageio_ffmpeg.count_frames_and_secs(str(video)) == (6, 1.0)
    reader = imageio_ffmpeg.read_frames(str(video))
    assert next(reader)["size"] == VIDEO_SIZE
    reader.close()


def test_no_failure_no_video(tmp_path: Path) -> None:
    run = load_run(write_synthetic_run(tmp_path / "calm", SyntheticRun("sim")))
    assert write_demo_video([run], tmp_path / "demo.mp4") is None
    assert not (tmp_path / "demo.mp4").exists()
    with pytest.raises(ValueError, match="frames must be >= 2"):
        write_demo_video([run], tmp_path / "demo.mp4", frames=1)


def test_nothing_after_now_shows_even_before_the_run_starts(tmp_path: Path) -> None:
    # A failure right after the first iteration: the clock starts before the run does, so
    # the first frame must show nothing at all, the last one the whole recovery.
    import numpy as np

    from analysis.timeline import STATE_COLORS
    from analysis.video import render_frames

    early = SyntheticFailure(1, "software", (1,), 0.3, 0.1, 0.0, 2.0, 0.3, "local", 0)
    run = SyntheticRun("sim", iterations=8, failures=(early,))
    panels = choose_panels([load_run(write_synthetic_run(tmp_path / "early", run))])
    clock = frame_clock(panels, 8)
    assert clock[0] < -panels[0].recovery.injected  # before the run started
    frames = list(render_frames(panels, clock))
    assert all(frame.shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3) for frame in frames)
    charts = [frame[: int(VIDEO_SIZE[1] * 0.85)] for frame in frames]  # above the legend

    def shows(chart: np.ndarray, state: str) -> bool:
        rgb = np.array([int(STATE_COLORS[state][i : i + 2], 16) for i in (1, 3, 5)])
        return bool((np.abs(chart.astype(int) - rgb).sum(axis=2) < 12).any())

    states = ("training", "detection", "restart", "retrieval")
    assert not any(shows(charts[0], state) for state in states)
    assert all(shows(charts[-1], state) for state in states)
