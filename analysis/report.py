"""Reports: one self-contained HTML page (figures embedded) and a Markdown summary.

``write_report(runs, out)`` writes into ``out``:

- ``report.html``: every table and figure; PNGs and the GIF are embedded as base64 ``data:``
  URIs, so the file can be mailed or opened anywhere without its folder;
- ``report.md``: the same tables in Markdown, figures linked from ``figures/``;
- ``figures/*.png`` and ``figures/recovery.gif``;
- the deliverables made from the same tables and figures: ``final-report.md`` and
  ``final-report.html`` (``analysis.final_report``: method, setup, results, what misses),
  ``slides.html`` (``analysis.slides``: one slide per figure) and ``demo.mp4``
  (``analysis.video``: one recovery, simulated and measured side by side).

Tables: first the **lead**, Gemini against the baseline per failure kind (wasted time and
downtime per failure, measured, with the simulator's prediction beside each figure); the
runs; Gemini against the baseline (mean wasted time and downtime per failure and the
speedups); the validation table (predicted against measured downtime per scenario, whether
the median error meets the 10% goal, and where it misses); the per-phase errors of every matched
failure. Figures: see ``analysis.plots`` and ``analysis.timeline``.

*Sweep runs* (simulated runs of one scenario at several failure rates or cluster sizes, which
``gemini-ckpt run`` writes under ``sweep/``) feed only the ETTR figure.
"""

from __future__ import annotations

import html
import logging
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.compare import (
    PHASES,
    StrategyComparison,
    ValidationReport,
    compare_strategies,
    validate,
)
from analysis.render import (
    CSS,
    FigureSpec,
    ReportContent,
    Row,
    Table,
    _bytes,
    _data_uri,
    _duration,
    _pct,
    _s,
    html_table,
    markdown_table,
    ratio_text,
)
from analysis.results import RunResult, pair_runs
from shared.events import replaced_whole
from shared.summary import FailureRecord, RunSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass
class ReportFiles:
    """What ``write_report`` wrote."""

    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    animation: Path | None = None
    validation: ValidationReport | None = None
    final_markdown: Path | None = None
    final_html: Path | None = None
    slides: Path | None = None
    video: Path | None = None


KIND_LABELS = {"software": "trainer crash", "hardware": "lost node"}


def _kind_means(summary: RunSummary) -> dict[str, tuple[float, float, int]]:
    """Per failure kind: (mean wasted, mean downtime, failures) over complete failures."""
    by_kind: dict[str, list[FailureRecord]] = {}
    for failure in summary.failures:
        if failure.complete:
            by_kind.setdefault(failure.kind, []).append(failure)
    return {
        kind: (
            statistics.fmean(f.wasted_s for f in failures),
            statistics.fmean(f.downtime_s for f in failures),
            len(failures),
        )
        for kind, failures in by_kind.items()
    }


def _seed_note(summary: RunSummary) -> str:
    """For a run of several seeds, which seed its figures are (the first's; the means over
    seeds are in its ``replications.json``)."""
    replications = summary.extra.get("replications")
    seeds = replications.get("seeds") if isinstance(replications, dict) else None
    if not isinstance(seeds, list) or len(seeds) < 2:
        return ""
    return f" (seed {summary.seed} of {len(seeds)}; means over seeds in replications.json)"


def lead_table(runs: Sequence[RunResult]) -> Table:
    """Gemini against the baseline per failure kind: measured, the simulator beside it.

    One row per scenario and failure kind: mean wasted time and downtime per failure of each
    strategy and the speedups (baseline / Gemini), each measured figure followed by the
    simulator's prediction in parentheses; a scenario without measured runs shows the
    simulator's figures alone.
    """
    found: dict[tuple[str, str, str], RunSummary] = {}
    for run in runs:
        found.setdefault((run.scenario, run.source, run.strategy), run.summary)
    scenarios = sorted({scenario for scenario, _, _ in found})
    rows = []
    for scenario in scenarios:
        means = {
            (source, strategy): _kind_means(summary)
            for (name, source, strategy), summary in found.items()
            if name == scenario
        }
        lead = "real" if any(source == "real" for source, _ in means) else "sim"
        kinds = sorted({k for kinds in means.values() for k in kinds}, key=_kind_order)
        rows += [_lead_row(scenario, kind, means, lead) for kind in kinds]
    headers = [
        "scenario",
        "failure",
        "wasted Gemini",
        "wasted baseline",
        "speedup (wasted)",
        "downtime Gemini",
        "downtime baseline",
        "speedup (downtime)",
    ]
    measured = any(source == "real" for _, source, _ in found)
    note = (
        "Per failure, mean over the failures of each kind: measured on the emulated cluster, "
        "the simulator's prediction (made before the run, from this machine's calibration) in "
        "parentheses"
        if measured
        else "Per failure, mean over the failures of each kind, simulated (no measured run "
        "was given)"
    ) + (
        ". Wasted time = lost progress + retrieval; downtime = failure to training "
        "resumed; speedup = baseline / Gemini."
    )
    return Table("Gemini vs the persistent-storage baseline, per failure", headers, rows, note)


