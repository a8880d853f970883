"""``gemini-ckpt sim``: simulate a scenario under failures and write its result folder.

One seed writes ``OUT/events.jsonl`` and ``OUT/summary.json``; several seeds (``--seeds N``)
run in parallel across cores, write ``OUT/seed-<seed>/`` each, and ``OUT/summary.json`` (the
first seed's summary, with the means and 95% confidence intervals over all seeds under
``extra.replications``) plus ``OUT/replications.json``.

The scenario is checked as the simulator will run it (``faces=("sim",)``); its warnings (a
failure that never fires, a failure storm) are printed first. A long single-seed run shows a
progress line (simulated time, failures so far, events per second): live on a terminal, every
``PROGRESS_LINE_S`` seconds otherwise. A run stopped by the storm guard exits 2 like any
invalid scenario, naming the failure rate.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from gemini_ckpt.cli import warn
from shared.errors import ScenarioError
from shared.scenario_loader import load_scenario
from shared.scenario_rules import Face, warnings
from shared.summary import RunSummary, write_summary

if TYPE_CHECKING:
    from shared.scenario import Scenario
    from sim import SimProgress

PROGRESS_LINE_S = 10.0
"""Wall seconds between progress lines when stderr is not a terminal."""

STRATEGIES: dict[str, list[str]] = {
    "gemini": ["checkpoint.strategy=gemini"],
    "persistent": ["checkpoint.strategy=persistent"],
    "strawman": ["checkpoint.strategy=persistent", "checkpoint.baseline_interval=strawman"],
    "highfreq": ["checkpoint.strategy=persistent", "checkpoint.baseline_interval=highfreq"],
    "young": ["checkpoint.strategy=persistent", "checkpoint.baseline_interval=young"],
    "daly": ["checkpoint.strategy=persistent", "checkpoint.baseline_interval=daly"],
}


def _format(value: float | None, unit: str = "") -> str:
    """A table value: a fraction as a percentage (``unit`` "%"), a large count with
    thousands separators, anything else to four figures."""
    if value is None:
        return "-"
    if unit == "%":
        return f"{value * 100:.3g}%"
    if abs(value) >= 10_000:
        return f"{value:,.0f}{unit}"
    return f"{value:.4g}{unit}"


def _table(summary: RunSummary, replications: dict[str, object] | None) -> Table:
    from analysis.render import _bytes

    table = Table(title=f"{summary.scenario} ({summary.strategy})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if replications:
        table.add_column("95% CI over seeds", justify="right")
    totals = summary.to_json()["totals"]
    rows = [
        ("ettr", "ETTR", ""),
        ("failures", "failures", ""),
        ("mean_wasted_s", "mean wasted / failure", " s"),
        ("mean_downtime_s", "mean downtime / failure", " s"),
        ("fraction_from_memory", "recovered from memory", "%"),
        ("checkpoint_overhead", "checkpoint overhead", "%"),
    ]
    for key, label, unit in rows:
        if replications:
            entry = replications[key]
            assert isinstance(entry, dict)
            ci = (
                f"[{_format(entry['ci_low'], unit)}, {_format(entry['ci_high'], unit)}]"
                if entry["ci_low"] is not None
                else "-"
            )
            table.add_row(label, _format(entry["mean"], unit), ci)
        else:
            table.add_row(label, _format(totals[key], unit))
    table.add_row(
        "iteration (with / without ckpt)",
        f"{summary.iteration_time_s:.4g} / {summary.iteration_time_no_ckpt_s:.4g} s",
    )
    table.add_row("checkpoints per hour", _format(summary.checkpoints_per_hour))
    table.add_row("checkpoint memory per node", _bytes(summary.checkpoint_memory_bytes))
    return table


@click.command("sim")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Result folder (default: runs/sim-<scenario name>).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Replications with seeds seed, seed+1, ... (default: sim.replications).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a scenario field, e.g. --set cluster.nodes=64 (repeatable).",
)
@click.option(
    "--strategy",
    type=click.Choice(sorted(STRATEGIES)),
    default=None,
    help="Checkpoint strategy; strawman/highfreq/young/daly are persistent baselines.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes for replications (default: all cores).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A file from `gemini-ckpt calibrate`: its laws, evaluated at this scenario's shape, "
    "replace the scenario's costs and iteration, never what it limits (netns links, emulated "
    "storage); --set still wins.",
)
@click.option(
    "--load",
    default="0",
    show_default=True,
    metavar="N|now",
    help="With --calibration: other jobs' runnable processes on this host when a single-host "
    "scenario will run (`now`: counted for a second); the laws' CPU-bound costs grow "
    "with it.",
)
def command(
    scenario: Path,
    out: Path | None,
    seeds: int | None,
    overrides: tuple[str, ...],
    strategy: str | None,
    workers: int | None,
    calibration: Path | None,
    load: str,
) -> None:
    """Simulate SCENARIO (a YAML file) and write events.jsonl and summary.json."""
    from analysis.calibration import load_calibration, scenario_overrides
    from shared.scenario_loader import with_strategy
    from sim import simulate, write_result

    faces: tuple[Face, ...] = ("sim",)
    chosen = list(with_strategy(overrides, STRATEGIES[strategy] if strategy else []))
    measured: list[str] = []
    if not calibration and (load == "now" or _background(load) != 0):
        raise click.UsageError("--load applies to a calibration's costs: give --calibration FILE")
    if calibration:
        # The calibration's laws evaluated at this scenario's shape, within its limits.
        try:
            document = load_calibration(calibration)
            shape = load_scenario(scenario, chosen, faces=faces)
            measured = scenario_overrides(document, shape, _background(load))
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--calibration") from error
    settings = [*measured, *chosen]
    loaded = load_scenario(scenario, settings, faces=faces)
    out = out or Path("runs") / f"sim-{loaded.name}"
    count = seeds or loaded.sim.replications
    console = Console(stderr=True, soft_wrap=True)  # paths stay whole when piped
    with _named(scenario):
        from sim.model import build_model

        warn(scenario, warnings(build_model(loaded).findings()))
        _clear_earlier(out)
        if count == 1:
            with _progress_line(console) as on_progress:
                result = simulate(loaded, on_progress=on_progress)
            write_result(result, out)
            console.print(_table(result.summary, None))
            console.print(f"results in {out}/")
            return
        _replicate(loaded, count, out, workers, console)


def _clear_earlier(out: Path) -> None:
    """Remove what an earlier ``sim`` wrote into ``out`` that this one may not write again
    (its ``seed-<n>/`` folders and ``replications.json``): a rerun with fewer seeds, or one,
    left them beside the new results. Nothing else in the folder is touched."""
    if not out.is_dir():
        return
    for path in out.iterdir():
        if path.is_dir() and not path.is_symlink() and re.fullmatch(r"seed-\d+", path.name):
            shutil.rmtree(path)
    (out / "replications.json").unlink(missing_ok=True)


def _background(load: str) -> float:
    """The --load option: a number of runnable processes, or ``now`` (the load average)."""
    if load == "now":
        from analysis.calibration import runnable_processes

        return runnable_processes()
    try:
        value = float(load)
    except ValueError:
        raise click.BadParameter(f"a number or `now`, got {load!r}", param_hint="--load") from None
    if not value >= 0:
        raise click.BadParameter(f"must be >= 0, got {load!r}", param_hint="--load")
    return value


@contextmanager
def _named(scenario: Path) -> Iterator[None]:
    """Errors the simulator raises name the scenario by its name: name its file instead."""
    try:
        yield
    except ScenarioError as error:
        raise ScenarioError(str(scenario), error.problems) from None


@contextmanager
def _progress_line(console: Console) -> Iterator[Callable[[SimProgress], None]]:
    """A callback showing the engine's progress: a live status line on a terminal, a printed
    line every ``PROGRESS_LINE_S`` seconds otherwise."""
    printed = [0.0]

    def text(progress: SimProgress) -> str:
        share = progress.time_s / progress.duration_s if progress.duration_s else 0.0
        return (
            f"simulated {_span(progress.time_s)} of {_span(progress.duration_s)} "
            f"({share:.0%}), {progress.failures:,} failures, "
            f"{progress.events_per_s:,.0f} events/s"
        )

    if console.is_terminal:
        with console.status("simulating...") as status:
            yield lambda progress: status.update(text(progress))
        return

    def line(progress: SimProgress) -> None:
        if progress.wall_s - printed[0] >= PROGRESS_LINE_S:
            printed[0] = progress.wall_s
            console.print(text(progress))

    yield line


def _span(seconds: float) -> str:
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s"


def _replicate(
    loaded: Scenario, count: int, out: Path, workers: int | None, console: Console
) -> None:
    from sim import aggregate, replicate

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"simulating {count} seeds", total=count)
        summaries = replicate(
            loaded, count, out=out, workers=workers, on_done=lambda _: progress.advance(task)
        )
    replications = aggregate(summaries)
    first = summaries[0]
    combined = RunSummary(
        **{**first.__dict__, "extra": {**first.extra, "replications": replications}}
    )
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out / "summary.json", combined)
    (out / "replications.json").write_text(json.dumps(replications, indent=2) + "\n")
    console.print(_table(first, replications))
    console.print(f"results in {out}/ (one folder per seed)")
