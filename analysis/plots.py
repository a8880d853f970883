"""The report's figures (matplotlib + seaborn), each a function returning a ``Figure``.

Every figure is built from loaded run folders (``analysis.results``), from the comparisons in
``analysis.compare``, or, for the probability of recovery from memory, from ``shared`` directly.
Axes carry units, legends name the runs as ``<source>-<strategy>`` (``sim-gemini``,
``real-persistent``), and the baseline is always the persistent-storage ("NFS") strategy.

- ``plot_strategy_comparison``: wasted time and downtime per failure, Gemini vs baseline, with
  the speedup;
- ``plot_phase_comparison``: simulated vs measured per recovery phase, with relative errors;
- ``plot_throughput``: iterations per second over time, failures marked;
- ``plot_iteration_time``: iteration time with and without checkpointing;
- ``plot_recovery_probability``: probability that a simultaneous failure of k nodes is
  recovered from CPU memory, against N, for group, ring and mixed placements;
- ``plot_ettr``: effective training time ratio against the failure rate and the cluster size
  (simulated runs of a sweep).

The recovery Gantt charts and the animation live in ``analysis.timeline``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from analysis.compare import PHASES, StrategyComparison, ValidationReport
from analysis.render import ratio_text
from analysis.results import RunResult
from analysis.timeline import build_timeline
from shared.summary import merged_spans

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STRATEGY_COLORS = {"gemini": "#4c72b0", "persistent": "#c44e52"}
STRATEGY_NAMES = {"gemini": "Gemini (in memory)", "persistent": "baseline (persistent storage)"}
SOURCE_COLORS = {"sim": "#8172b3", "real": "#55a868"}
SOURCE_NAMES = {"sim": "simulated", "real": "measured"}
PLACEMENT_COLORS = {"group": "#4c72b0", "ring": "#dd8452", "mixed": "#55a868"}


def setup_style() -> None:
    """Headless backend and the seaborn theme used by every figure."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def _seconds_label(values: Sequence[float]) -> tuple[float, str]:
    """A scale (1, 1e3) and unit (s, ms) that keeps the numbers readable."""
    top = max((abs(v) for v in values), default=0.0)
    return (1e3, "ms") if 0 < top < 0.1 else (1.0, "s")


def plot_strategy_comparison(comparisons: Sequence[StrategyComparison]) -> Figure:
    """Per failure: wasted time and downtime of Gemini and the baseline, one row per source.

    The title of each row gives the speedups of the means (baseline / Gemini).
    """
    import matplotlib.pyplot as plt

    rows = max(1, len(comparisons))
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.4 * rows), squeeze=False)
    if not comparisons:
        _empty(axes[0, 0], "no scenario with both a Gemini and a baseline run")
        axes[0, 1].set_axis_off()
        return fig
    for row, comparison in zip(axes, comparisons, strict=True):
        for ax, metric, label, speedup in (
            (row[0], "wasted_s", "wasted time", comparison.wasted_speedup),
            (row[1], "downtime_s", "downtime", comparison.downtime_speedup),
        ):
            failures = {
                "gemini": comparison.gemini.failures,
                "persistent": comparison.baseline.failures,
            }
            count = max(len(v) for v in failures.values())
            width = 0.38
            values = [getattr(f, metric) for v in failures.values() for f in v]
            scale, unit = _seconds_label(values)
            for offset, (strategy, records) in zip(
                (-width / 2, width / 2), failures.items(), strict=True
            ):
                xs = [i + offset for i in range(len(records))]
                heights = [getattr(f, metric) * scale for f in records]
                bars = ax.bar(
                    xs,
                    heights,
                    width,
                    color=STRATEGY_COLORS[strategy],
                    label=STRATEGY_NAMES[strategy],
                )
                ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
            names = []
            for i in range(count):
                record = next((r for v in failures.values() for r in v[i : i + 1]), None)
                names.append(f"#{record.index} {record.kind}" if record else f"#{i}")
            ax.set_xticks(range(count), names)
            ax.set_xlabel("failure")
            ax.set_ylabel(f"{label} per failure ({unit})")
            ratio = f"speedup {ratio_text(speedup)}" if speedup is not None else "speedup n/a"
            ax.set_title(
                f"{SOURCE_NAMES.get(comparison.source, comparison.source)} · "
                f"{comparison.scenario}: {label} ({ratio} on the mean)",
                fontsize=10,
            )
            ax.margins(y=0.15)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.4 * rows)))
    return fig