KindMeans = dict[tuple[str, str], dict[str, tuple[float, float, int]]]


def _lead_row(scenario: str, kind: str, means: KindMeans, lead: str) -> Row:
    """One row of ``lead_table``; ``lead`` is the source shown first (real when measured)."""
    sources = (lead, "sim") if lead == "real" else (lead,)

    def figure(strategy: str, which: int, source: str) -> float | None:
        value = means.get((source, strategy), {}).get(kind)
        return None if value is None else value[which]

    def shown(texts: list[str]) -> str:
        return texts[0] + (f" (sim {texts[1]})" if len(texts) > 1 else "")

    def cell(strategy: str, which: int) -> str:
        return shown([_s(figure(strategy, which, source)) for source in sources])

    def speedup(which: int) -> str:
        ratios = []
        for source in sources:
            gemini = figure("gemini", which, source)
            baseline = figure("persistent", which, source)
            ratios.append(ratio_text(baseline / gemini if gemini and baseline else None))
        return shown(ratios)

    counts = [means.get((lead, s), {}).get(kind, (0, 0, 0))[2] for s in ("gemini", "persistent")]
    # The two strategies may see different failures of a kind (a failure scheduled at an
    # iteration that one of them never reaches): the row then says both counts.
    gemini, baseline = counts
    times = f"x{gemini}" if gemini == baseline else f"Gemini x{gemini}, baseline x{baseline}"
    return [
        scenario,
        f"{KIND_LABELS.get(kind, kind)} ({times})",
        cell("gemini", 0),
        cell("persistent", 0),
        speedup(0),
        cell("gemini", 1),
        cell("persistent", 1),
        speedup(1),
    ]


def _kind_order(kind: str) -> tuple[int, str]:
    order = list(KIND_LABELS)
    return (order.index(kind) if kind in order else len(order), kind)


def runs_table(runs: Sequence[RunResult]) -> Table:
    """One row per run: failures, means, ETTR, iteration time and checkpoint overhead."""
    rows = []
    for run in runs:
        s = run.summary
        rows.append(
            [
                run.label,
                s.scenario,
                run.path.name + _seed_note(s),
                str(len(s.failures)),
                _s(s.mean_wasted_s),
                _s(s.mean_downtime_s),
                "-" if s.fraction_from_memory is None else f"{s.fraction_from_memory:.0%}",
                _duration(s.duration_s - float(s.extra.get("startup_s", 0.0) or 0.0)),
                f"{s.ettr:.3f}",
                _s(s.iteration_time_s),
                _pct(s.checkpoint_overhead),
                _bytes(s.checkpoint_memory_bytes),
            ]
        )
    headers = [
        "run",
        "scenario",
        "folder",
        "failures",
        "mean wasted",
        "mean downtime",
        "from memory",
        "trained",
        "ETTR",
        "iteration",
        "ckpt overhead",
        "ckpt memory/node",
    ]
    note = (
        "ETTR is over each run's own training time ('trained': a simulated run's "
        "sim.duration_days, a measured run's iterations, its cluster's start-up left out), "
        "so it compares strategies of one source and length, not a simulated day with a "
        "measured minute."
    )
    return Table("Runs", headers, rows, note)


def _count(value: object) -> str:
    """A median count (1.5 where two nodes' counts differ), or "-"."""
    return f"{value:g}" if isinstance(value, int | float) else "-"


