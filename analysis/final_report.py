"""The final report: method, setup, results with every figure, and what misses.

``write_final_report(content, out)`` writes ``final-report.md`` (figures linked from
``figures/``) and ``final-report.html`` (self-contained: figures embedded as ``data:`` URIs)
from the same blocks. Every number in them comes from the run folders, through the report's
tables and figures (``analysis.report.ReportContent``); the prose around them says only how the
numbers were made and what they mean.

Sections:

- **Summary**: the validation verdict, Gemini against the baseline per scenario and source,
  and the simulator's worst miss;
- **Method**: how the runs were made and compared (the two faces, the recovery phases, the
  error and the goal);
- **Setup**: one row per run (scenario, source, strategy, nodes, iterations, iteration time,
  checkpoint memory, failures by kind, duration);
- **Results**: the report's tables, then every figure with its caption (the animated
  recovery included);
- **What misses**: the scenarios that miss the goal and why, then the simulator's error per
  phase against the measurement, one row per (matched failure, phase), worst (largest absolute
  error in seconds) first; phases that are zero in both runs are left out.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.compare import GOAL, PHASES, ValidationReport
from analysis.results import RunResult
from analysis.timeline import run_nodes

if TYPE_CHECKING:
    from analysis.render import ReportContent, Table

RECOVERY_PHASES: tuple[str, ...] = (
    "detection_s",
    "stop_s",
    "replacement_s",
    "restart_s",
    "retrieval_s",
    "lost_progress_s",
)
"""The phases of the miss table (the totals, wasted time and downtime, are in the validation)."""


@dataclass(frozen=True)
class Miss:
    """The simulator's error on one phase of one matched failure (seconds)."""

    scenario: str
    strategy: str
    failure: int
    kind: str
    phase: str
    predicted: float
    measured: float
    error: float
    relative_error: float | None

    @property
    def label(self) -> str:
        return dict(PHASES).get(self.phase, self.phase)


def signed_s(value: float) -> str:
    """A signed duration in seconds; float noise (< 1 ns) shows as 0."""
    return "0 s" if abs(value) < 1e-9 else f"{value:+.3g} s"


def final_title(content: ReportContent) -> str:
    """The final report's heading."""
    return f"{content.title} (final report)"


def misses(report: ValidationReport) -> list[Miss]:
    """Every recovery phase of every matched failure, worst first (module docstring)."""
    rows = [
        Miss(
            row.scenario,
            row.strategy,
            failure.index,
            failure.measured.kind,
            phase.phase,
            phase.predicted,
            phase.measured,
            phase.error,
            phase.relative_error,
        )
        for row in report.scenarios
        for failure in row.failures
        for phase in failure.phases
        if phase.phase in RECOVERY_PHASES and (phase.predicted != 0 or phase.measured != 0)
    ]
    order = {name: i for i, name in enumerate(RECOVERY_PHASES)}
    # Rounded to the nanosecond: float noise must not reorder phases that match exactly.
    rows.sort(
        key=lambda m: (-round(abs(m.error), 9), m.scenario, m.strategy, m.failure, order[m.phase])
    )
    return rows


def miss_table(rows: Sequence[Miss], report: ValidationReport) -> Table:
    """The miss table: one row per (failure, phase), worst first."""
    from analysis.render import Table, _pct, _s

    body = [
        [
            f"{m.scenario} ({m.strategy})",
            f"#{m.failure} {m.kind}",
            m.label,
            _s(m.predicted),
            _s(m.measured),
            signed_s(m.error),
            _pct(m.relative_error),
        ]
        for m in rows
    ]
    medians = ", ".join(
        f"{label} {report.phase_median_abs_error[name]:.0%}"
        for name, label in PHASES
        if name in RECOVERY_PHASES and name in report.phase_median_abs_error
    )
    note = (
        "Error = simulated - measured; relative = error / measured. Sorted by |error|. "
        "Median |relative error| per phase: " + (medians or "-")
    )
    headers = ["scenario", "failure", "phase", "simulated", "measured", "error", "relative"]
    return Table("The simulator's errors per phase, worst first", headers, body, note)


