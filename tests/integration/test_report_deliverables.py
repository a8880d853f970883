"""The deliverables of ``gemini-ckpt report``: final report, slide deck, demo video.

Each test opens what was written and checks its content against the synthetic runs it was
made from: every figure named and embedded, the miss table's rows, one slide per figure with
images that decode, and a video of the expected size and frame count that shows the recovery.
"""

from __future__ import annotations

import base64
import io
import itertools
import re
from pathlib import Path

import pytest
from synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run

from gemini_ckpt.cli import main

# (at_iteration, kind, nodes, detection, stop, replacement, restart, retrieval, tier, restored)
SIM_SOFT = SyntheticFailure(4, "software", (1,), 0.05, 0.1, 0.0, 2.0, 0.3, "local", 3)
SIM_HARD = SyntheticFailure(10, "hardware", (2,), 3.0, 0.2, 0.5, 2.5, 0.8, "peer", 9)
REAL_SOFT = SyntheticFailure(4, "software", (1,), 0.06, 0.12, 0.0, 2.2, 0.35, "local", 3)
REAL_HARD = SyntheticFailure(10, "hardware", (2,), 3.5, 0.2, 0.5, 4.0, 0.8, "peer", 9)
NFS = SyntheticFailure(4, "software", (1,), 0.05, 0.1, 0.0, 2.0, 3.0, "persistent", 0)

# The simulator's misses, worst first: (failure, phase, error). Phases zero in both runs
# (the crash's replacement) are left out; exact matches follow in failure and phase order.
EXPECTED_MISSES = [
    ("#1 hardware", "restart", "-1.5 s"),
    ("#1 hardware", "detection", "-0.5 s"),
    ("#0 software", "restart", "-0.2 s"),
    ("#0 software", "retrieval", "-0.05 s"),
    ("#0 software", "stop", "-0.02 s"),
    ("#0 software", "detection", "-0.01 s"),
    ("#0 software", "lost progress", "0 s"),
    ("#1 hardware", "stop", "0 s"),
    ("#1 hardware", "replacement", "0 s"),
    ("#1 hardware", "retrieval", "0 s"),
    ("#1 hardware", "lost progress", "0 s"),
]
FIGURES = (
    "timeline.png",
    "strategies.png",
    "phases.png",
    "throughput.png",
    "iteration_time.png",
    "recovery_probability.png",
    "ettr.png",
    "recovery.gif",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gemini-ckpt report`` over a Gemini pair (sim, real), a simulated baseline, a sweep."""
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_run(root / "sim-gemini", SyntheticRun("sim", failures=(SIM_SOFT, SIM_HARD)))
    write_synthetic_run(root / "real-gemini", SyntheticRun("real", failures=(REAL_SOFT, REAL_HARD)))
    write_synthetic_run(root / "sim-baseline", SyntheticRun("sim", "persistent", failures=(NFS,)))
    for nodes in (4, 8):
        write_synthetic_run(
            root / "sweep" / f"nodes-{nodes}-gemini",
            SyntheticRun("sim", nodes=nodes, failures=(SIM_SOFT,)),
        )
    out = root / "report"
    assert main(["report", str(root), "--out", str(out)]) == 0
    return out


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table under ``heading``."""
    section = markdown.split(heading, 1)[1]
    lines = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def test_final_report_has_every_section_and_figure(report: Path) -> None:
    markdown = (report / "final-report.md").read_text()
    for heading in ("## Summary", "## Method", "## Setup", "## Results", "## What misses"):
        assert f"\n{heading}\n" in markdown
    assert sorted(p.name for p in (report / "figures").iterdir()) == sorted(FIGURES)
    for name in FIGURES:
        assert f"](figures/{name})" in markdown
    page = (report / "final-report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES) - 1
    assert page.count("data:image/gif;base64,") == 1
    assert "src='figures/" not in page  # self-contained
    # Numbers come from the runs: the setup row of the measured run, the verdict's error.
    setup = {row[0]: row for row in _table(markdown, "### What each run ran")}
    assert setup["real-gemini"][1:6] == ["synthetic", "harness (real)", "4", "20", "0.5 s"]
    assert setup["real-gemini"][7] == "hardware x1, software x1"
    assert "Median absolute error of total recovery time (downtime): 19.4%" in markdown
    # The missed scenario is named with the phase that misses most.
    assert "- synthetic (gemini): misses the goal; largest phase error: restart" in markdown


def test_final_report_miss_table_lists_every_phase_worst_first(report: Path) -> None:
    markdown = (report / "final-report.md").read_text()
    rows = _table(markdown, "### The simulator's errors per phase, worst first")
    assert [(r[1], r[2], r[5]) for r in rows] == EXPECTED_MISSES
    assert {r[0] for r in rows} == {"synthetic (gemini)"}
    assert rows[0][3:5] == ["2.5 s", "4 s"]  # simulated, measured restart of the lost node
    assert rows[0][6] == "-37.5%"
    html_rows = (report / "final-report.html").read_text().split("worst first</h3>")[1]
    body = html_rows.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr>") == len(EXPECTED_MISSES)


def test_slides_have_one_slide_per_figure_and_the_images_decode(report: Path) -> None:
    from PIL import Image

    deck = (report / "slides.html").read_text()
    assert "http://" not in deck and "https://" not in deck and "src='figures/" not in deck
    assert "ArrowRight" in deck and "addEventListener('click'" in deck
    slides = re.findall(r"<section class='slide (\w+)'>(.*?)</section>", deck, re.S)
    figures = [body for kind, body in slides if kind == "figure"]
    assert len(figures) == len(FIGURES)
    assert [kind for kind, _ in slides][:2] == ["title", "results"]
    assert slides[-1][0] == "misses" and "restart" in slides[-1][1]
    for body, name in zip(figures, FIGURES, strict=True):
        mime, data = re.search(r"src='data:(image/\w+);base64,([^']+)'", body).groups()  # type: ignore[union-attr]
        raw = base64.b64decode(data)
        assert raw == (report / "figures" / name).read_bytes()
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            assert image.format == mime.split("/")[1].upper()
            assert image.width > 300 and image.height > 150


def test_demo_video_shows_the_recovery_at_the_expected_size(report: Path) -> None:
    import imageio_ffmpeg
    import numpy as np

    from analysis.video import VIDEO_SIZE

    video = report / "demo.mp4"
    assert imageio_ffmpeg.count_frames_and_secs(str(video)) == (60, 5.0)
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    assert meta["size"] == VIDEO_SIZE == (1280, 720)
    assert meta["codec"] == "h264"
    width, height = VIDEO_SIZE
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    reader.close()
    assert len(frames) == 60
    # The "now" line sweeps from before the failure to after the recovery: the charts fill in.
    inked = [float((frame < 200).mean()) for frame in frames]
    assert inked[-1] > inked[0] * 1.5
    assert all(b >= a - 0.01 for a, b in itertools.pairwise(inked))


def test_no_video_skips_only_the_video(report: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    runs = report.parent
    assert main(["report", str(runs), "--out", str(out), "--no-video", "--no-gif"]) == 0
    assert not (out / "demo.mp4").exists()
    for name in ("final-report.md", "final-report.html", "slides.html"):
        assert (out / name).stat().st_size > 1000