def memory_table(runs: Sequence[RunResult]) -> Table | None:
    """What our processes held per node at a measured run's end (its agents' ``node_memory``
    events, ``real.launcher.results.node_memory``); None when no run has the figure."""

    def cell(entry: object) -> str:
        if not isinstance(entry, dict):
            return "-"
        return f"{_bytes(float(entry['anon']))} + {_bytes(float(entry['file']))}"

    rows = []
    for run in runs:
        footprint = run.summary.extra.get("node_memory")
        if not isinstance(footprint, dict):
            continue
        rows.append(
            [
                run.label,
                str(footprint.get("nodes", "-")),
                cell(footprint.get("agent")),
                cell(footprint.get("store")),
                cell(footprint.get("spare")),
                _count(footprint.get("spares_per_node")),
                cell(footprint.get("trainer")),
                _bytes(run.summary.checkpoint_memory_bytes),
            ]
        )
    if not rows:
        return None
    headers = [
        "run",
        "nodes",
        "agent",
        "node store",
        "warm spare (largest)",
        "spares/node",
        "trainer (median)",
        "ckpt memory/node",
    ]
    note = (
        "Our processes' resident memory per node at the run's end, each as its own pages + "
        "the files it maps (libraries such as torch's, which every process mapping them "
        "shares, so a node holds them once): the agent and the node store the medians over "
        "the nodes, a warm spare the largest; a trainer as it ended its last iteration, the "
        "median over the ranks. The node store's checkpoint slots are the "
        "checkpoint memory beside them."
    )
    return Table("Our processes' memory per node (measured runs)", headers, rows, note)


def strategies_table(comparisons: Sequence[StrategyComparison]) -> Table:
    """Gemini against the persistent baseline: means per failure and speedups."""
    rows = [
        [
            c.scenario,
            c.source,
            _s(c.gemini.mean_wasted_s),
            _s(c.baseline.mean_wasted_s),
            ratio_text(c.wasted_speedup),
            _s(c.gemini.mean_downtime_s),
            _s(c.baseline.mean_downtime_s),
            ratio_text(c.downtime_speedup),
        ]
        for c in comparisons
    ]
    headers = [
        "scenario",
        "source",
        "wasted Gemini",
        "wasted baseline",
        "speedup (wasted)",
        "downtime Gemini",
        "downtime baseline",
        "speedup (downtime)",
    ]
    note = (
        "Means per failure. Wasted time = lost progress + retrieval (the paper's definition); "
        "downtime = failure to training resumed. Speedup = baseline / Gemini."
    )
    return Table("Gemini vs the persistent-storage baseline", headers, rows, note)


def validation_table(report: ValidationReport) -> Table:
    """Predicted against measured downtime per scenario, with the verdict."""
    rows = []
    for row in report.scenarios:
        goal = {True: "yes", False: "NO", None: "-"}[row.meets_goal]
        rows.append(
            [
                row.scenario,
                row.strategy,
                str(len(row.failures)),
                _s(row.predicted_downtime_s),
                _s(row.measured_downtime_s),
                _pct(row.downtime_error),
                goal,
                "yes" if row.used_for_calibration else "no",
                row.note,
            ]
        )
    headers = [
        "scenario",
        "strategy",
        "failures",
        "predicted downtime",
        "measured downtime",
        "error",
        "within 10%",
        "calibration",
        "where / why",
    ]
    return Table("Validation: simulator vs measurement", headers, rows, report.verdict)


def phase_table(report: ValidationReport) -> Table:
    """Every matched failure's phases: predicted, measured, error."""
    rows = []
    for row in report.scenarios:
        for failure in row.failures:
            tier = failure.predicted.tier
            if not failure.tier_matches:
                tier = f"{failure.predicted.tier} / {failure.measured.tier}"
            for phase in failure.phases:
                rows.append(
                    [
                        f"{row.scenario} ({row.strategy})",
                        f"#{failure.index} {failure.measured.kind} [{tier}]",
                        phase.label,
                        _s(phase.predicted),
                        _s(phase.measured),
                        f"{phase.error:+.3g} s",
                        _pct(phase.relative_error),
                    ]
                )
    medians = ", ".join(
        f"{label} {report.phase_median_abs_error[name]:.0%}"
        for name, label in PHASES
        if name in report.phase_median_abs_error
    )
    note = "Median |relative error| per phase: " + (medians or "-")
    headers = ["scenario", "failure [tier]", "phase", "predicted", "measured", "error", "relative"]
    return Table("Per-phase errors", headers, rows, note)


