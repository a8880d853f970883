"""``gemini-ckpt report`` and ``gemini-ckpt run`` end to end on generated run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run

from gemini_ckpt.cli import main

REPO = Path(__file__).resolve().parents[2]
SOFT = SyntheticFailure(4, "software", (1,), 0.05, 0.1, 0.0, 2.0, 0.3, "local", 3)
HARD = SyntheticFailure(10, "hardware", (2,), 3.0, 0.2, 0.5, 2.5, 0.8, "peer", 9)
SOFT_NFS = SyntheticFailure(4, "software", (1,), 0.05, 0.1, 0.0, 2.0, 3.0, "persistent", 0)
HARD_NFS = SyntheticFailure(10, "hardware", (2,), 3.0, 0.2, 0.5, 2.5, 3.5, "persistent", 5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like `gemini-ckpt run` writes: four runs and a small sweep."""
    root = tmp_path_factory.mktemp("runs")
    measured_soft = SyntheticFailure(4, "software", (1,), 0.06, 0.12, 0.0, 2.2, 0.35, "local", 3)
    write_synthetic_run(root / "sim-gemini", SyntheticRun("sim", failures=(SOFT, HARD)))
    write_synthetic_run(root / "real-gemini", SyntheticRun("real", failures=(measured_soft, HARD)))
    for source in ("sim", "real"):
        write_synthetic_run(
            root / f"{source}-baseline",
            SyntheticRun(source, "persistent", failures=(SOFT_NFS, HARD_NFS)),
        )
    for nodes in (4, 8):
        for strategy, failure in (("gemini", SOFT), ("persistent", SOFT_NFS)):
            write_synthetic_run(
                root / "sweep" / f"nodes-{nodes}-{strategy}",
                SyntheticRun("sim", strategy, nodes=nodes, failures=(failure,)),
            )
    return root