def setup_table(runs: Sequence[RunResult]) -> Table:
    """One row per run: what was run, on how many nodes, for how long, with which failures."""
    from analysis.render import Table, _bytes, _s

    rows = []
    for run in runs:
        s = run.summary
        mode = s.extra.get("mode")
        face = "simulator" if run.source == "sim" else f"harness ({mode or 'real'})"
        kinds = Counter(f.kind for f in s.failures)
        rows.append(
            [
                run.label,
                s.scenario,
                face,
                str(len(run_nodes(run))),
                str(s.iterations_completed),
                _s(s.iteration_time_s),
                _bytes(s.checkpoint_memory_bytes),
                ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items())) or "none",
                _s(s.duration_s),
            ]
        )
    headers = [
        "run",
        "scenario",
        "face",
        "nodes",
        "iterations",
        "iteration time",
        "ckpt memory/node",
        "failures",
        "duration",
    ]
    return Table("What each run ran", headers, rows)


# -- blocks, rendered as Markdown and as HTML -------------------------------------------------


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class TableBlock:
    table: Table


@dataclass(frozen=True)
class FigureBlock:
    """A figure file (PNG or GIF) with its heading and caption."""

    title: str
    path: Path
    caption: str


Block = Heading | Paragraph | Bullets | TableBlock | FigureBlock


def to_markdown(blocks: Sequence[Block], figures_prefix: str = "figures/") -> str:
    """The blocks as GitHub Markdown; figures are linked as ``figures_prefix`` + file name."""
    from analysis.render import markdown_table

    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, TableBlock):
            out.append(markdown_table(block.table).replace("## ", "### ", 1))
        else:
            link = figures_prefix + block.path.name
            out += [f"### {block.title}", "", f"![{block.title}]({link})", "", block.caption, ""]
    return "\n".join(out)


