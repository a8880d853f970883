"""``gemini-ckpt calibrate [SCENARIO] [--out FILE]``: measure this machine for the simulator.

Runs the benchmarks of ``real/calibrate.py`` (memory copy, loopback TCP, storage in the run
folder's filesystem, process start, restart of the scenario's ranks, the scenario's iteration
profile), optionally adds recovery costs measured by earlier real runs (``--from-run``), and
writes a calibration file whose ``overrides`` the simulator applies (``gemini-ckpt sim
--set ...`` or ``--calibration FILE``). See docs/analysis.md.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("calibrate")
@click.argument(
    "scenario",
    required=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("calibration.yaml"),
    show_default=True,
    help="Calibration file to write.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder whose filesystem's storage bandwidth is measured (the run folders' home).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario field."
)
@click.option("--ranks", type=click.IntRange(min=1), default=None, help="World size to profile.")
@click.option(
    "--iterations", type=click.IntRange(min=2), default=8, show_default=True, help="Timed steps."
)
@click.option(
    "--from-run",
    "from_runs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Measured run folder(s) whose stop, restart and detection times calibrate too; "
    "their scenarios are then left out of the validation median.",
)
@click.option("--quick", is_flag=True, help="Small benchmarks (seconds, less precise).")
def command(
    scenario: Path | None,
    out: Path,
    directory: Path,
    overrides: tuple[str, ...],
    ranks: int | None,
    iterations: int,
    from_runs: tuple[Path, ...],
    quick: bool,
) -> None:
    """Measure this machine (and the SCENARIO's model, default the quickstart) and write a
    calibration file for the simulator."""
    from rich.console import Console
    from rich.table import Table

    from analysis.calibration import (
        calibration_overrides,
        measurements_from_runs,
        write_calibration,
    )
    from analysis.results import RunFolderError, load_runs
    from real.calibrate import CalibrationOptions, measure

    console = Console(stderr=True)
    if scenario is None:
        scenario = Path("scenarios/quickstart.yaml")
        if not scenario.is_file():
            raise click.UsageError("give a SCENARIO (scenarios/quickstart.yaml is not here)")
    runs = []
    if from_runs:
        try:
            runs = load_runs(from_runs)
        except RunFolderError as error:
            raise click.UsageError(str(error)) from error
    options = CalibrationOptions(
        scenario, tuple(overrides), directory, ranks, iterations, quick=quick
    )
    with console.status("calibrating") as status:
        document = measure(options, progress=lambda text: status.update(f"measuring {text}"))
    if runs:
        from shared.scenario_loader import load_scenario

        loaded = load_scenario(scenario, overrides)
        # A restore from memory moves a node's shard at about the memory copy bandwidth;
        # what the runs measured beyond that is the restore's fixed cost.
        copy = float(document["measurements"].get("memory_copy_gbyte_s") or 0) * 1e9
        from shared.costs import node_checkpoint_bytes

        cluster = loaded.cluster
        shard = node_checkpoint_bytes(
            loaded.model.checkpoint_bytes,
            nodes=cluster.nodes,
            ranks_per_node=cluster.accelerators_per_node,
            parallelism=loaded.training.parallelism,
        )
        transfer = shard / copy if copy > 0 else 0.0
        document["measurements"].update(
            measurements_from_runs(
                runs, replacement_s=loaded.cluster.replacement_s, transfer_s=transfer
            )
        )
        document["scenarios_used"] = sorted({r.scenario for r in runs if r.source == "real"})
    write_calibration(out, document)
    table = Table(title=f"calibration ({document['machine']['hostname']})")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for key, value in document["measurements"].items():
        table.add_row(key, str(value))
    console.print(table)
    for override in calibration_overrides(document):
        console.print(f"  --set {override}")
    console.print(f"calibration written to {out}")