def test_report_writes_self_contained_html_markdown_and_gif(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["report", str(run_dir), "--out", str(out), "--no-video"]) == 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6
    assert "data:image/gif;base64," in html
    assert "src='figures/" not in html  # nothing refers to files next to the page
    markdown = (out / "report.md").read_text()
    for heading in (
        "## Runs",
        "## Gemini vs the persistent-storage baseline",
        "## Validation: simulator vs measurement",
        "## Per-phase errors",
    ):
        assert heading in markdown
    assert re.search(r"^\| scenario \| strategy \| failures \| predicted downtime", markdown, re.M)
    assert "| synthetic | gemini | 2 |" in markdown
    # ETTR says what it is over: a simulated day and a measured minute are not one figure.
    assert "| trained | ETTR |" in markdown and "not a simulated day with a" in markdown
    # One scenario under two strategies: two pairs, reported but not judged.
    assert "goal <= 10%: not judged on 2, it needs at least 6" in markdown
    assert "these are within it" in markdown
    for name in ("timeline", "strategies", "phases", "throughput", "iteration_time", "ettr"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5_000
        assert f"figures/{name}.png" in markdown
    gif = out / "figures" / "recovery.gif"
    assert 0 < gif.stat().st_size < 1_500_000


def test_report_exit_codes(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert main(["report"]) == 2  # no RUN_DIR


def test_run_simulates_both_strategies_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    code = main(
        [
            "run",
            str(REPO / "scenarios" / "quickstart.yaml"),
            "--out",
            str(out),
            "--no-real",
            "--no-sweep",
            "--no-gif",
            "--no-video",
        ]
    )
    assert code == 0
    for name in ("sim-gemini", "sim-baseline"):
        assert (out / name / "summary.json").is_file()
        assert (out / name / "events.jsonl").is_file()
    markdown = (out / "report.md").read_text()
    assert "| sim | " in markdown  # the Gemini vs baseline row of the simulator
    final = (out / "final-report.md").read_text()  # the deliverables come with the main job
    assert "## What misses" in final and "figures/timeline.png" in final
    # Five figures: with nothing measured there is no simulated-vs-measured phase figure.
    assert (out / "slides.html").read_text().count("<section class='slide figure'>") == 5
    assert not (out / "demo.mp4").exists()  # --no-video
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2


def test_the_baseline_interval_follows_the_highfreq_rule() -> None:
    from gemini_ckpt.commands.run import baseline_overrides
    from shared.scenario_loader import load_scenario

    quickstart = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"
    # K = ceil((save 0.5 s + upload of one copy of the state, 951,552 x 12 bytes = 11.4 MB at
    # 0.2 Gbit/s = 0.457 s) / 0.04 s) = 24.
    settings = ["cluster.storage.save_time_s=0.5", "training.iteration_time_s=0.04"]
    assert baseline_overrides(load_scenario(quickstart, settings)) == [
        "checkpoint.strategy=persistent",
        "checkpoint.baseline_every_iterations=24",
    ]
    named = [*settings, "checkpoint.baseline_every_iterations=7"]
    assert baseline_overrides(load_scenario(quickstart, named)) == [
        "checkpoint.strategy=persistent"
    ]


def test_report_names_the_runs_it_leaves_out_of_the_comparison(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two simulated runs of one scenario and strategy: the first given is compared with the
    measured run, and the report says which, in whatever order the folders came."""
    other = write_synthetic_run(tmp_path / "sim-again", SyntheticRun("sim", failures=(HARD,)))
    first, measured = run_dir / "sim-gemini", run_dir / "real-gemini"
    for order in ((first, other, measured), (other, first, measured)):
        out = tmp_path / f"report-{order[0].name}"
        args = ["report", *map(str, order), "--out", str(out), "--no-video", "--no-gif"]
        assert main(args) == 0
        said = " ".join(capsys.readouterr().err.split())
        assert (
            f"2 sim runs of synthetic (gemini): the comparison uses the first given, {order[0]}; "
            f"not compared: {order[1]}" in said
        )


def test_a_report_of_simulated_runs_alone_claims_no_measurement(
    run_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sim-only"
    # An earlier report of every run in the same folder: its figures of measured runs, and its
    # GIF, would be left beside the new report's (found by a user's second run).
    assert main(["report", str(run_dir), "--out", str(out), "--no-video"]) == 0
    assert (out / "figures" / "phases.png").exists()
    assert (out / "figures" / "recovery.gif").exists()
    (out / "demo.mp4").write_bytes(b"an earlier video")
    sims = [str(run_dir / "sim-gemini"), str(run_dir / "sim-baseline")]
    assert main(["report", *sims, "--out", str(out), "--no-video", "--no-gif"]) == 0
    markdown = (out / "report.md").read_text()
    assert "simulated (no measured run was given)" in markdown
    assert "measured on the emulated cluster" not in markdown
    assert "Simulated (left) and measured (right)" not in markdown
    assert "One panel per run" in markdown
    assert "figures/phases.png" not in markdown  # nothing measured to set beside
    assert not (out / "figures" / "phases.png").exists()
    assert not (out / "figures" / "recovery.gif").exists()  # --no-gif
    assert not (out / "demo.mp4").exists()  # --no-video
    assert (out / "slides.html").exists() and (out / "final-report.md").exists()


def test_report_names_a_run_folder_it_skips_for_want_of_a_summary(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped before it ended (Ctrl-C) has event files and no summary: skipped, said."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(run_dir / "sim-gemini", root / "sim-gemini")
    stopped = root / "real-gemini"
    (stopped / "events").mkdir(parents=True)
    (stopped / "events" / "agent-0.jsonl").write_text("")
    args = ["report", str(root), "--out", str(tmp_path / "r"), "--no-video", "--no-gif"]
    assert main(args) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"skipped {stopped}: events but no summary.json" in said
    # given by itself, beside a finished run (it was refused: "holds no run folder")
    args = ["report", str(root / "sim-gemini"), str(stopped), "--out", str(tmp_path / "r2")]
    assert main([*args, "--no-video", "--no-gif"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"skipped {stopped}: events but no summary.json" in said
    # ... while a command that needs its measurements (calibrate --from-run) still refuses it
    from analysis.results import find_run_folders
    from shared.errors import RunFolderError

    with pytest.raises(RunFolderError, match="holds no run folder"):
        find_run_folders(stopped)
    assert find_run_folders(stopped, skip_unfinished=True) == []
    # alone, there is nothing to report
    assert main(["report", str(stopped), "--out", str(tmp_path / "r3"), "--no-video"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "stopped before it ended" in said and "no summary.json" in said


def test_report_leaves_out_a_run_whose_job_failed(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed run's summary tells what happened until then, not what its scenario
    measures: the report leaves it out, and says why; with nothing else, there is no report."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(run_dir / "sim-gemini", root / "sim-gemini")
    shutil.copytree(run_dir / "sim-baseline", root / "failed")
    summary = json.loads((root / "failed" / "summary.json").read_text())
    summary["extra"]["failed"] = "the root agent gave up the job: crash loop"
    (root / "failed" / "summary.json").write_text(json.dumps(summary))
    args = ["report", str(root), "--out", str(tmp_path / "r"), "--no-video", "--no-gif"]
    assert main(args) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"skipped {root / 'failed'}: its job failed (the root agent gave up" in said
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "persistent" not in markdown.split("## Runs")[1].split("##")[0]  # not in the table
    only_failed = ["report", str(root / "failed"), "--out", str(tmp_path / "r2"), "--no-video"]
    assert main(only_failed) == 2
    assert "every run given failed" in " ".join(capsys.readouterr().err.split())