def plot_phase_comparison(report: ValidationReport, max_scenarios: int = 6) -> Figure:
    """Simulated vs measured duration of every phase (summed over a scenario's matched
    failures), the relative error written above each pair."""
    import matplotlib.pyplot as plt

    rows = [r for r in report.scenarios if r.failures][:max_scenarios]
    count = max(1, len(rows))
    fig, axes = plt.subplots(count, 1, figsize=(10, 3.3 * count), squeeze=False)
    if not rows:
        _empty(axes[0, 0], "no scenario with both a simulated and a measured run")
        return fig
    names = [name for name, _ in PHASES]
    labels = [label for _, label in PHASES]
    for ax, row in zip(axes[:, 0], rows, strict=False):
        predicted = [sum(getattr(f.predicted, n) for f in row.failures) for n in names]
        measured = [sum(getattr(f.measured, n) for f in row.failures) for n in names]
        scale, unit = _seconds_label(predicted + measured)
        width = 0.38
        xs = range(len(names))
        ax.bar(
            [x - width / 2 for x in xs],
            [v * scale for v in predicted],
            width,
            color=SOURCE_COLORS["sim"],
            label="simulated (predicted)",
        )
        ax.bar(
            [x + width / 2 for x in xs],
            [v * scale for v in measured],
            width,
            color=SOURCE_COLORS["real"],
            label="measured",
        )
        for x, p, m in zip(xs, predicted, measured, strict=True):
            text = f"{(p - m) / m:+.0%}" if m > 0 else ("=" if p == m else "n/a")
            ax.text(x, max(p, m) * scale, text, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel(f"duration, sum over failures ({unit})")
        error = f"{row.downtime_error:+.1%}" if row.downtime_error is not None else "n/a"
        ax.set_title(
            f"{row.scenario} ({row.strategy}), {len(row.failures)} failure(s): "
            f"downtime error {error}; labels: (sim - real) / real",
            fontsize=10,
        )
        ax.margins(y=0.18)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _training_rate(run: RunResult) -> tuple[list[float], list[float], str] | None:
    """(bin centres s, iterations per second, how) for one run."""
    timeline = build_timeline(run)
    lo, hi = timeline.default_window()
    if hi <= lo:
        return None
    ranks = [e.rank for e in run.events if e.kind == "iteration_end" and e.rank is not None]
    # Bins at least three iterations wide, so that the rate does not alias to 0 / 1 / 0.
    bins = max(4, min(60, int((hi - lo) / (3 * max(run.summary.iteration_time_s, 1e-9)))))
    width = (hi - lo) / bins
    centres = [lo + (i + 0.5) * width for i in range(bins)]
    if ranks:
        first_rank = min(ranks)
        counts = [0.0] * bins
        for event in run.events:
            if event.kind == "iteration_end" and event.rank == first_rank and lo <= event.time_s:
                i = int((event.time_s - lo) / width)
                if i < bins:
                    counts[i] += 1
        return centres, [c / width for c in counts], f"iteration_end events of rank {first_rank}"
    # The simulator logs no iterations in between: busy when a node's row is training.
    node = timeline.nodes[0]
    rate = 1.0 / run.summary.iteration_time_s if run.summary.iteration_time_s > 0 else 0.0
    # Each second counted once: a failure that joins a recovery gets a recompute span of its
    # own over the same time, and summing both doubled the rate there.
    busy_spans = merged_spans(
        (s.start, s.end)
        for s in timeline.spans
        if s.node == node and s.state in ("training", "recompute")
    )
    values = []
    for i in range(bins):
        a, b = lo + i * width, lo + (i + 1) * width
        busy = sum(max(0.0, min(b, end) - max(a, start)) for start, end in busy_spans)
        values.append(rate * busy / width)
    return centres, values, "training spans x 1 / iteration time"


def plot_throughput(runs: Sequence[RunResult]) -> Figure:
    """Iterations per second over time, one panel per run, failures marked."""
    import matplotlib.pyplot as plt

    count = max(1, len(runs))
    columns = 2 if count > 1 else 1
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 2.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(runs):
            ax.set_axis_off()
            continue
        run = runs[i]
        series = _training_rate(run)
        if series is None:
            _empty(ax, f"{run.label}: no events")
            continue
        xs, ys, how = series
        color = SOURCE_COLORS.get(run.source, "#4c72b0")
        ax.fill_between(xs, ys, step="mid", alpha=0.35, color=color)
        ax.step(xs, ys, where="mid", color=color, label=f"throughput ({how})")
        for j, failure in enumerate(run.summary.failures):
            ax.axvline(
                failure.time_s,
                color="#c44e52",
                linestyle="--",
                linewidth=1.2,
                label="failure" if j == 0 else None,
            )
        ax.set_xlabel("time since run start (s)")
        ax.set_ylabel("iterations per second")
        ax.set_title(f"{run.label} · {run.scenario}", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="best", framealpha=0.9)
    fig.tight_layout()
    return fig


def iteration_times(run: RunResult) -> tuple[float, float | None, str]:
    """(with checkpointing s, without s or None, where "without" comes from).

    The summary's ``iteration_time_no_ckpt_s`` when present; for a measured run without it,
    the median ``step_s`` of its iterations (the step without the checkpoint save call).
    """
    summary = run.summary
    if summary.iteration_time_no_ckpt_s:
        return summary.iteration_time_s, summary.iteration_time_no_ckpt_s, "summary"
    steps = [
        float(e.details["step_s"])  # type: ignore[arg-type]
        for e in run.events
        if e.kind == "iteration_end" and isinstance(e.details.get("step_s"), int | float)
    ]
    if steps:
        return summary.iteration_time_s, statistics.median(steps), "median step_s"
    return summary.iteration_time_s, None, "unknown"


def plot_iteration_time(runs: Sequence[RunResult]) -> Figure:
    """Iteration time with and without checkpointing, per run, with the overhead."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(runs) + 2), 3.6))
    if not runs:
        _empty(ax, "no runs")
        return fig
    data = [iteration_times(run) for run in runs]
    values = [v for d in data for v in (d[0], d[1]) if v]
    scale, unit = _seconds_label(values)
    width = 0.38
    for i, (with_ckpt, without, how) in enumerate(data):
        ax.bar(i - width / 2, with_ckpt * scale, width, color="#4c72b0")
        if without:
            ax.bar(i + width / 2, without * scale, width, color="#c7c7c7")
            overhead = with_ckpt / without - 1.0
            note = "" if how == "summary" else "\n(step only)"
            ax.text(
                i,
                max(with_ckpt, without) * scale,
                f"{overhead:+.1%}{note}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    if len(values) > 1 and max(values) / max(min(values), 1e-12) > 30:
        ax.set_yscale("log")
    ax.set_xticks(range(len(runs)), [run.label for run in runs], fontsize=8)
    ax.set_ylabel(f"iteration time ({unit})")
    ax.set_title("iteration time with / without checkpointing (labels: overhead)", fontsize=10)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color="#4c72b0", label="with checkpointing"),
            Patch(color="#c7c7c7", label="without checkpointing"),
        ],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    ax.margins(y=0.2)
    fig.tight_layout()
    return fig


def recovery_probabilities(
    nodes: Sequence[int], replicas: int, failures: int
) -> dict[str, list[tuple[int, float]]]:
    """Exact probability of recovery from memory per placement, from ``shared``.

    Group placements exist only where ``replicas`` divides N; mixed ones are computed for
    every N (they are group placements when m | N).
    """
    from shared.placement import plan_placement
    from shared.probability import recovery_probability

    out: dict[str, list[tuple[int, float]]] = {"group": [], "ring": [], "mixed": []}
    for n in nodes:
        if n < max(replicas, failures):
            continue
        for strategy in out:
            if strategy == "group" and n % replicas:
                continue
            placement = plan_placement(n, replicas, strategy)  # type: ignore[arg-type]
            value = recovery_probability(placement, failures).probability
            out[strategy].append((n, value))
    return out


def plot_recovery_probability(
    nodes: Sequence[int] = tuple(range(4, 65)),
    replicas: int = 2,
    failures: Sequence[int] = (2, 3),
) -> Figure:
    """Probability that k simultaneous node failures are recovered from CPU memory, vs N."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(failures), figsize=(5.2 * len(failures), 3.6), squeeze=False)
    for ax, k in zip(axes[0], failures, strict=True):
        for strategy, points in recovery_probabilities(nodes, replicas, k).items():
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                marker="o" if strategy == "group" else None,
                markersize=3,
                linestyle="-" if strategy != "mixed" else ":",
                linewidth=1.6 if strategy != "mixed" else 2.2,
                color=PLACEMENT_COLORS[strategy],
                label=strategy,
            )
        ax.set_xlabel("nodes N")
        ax.set_ylabel("P(recovery from CPU memory)")
        ax.set_title(f"{k} simultaneous node failures, m = {replicas} replicas", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.legend(title="placement", fontsize=8)
    fig.tight_layout()
    return fig


def failures_per_day(summary_extra: dict[str, object], failures: int, duration_s: float) -> float:
    """The run's failure rate: the configured one when the summary states it, else observed."""
    for key in ("failures_per_day",):
        value = summary_extra.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return failures / (duration_s / 86_400.0) if duration_s > 0 else math.nan


def plot_ettr(runs: Sequence[RunResult]) -> Figure:
    """ETTR of simulated runs against the failure rate and against the cluster size.

    Runs are grouped by strategy; the left panel uses the runs whose node count equals the most
    common one, the right panel those whose failure rate per node is the most common one.
    """
    import matplotlib.pyplot as plt

    sims = [r for r in runs if r.source == "sim"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    if len(sims) < 2:
        _empty(axes[0, 0], "ETTR sweep: fewer than two simulated runs")
        axes[0, 1].set_axis_off()
        return fig
    rows = []
    for run in sims:
        extra = dict(run.summary.extra)
        nodes = extra.get("nodes")
        rate = failures_per_day(extra, len(run.summary.failures), run.summary.duration_s)
        rows.append((run, nodes if isinstance(nodes, int) else None, rate))
    node_counts = [n for _, n, _ in rows if n is not None]
    common_nodes = statistics.mode(node_counts) if node_counts else None
    # The size sweep: runs at other node counts, plus the run at the common count whose
    # failure rate per node is closest to theirs.
    others = [(run, n, rate) for run, n, rate in rows if n is not None and n != common_nodes]
    per_node = [rate / n for _, n, rate in others if n and not math.isnan(rate)]
    target = statistics.median(per_node) if per_node else None
    left, right = axes[0]
    for strategy in ("gemini", "persistent"):
        mine = [(run, n, rate) for run, n, rate in rows if run.strategy == strategy]
        points = sorted(
            (rate, run.summary.ettr)
            for run, n, rate in mine
            if n == common_nodes and not math.isnan(rate)
        )
        if len(points) >= 2:
            xs, ys = zip(*points, strict=True)
            left.plot(
                xs, ys, marker="o", color=STRATEGY_COLORS[strategy], label=STRATEGY_NAMES[strategy]
            )
        by_size = [
            (n, run.summary.ettr) for run, n, _ in mine if n is not None and n != common_nodes
        ]
        at_common = [(run, n, rate) for run, n, rate in mine if n == common_nodes]
        if at_common and target is not None and common_nodes:
            closest = min(at_common, key=lambda row: abs(row[2] / common_nodes - target))
            by_size.append((common_nodes, closest[0].summary.ettr))
        by_size.sort()
        if len(by_size) >= 2:
            xs, ys = zip(*by_size, strict=True)
            right.plot(
                xs, ys, marker="o", color=STRATEGY_COLORS[strategy], label=STRATEGY_NAMES[strategy]
            )
    left.set_xlabel("failures per day (observed in the simulated run)")
    left.set_ylabel("ETTR (useful / total time)")
    left.set_title(f"ETTR vs failure rate ({common_nodes} nodes, simulated)", fontsize=10)
    right.set_xlabel("nodes N")
    right.set_ylabel("ETTR (useful / total time)")
    rate_note = f"~{target:.3g} failures per node per day" if target is not None else ""
    right.set_title(f"ETTR vs cluster size ({rate_note}, simulated)", fontsize=10)
    for ax in (left, right):
        values = [y for line in ax.lines for y in line.get_ydata()]
        if values:
            # ETTRs near 1 differ in the second decimal: zoom in, but keep 1 in sight.
            low = min(values)
            ax.set_ylim(max(0.0, low - 0.1 * (1.0 - low) - 0.01), 1.005)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower left")
        else:
            _empty(ax, "no sweep along this axis in the given runs")
    if right.lines:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        right.set_xscale("log", base=2)
        right.xaxis.set_major_formatter(ScalarFormatter())
        right.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    return fig
