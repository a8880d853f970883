"""``gemini-ckpt sim``: simulate a scenario under failures and write its result folder.

One seed writes ``OUT/events.jsonl`` and ``OUT/summary.json``; several seeds (``--seeds N``)
run in parallel across cores, write ``OUT/seed-<seed>/`` each, and ``OUT/summary.json`` (the
first seed's summary, with the means and 95% confidence intervals over all seeds under
``extra.replications``) plus ``OUT/replications.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from shared.scenario_loader import load_scenario
from shared.summary import RunSummary, write_summary

STRATEGIES: dict[str, list[str]] = {
    "gemini": ["checkpoint.strategy=gemini"],
    "persistent": ["checkpoint.strategy=persistent"],
    "strawman": ["checkpoint.strategy=persistent", "checkpoint.persistent_interval=strawman"],
    "highfreq": ["checkpoint.strategy=persistent", "checkpoint.persistent_interval=highfreq"],
    "young": ["checkpoint.strategy=persistent", "checkpoint.persistent_interval=young"],
    "daly": ["checkpoint.strategy=persistent", "checkpoint.persistent_interval=daly"],
}


def _format(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.4g}{unit}"


def _table(summary: RunSummary, replications: dict[str, object] | None) -> Table:
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
        ("fraction_from_memory", "recovered from memory", ""),
        ("checkpoint_overhead", "checkpoint overhead", ""),
    ]
    for key, label, unit in rows:
        if replications:
            entry = replications[key]
            assert isinstance(entry, dict)
            ci = (
                f"[{_format(entry['ci_low'])}, {_format(entry['ci_high'])}]"
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
    table.add_row("checkpoint memory per node", f"{summary.checkpoint_memory_bytes / 1e9:.3g} GB")
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
    help="A file from `gemini-ckpt calibrate`: measured bandwidths and times replace the "
    "scenario's (--set still wins).",
)
def command(
    scenario: Path,
    out: Path | None,
    seeds: int | None,
    overrides: tuple[str, ...],
    strategy: str | None,
    workers: int | None,
    calibration: Path | None,
) -> None:
    """Simulate SCENARIO (a YAML file) and write events.jsonl and summary.json."""
    from analysis.calibration import calibration_overrides, load_calibration
    from sim import aggregate, replicate, simulate, write_result

    try:
        measured = calibration_overrides(load_calibration(calibration)) if calibration else []
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--calibration") from error
    settings = [*measured, *(STRATEGIES[strategy] if strategy else []), *overrides]
    loaded = load_scenario(scenario, settings)
    out = out or Path("runs") / f"sim-{loaded.name}"
    count = seeds or loaded.sim.replications
    console = Console(stderr=True)
    if count == 1:
        result = simulate(loaded)
        write_result(result, out)
        console.print(_table(result.summary, None))
        console.print(f"results in {out}/")
        return
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
