"""``gemini-ckpt report RUN_DIR... [--out DIR]``: the report and the deliverables from run folders.

Writes ``report.html`` and ``report.md`` (with ``figures/``), the final report
(``final-report.md``, ``final-report.html``), the slide deck (``slides.html``) and the demo
video of one recovery (``demo.mp4``; ``--no-video`` skips it).

Each RUN_DIR is a run folder (``events.jsonl`` + ``summary.json``, from ``gemini-ckpt sim``,
``gemini-ckpt real`` or the agents started by hand) or a folder holding run folders (the
output of ``gemini-ckpt run``). Runs under a folder named ``sweep`` feed only the ETTR figure.
Exit codes: 0 written, 2 a RUN_DIR is missing or holds no valid run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from analysis.report import ReportFiles
    from analysis.results import RunResult


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default: the first RUN_DIR if it holds several runs, else runs/report).",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The calibration file the simulated runs used: its scenarios are left out of the "
    "validation median.",
)
@click.option("--gif/--no-gif", default=True, show_default=True, help="Animate one recovery.")
@click.option(
    "--video/--no-video",
    default=True,
    show_default=True,
    help="Write demo.mp4, one recovery simulated and measured side by side.",
)
def command(
    run_dirs: tuple[Path, ...], out: Path | None, calibration: Path | None, gif: bool, video: bool
) -> None:
    """Compare simulated and measured runs, and Gemini with the baseline, in a report."""
    from rich.console import Console

    from analysis.calibration import calibration_scenarios, load_calibration
    from analysis.results import (
        failed_run_folders,
        load_runs,
        shadowed_runs,
        split_sweep,
        unfinished_run_folders,
    )
    from shared.errors import RunFolderError

    try:
        runs = load_runs(run_dirs, skip_unfinished=True)
    except RunFolderError as error:
        raise click.UsageError(str(error)) from error
    failed = sorted({f for path in run_dirs for f in failed_run_folders(path)})
    unfinished = sorted({f for path in run_dirs for f in unfinished_run_folders(path)})
    if not runs:
        raise click.UsageError(
            "no run to report: every run given failed or was stopped before it ended ("
            + "; ".join(
                [f"{folder}: {reason}" for folder, reason in failed]
                + [f"{folder}: no summary.json" for folder in unfinished]
            )
            + ")"
        )
    calibrated_on: list[str] = []
    if calibration is not None:
        try:
            calibrated_on = calibration_scenarios(load_calibration(calibration))
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--calibration") from error
    main, sweep = split_sweep(runs)
    if not main:
        main, sweep = sweep, []
    console = Console(stderr=True, soft_wrap=True)  # paths stay whole when piped
    for folder in unfinished:
        console.print(
            f"[yellow]warning:[/] skipped {folder}: events but no summary.json (a run "
            "stopped before it ended: `gemini-ckpt real`, or the root agent of agents started "
            "by hand, writes it when the job ends)"
        )
    for folder, reason in failed:
        console.print(f"[yellow]warning:[/] skipped {folder}: its job failed ({reason})")
    for used, others in shadowed_runs(main):
        console.print(
            f"[yellow]warning:[/] {len(others) + 1} {used.source} runs of {used.scenario} "
            f"({used.strategy}): the comparison uses the first given, {used.path}; not "
            f"compared: {', '.join(str(other.path) for other in others)}",
            soft_wrap=True,
        )
    if out is None:
        first = run_dirs[0]
        out = (
            first
            if len(runs) > 1 and not (first / "summary.json").exists()
            else Path("runs/report")
        )
    files = write_files(main, out, sweep, calibrated_on, gif=gif, video=video)
    console.print(f"{len(main)} run(s){f' + {len(sweep)} sweep runs' if sweep else ''}")
    if files.validation is not None:
        console.print(files.validation.verdict)
    console.print(f"report: {files.html}\nsummary: {files.markdown}")
    console.print(f"final report: {files.final_html}, {files.final_markdown}")
    console.print(f"slides: {files.slides}")
    if files.video is not None:
        console.print(f"demo video: {files.video}")


def write_files(
    main: Sequence[RunResult],
    out: Path,
    sweep: Sequence[RunResult],
    calibrated_on: Sequence[str],
    *,
    gif: bool,
    video: bool,
) -> ReportFiles:
    """``analysis.report.write_report`` under ``interrupts_honoured``: a Ctrl-C that a
    plotting library's callback swallows still interrupts the command (`report` and `run`)."""
    from analysis.report import write_report
    from gemini_ckpt.interrupts import interrupts_honoured

    with interrupts_honoured():
        return write_report(
            main,
            out,
            sweep_runs=sweep,
            calibration_scenarios=calibrated_on,
            animation=gif,
            video=video,
        )