def figure_specs(
    runs: Sequence[RunResult],
    sweep_runs: Sequence[RunResult],
    report: ValidationReport,
    comparisons: Sequence[StrategyComparison],
) -> list[FigureSpec]:
    """The report's figures, in order."""
    from analysis import plots
    from analysis.timeline import plot_timelines

    pairs = pair_runs(runs)
    specs = []
    timeline_runs: list[RunResult] = [run for pair in pairs for run in pair]
    side_by_side = "Simulated (left) and measured (right) side by side."
    if not timeline_runs:
        timeline_runs = list(runs[:4])
        side_by_side = "One panel per run, as named above it (no simulated and measured pair)."
    if timeline_runs:
        specs.append(
            FigureSpec(
                "timeline",
                "Recovery timeline per node",
                "Each row is a node; colours are what it was doing (training, detection, "
                "stop, replacement, restart, retrieval, recomputation of lost progress). "
                + side_by_side,
                lambda: plot_timelines(timeline_runs[:8]),
            )
        )
    specs += [
        FigureSpec(
            "strategies",
            "Wasted time and downtime per failure: Gemini vs baseline",
            "Per failure, Gemini (in-memory checkpoints) against the persistent-storage "
            "baseline; the speedup is the ratio of the means.",
            lambda: plots.plot_strategy_comparison(comparisons),
        ),
    ]
    if pairs:  # nothing to compare without a simulated and a measured run of one scenario
        specs.append(
            FigureSpec(
                "phases",
                "Simulated vs measured, per recovery phase",
                "Durations summed over each scenario's matched failures; labels are the "
                "relative error (sim - real) / real.",
                lambda: plots.plot_phase_comparison(report),
            )
        )
    specs += [
        FigureSpec(
            "throughput",
            "Throughput over time",
            "Iterations per second (bins of at least three iterations); dashed lines: failures.",
            lambda: plots.plot_throughput(list(runs[:8])),
        ),
        FigureSpec(
            "iteration_time",
            "Iteration time with and without checkpointing",
            "Iteration time of each run: the median of a measured run's iterations, the mean "
            "of a simulated one (the baseline's blocking saves spread over every iteration); "
            "'step only' marks a measured run whose time without checkpointing is its step "
            "time without the save call.",
            lambda: plots.plot_iteration_time(list(runs)),
        ),
        FigureSpec(
            "recovery_probability",
            "Probability of recovery from CPU memory",
            "Exact probability (shared.probability) that every checkpoint keeps a live "
            "holder when k nodes fail at once, for group, ring and mixed placements.",
            lambda: plots.plot_recovery_probability(),
        ),
    ]
    if len(sweep_runs) >= 2:
        specs.append(
            FigureSpec(
                "ettr",
                "Effective training time ratio (simulated)",
                "ETTR of simulated runs against the failure rate and the cluster size.",
                lambda: plots.plot_ettr(list(sweep_runs)),
            )
        )
    return specs


def _save(figure: Figure, path: Path) -> None:
    """Save ``figure`` as ``path`` whole or not at all (a Ctrl-C while it is written leaves the
    earlier figure, not a truncated one)."""
    import matplotlib.pyplot as plt

    try:
        with replaced_whole(path) as partial:
            figure.savefig(partial, format=path.suffix[1:], dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)