def to_html(blocks: Sequence[Block], title: str) -> str:
    """The blocks as one self-contained HTML page (figures as ``data:`` URIs)."""
    from analysis.render import CSS, _data_uri, html_table

    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{html.escape(item)}</li>" for item in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, TableBlock):
            body.append(html_table(block.table).replace("<h2>", "<h3>").replace("</h2>", "</h3>"))
        else:
            mime = "image/gif" if block.path.suffix == ".gif" else "image/png"
            body.append(f"<h3>{html.escape(block.title)}</h3>")
            body.append(
                f"<img alt='{html.escape(block.path.stem)}' src='{_data_uri(block.path, mime)}'>"
            )
            body.append(f"<p class='caption'>{html.escape(block.caption)}</p>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -- the report's content ---------------------------------------------------------------------


def key_results(content: ReportContent) -> list[str]:
    """The summary's bullets: the verdict, Gemini vs baseline, the worst miss."""
    from analysis.render import _s, ratio_text

    items = [content.validation.verdict]
    for c in content.comparisons:
        source = {"sim": "simulated", "real": "measured"}.get(c.source, c.source)
        items.append(
            f"{c.scenario} ({source}): wasted time per failure {_s(c.gemini.mean_wasted_s)} "
            f"with Gemini, {_s(c.baseline.mean_wasted_s)} with the persistent baseline "
            f"({ratio_text(c.wasted_speedup)}); downtime {_s(c.gemini.mean_downtime_s)} vs "
            f"{_s(c.baseline.mean_downtime_s)} ({ratio_text(c.downtime_speedup)})."
        )
    worst = misses(content.validation)
    if worst:
        m = worst[0]
        items.append(
            f"Largest miss of the simulator: {m.label} of failure #{m.failure} ({m.kind}) in "
            f"{m.scenario} ({m.strategy}), simulated {_s(m.predicted)} against "
            f"{_s(m.measured)} measured ({signed_s(m.error)})."
        )
    return items


def figures(content: ReportContent) -> list[FigureBlock]:
    """Every figure of the report, in its order, the animation last."""
    blocks = [FigureBlock(spec.title, path, spec.caption) for spec, path in content.figures]
    if content.animation is not None:
        blocks.append(
            FigureBlock(
                "One failure and its recovery (animated)",
                content.animation,
                "A 'now' line sweeps the recovery timeline of one failure; the title names "
                "the phase.",
            )
        )
    return blocks


METHOD = (
    "Each scenario ran on two faces that share one policy core (placement, traffic "
    "scheduling, recovery planning): the simulator (a SimPy model of the cluster, its links, "
    "copy engines, storage and standby pool) and the real harness (PyTorch trainers with "
    "node agents, a root agent, in-memory checkpoint stores and a failure injector on an "
    "emulated cluster). Each ran with Gemini (a checkpoint in CPU memory every iteration, "
    "replicated to the placement's peers) and with the persistent-storage baseline (blocking "
    "saves to storage). Both faces write the same event log, from which one function derives "
    "each failure's recovery phases: detection, stop, replacement (lost nodes), restart, "
    "retrieval and lost progress; wasted time = lost progress + retrieval, downtime = failure "
    "to training resumed."
)


def method_blocks(content: ReportContent) -> list[Block]:
    """The method: fixed prose, and the validation rule with the goal from the code."""
    counts = Counter(run.label for run in content.runs)
    made = ", ".join(f"{label} x{count}" for label, count in sorted(counts.items()))
    blocks: list[Block] = [
        Heading(2, "Method"),
        Paragraph(METHOD),
        Paragraph(
            "A simulated and a measured run of the same scenario and strategy are paired and "
            "their failures matched by index; per phase, error = simulated - measured and "
            "relative error = error / measured. The simulator's goal: a median absolute "
            f"relative error of downtime of at most {GOAL:.0%} over the scenarios not used to "
            "calibrate it."
        ),
        Paragraph(f"Runs in this report: {made or 'none'}."),
    ]
    if content.calibration_scenarios:
        used = ", ".join(sorted(content.calibration_scenarios))
        blocks.append(Paragraph(f"Used to calibrate the simulator (not counted): {used}."))
    return blocks


def final_report_blocks(content: ReportContent) -> list[Block]:
    """The whole final report as blocks (module docstring)."""
    rows = misses(content.validation)
    missed = [s for s in content.validation.scenarios if s.meets_goal is False]
    blocks: list[Block] = [
        Heading(1, final_title(content)),
        Heading(2, "Summary"),
        Bullets(tuple(key_results(content))),
        *method_blocks(content),
        Heading(2, "Setup"),
        TableBlock(setup_table(content.runs)),
        Heading(2, "Results"),
        *(TableBlock(table) for table in content.tables if table.title != "Per-phase errors"),
        *figures(content),
        Heading(2, "What misses"),
    ]
    if missed:
        blocks.append(Bullets(tuple(f"{s.scenario} ({s.strategy}): {s.note}" for s in missed)))
    elif content.validation.median_abs_error is not None:
        blocks.append(Paragraph("Every compared scenario is within the goal; per phase:"))
    else:
        blocks.append(
            Paragraph("No simulated run has a measured counterpart here: nothing to compare.")
        )
    blocks.append(TableBlock(miss_table(rows, content.validation)))
    blocks += [
        Heading(2, "Run folders"),
        Bullets(tuple(f"{run.label}: {run.path}" for run in content.runs)),
    ]
    return blocks


def write_final_report(content: ReportContent, out: str | Path) -> tuple[Path, Path]:
    """Write ``final-report.md`` and ``final-report.html`` into ``out``; their paths."""
    out_dir = Path(out)
    blocks = final_report_blocks(content)
    markdown = out_dir / "final-report.md"
    page = out_dir / "final-report.html"
    markdown.write_text(to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html(blocks, final_title(content)), encoding="utf-8")
    return markdown, page