def write_report(
    runs: Sequence[RunResult],
    out: str | Path,
    *,
    sweep_runs: Sequence[RunResult] = (),
    calibration_scenarios: Collection[str] = (),
    animation: bool = True,
    animation_frames: int = 36,
    deliverables: bool = True,
    video: bool = True,
    video_frames: int = 60,
    title: str = "Gemini checkpointing: recovery report",
) -> ReportFiles:
    """Write ``report.html``, ``report.md``, ``figures/`` and the deliverables into ``out``.

    Args:
        runs: the run folders compared (sim and real, Gemini and baseline).
        out: output folder (created).
        sweep_runs: simulated runs for the ETTR figure.
        calibration_scenarios: scenarios used to calibrate (excluded from the median error).
        animation: also write the GIF of one failure's recovery.
        animation_frames: frames of that GIF.
        deliverables: also write the final report (``final-report.md``, ``.html``) and the
            slide deck (``slides.html``).
        video: also write ``demo.mp4`` (one recovery, simulated and measured side by side).
        video_frames: frames of that video (12 per second).
        title: the page's heading.
    """
    from analysis.plots import setup_style

    setup_style()
    out_dir = Path(out)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    report = validate(runs, calibration_scenarios=calibration_scenarios)
    comparisons = compare_strategies(runs)
    memory = memory_table(runs)
    tables = [
        lead_table(runs),
        runs_table(runs),
        *([memory] if memory is not None else []),
        strategies_table(comparisons),
        validation_table(report),
        phase_table(report),
    ]
    files = ReportFiles(out_dir / "report.html", out_dir / "report.md", validation=report)
    sections: list[tuple[FigureSpec, Path]] = []
    for spec in figure_specs(runs, sweep_runs, report, comparisons):
        path = figures_dir / f"{spec.name}.png"
        _save(spec.draw(), path)
        files.figures.append(path)
        sections.append((spec, path))
    if animation:
        files.animation = _write_animation(runs, figures_dir / "recovery.gif", animation_frames)

    md = [f"# {title}", "", markdown_table(tables[0]), report.verdict, ""]
    md += [markdown_table(t) for t in tables[1:]]
    md.append("## Figures\n")
    for spec, path in sections:
        md += [f"### {spec.title}", "", f"![{spec.title}](figures/{path.name})", "", spec.caption]
        md.append("")
    if files.animation is not None:
        md += ["### One failure and its recovery (animated)", "", "![](figures/recovery.gif)"]
    md += ["", "Runs: " + ", ".join(f"`{run.path}`" for run in runs), ""]
    files.markdown.write_text("\n".join(md), encoding="utf-8")

    body = [f"<h1>{html.escape(title)}</h1>", html_table(tables[0])]
    body.append(f"<p><b>{html.escape(report.verdict)}</b></p>")
    body += [html_table(t) for t in tables[1:]]
    for spec, path in sections:
        body.append(f"<h2>{html.escape(spec.title)}</h2>")
        body.append(f"<img alt='{html.escape(spec.name)}' src='{_data_uri(path, 'image/png')}'>")
        body.append(f"<p class='caption'>{html.escape(spec.caption)}</p>")
    if files.animation is not None:
        body.append("<h2>One failure and its recovery (animated)</h2>")
        body.append(f"<img alt='recovery' src='{_data_uri(files.animation, 'image/gif')}'>")
    runs_list = "".join(f"<li><code>{html.escape(str(run.path))}</code></li>" for run in runs)
    body.append(f"<h2>Run folders</h2><ul>{runs_list}</ul>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    files.html.write_text(page, encoding="utf-8")
    if deliverables:
        from analysis.final_report import write_final_report
        from analysis.slides import write_slides

        content = ReportContent(
            title,
            tuple(runs),
            tuple(tables),
            tuple(sections),
            files.animation,
            report,
            tuple(comparisons),
            tuple(calibration_scenarios),
        )
        files.final_markdown, files.final_html = write_final_report(content, out_dir)
        files.slides = write_slides(content, out_dir)
    if video:
        from analysis.video import write_demo_video

        files.video = write_demo_video(runs, out_dir / "demo.mp4", frames=video_frames)
    _remove_stale(out_dir, files)
    return files


STALE_PATTERNS = (
    "figures/*.png",
    "figures/*.gif",
    "demo.mp4",
    "slides.html",
    "final-report.md",
    "final-report.html",
)
"""What a report writes whose earlier copies it removes when it does not write them again."""


def _remove_stale(out_dir: Path, files: ReportFiles) -> None:
    """Remove the files an earlier report left in ``out_dir`` that this one did not write (a
    figure of runs no longer given, a video after ``--no-video``): beside the new report they
    showed other runs' figures. ``figures/`` is the report's own folder; elsewhere only the
    deliverables' names are touched, never a link."""
    written = {
        path.resolve()
        for path in (
            files.html,
            files.markdown,
            *files.figures,
            files.animation,
            files.final_markdown,
            files.final_html,
            files.slides,
            files.video,
        )
        if path is not None
    }
    for pattern in STALE_PATTERNS:
        for path in out_dir.glob(pattern):
            if path.is_file() and not path.is_symlink() and path.resolve() not in written:
                log.info("removing %s: an earlier report's, not written again", path)
                path.unlink()


def _write_animation(runs: Sequence[RunResult], path: Path, frames: int) -> Path | None:
    """The GIF of the first failure of the first measured (else simulated) Gemini run."""
    from analysis.timeline import animate_failure

    ordered = sorted(
        (r for r in runs if r.summary.failures and r.events),
        key=lambda r: (r.source != "real", r.strategy != "gemini"),
    )
    for run in ordered:
        try:
            return animate_failure(run, path, frames=frames)
        except ValueError as error:  # no failure chain in its events
            log.info("no animation from %s: %s", run.path, error)
    return None
