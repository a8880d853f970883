"""``gemini-ckpt calibrate [SCENARIO] [--out FILE]``: measure this machine for the simulator.

Measures what does not depend on a scenario (``benchmarks.calibrate.measure_machine``: memory copy,
loopback TCP, storage in the run folder's filesystem, process start) and fits the **laws** of
the recovery costs and the iteration (``analysis.calibration.LAW_FORMS``) to micro-measurements
of reference shapes (``benchmarks.calibrate.REFERENCE_SHAPES``: warm ranks joining and rejoining a
gloo group, a collective failing, loading a state, a few iterations). The file then applies to
any scenario: ``gemini-ckpt sim SCENARIO --calibration FILE`` evaluates the laws at the
scenario's world size, parameters, state and links (``analysis.calibration.scenario_overrides``),
never overriding what the scenario deliberately limits (netns links, emulated storage).

With a SCENARIO, the file also carries a failure-free profile of that configuration
(``profile``), which replaces the iteration law for scenarios of the same configuration:
``--profile micro`` (the default) times its model on its world size with warm ranks, ``--profile
run`` runs the real harness on it with its failures removed (its iteration then includes the
strategy's checkpoint, which costs CPU time on a host without accelerators; the laws keep the
split between compute and communication). ``--laws FILE`` reuses the machine's measurements
and laws of an earlier calibration instead of measuring them again. ``--from-run`` adds
recovery costs measured by earlier real runs (those scenarios are then left out of the
validation median). See docs/simulator.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

PROFILE_ITERATIONS = 12
"""Iterations of a failure-free profile run (``--profile run``): the harness's profiling
iterations without checkpoints, then the strategy's."""


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
@click.option(
    "--quick", is_flag=True, help="Small benchmarks, two reference shapes (less precise)."
)
@click.option(
    "--laws",
    "laws_from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Take the machine's measurements and laws from this calibration file instead of "
    "measuring them again (with SCENARIO: add its profile to them).",
)
@click.option(
    "--profile",
    type=click.Choice(["micro", "run", "none"]),
    default="micro",
    show_default=True,
    help="With SCENARIO: how its configuration is profiled without failures: `micro` (warm "
    "ranks, a few iterations), `run` (the real harness, failures removed, "
    f"{PROFILE_ITERATIONS} iterations: the iteration with the strategy's checkpoint), or none.",
)
def command(
    scenario: Path | None,
    out: Path,
    directory: Path,
    overrides: tuple[str, ...],
    iterations: int,
    from_runs: tuple[Path, ...],
    quick: bool,
    laws_from: Path | None,
    profile: str,
) -> None:
    """Measure this machine, fit the laws of the simulator's costs, and write a calibration
    file (with SCENARIO: also a failure-free profile of its configuration)."""
    from rich.console import Console
    from rich.table import Table

    from analysis.calibration import (
        configuration,
        measurements_from_runs,
        scenario_overrides,
        write_calibration,
    )
    from analysis.results import load_runs
    from benchmarks.calibrate import CalibrationOptions, measure_machine, measure_recovery
    from shared.errors import RunFolderError
    from shared.scenario_loader import load_scenario

    console = Console(stderr=True, soft_wrap=True)  # paths stay whole when piped
    runs = []
    if from_runs:
        if scenario is None:
            raise click.UsageError("--from-run needs the SCENARIO those runs ran")
        try:
            runs = load_runs(from_runs)
        except RunFolderError as error:
            raise click.UsageError(str(error)) from error
    directory.mkdir(parents=True, exist_ok=True)
    loaded = load_scenario(scenario, overrides) if scenario is not None else None
    with console.status("calibrating") as status:

        def progress(text: str) -> None:
            status.update(f"measuring {text}")

        if laws_from is not None:
            from analysis.calibration import load_calibration

            try:
                reused = load_calibration(laws_from)
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--laws") from error
            if not isinstance(reused["measurements"].get("laws"), dict):
                raise click.BadParameter(f"{laws_from} has no laws", param_hint="--laws")
            document = {k: v for k, v in reused.items() if k not in ("overrides", "profile")}
            document["measurements"] = dict(reused["measurements"])
        else:
            document = measure_machine(directory, progress, quick=quick)
        if scenario is not None and loaded is not None and profile == "run":
            progress(f"a failure-free run of {loaded.name}")
            document["profile"] = {
                "scenario": loaded.name,
                "configuration": configuration(loaded),
                "strategy": loaded.checkpoint.strategy,
                **profile_run(scenario, overrides, directory),
            }
            document["scenario"] = loaded.name
        elif scenario is not None and loaded is not None and profile == "micro":
            options = CalibrationOptions(
                scenario, tuple(overrides), directory, iterations=iterations, quick=quick
            )
            profiled = measure_recovery(options, progress)
            document["profile"] = {
                "scenario": loaded.name,
                "configuration": configuration(loaded),
                **{
                    k: profiled[k]
                    for k in (
                        "micro_iteration_time_s",
                        "micro_iteration_phases",
                        "engine_iteration_s",
                        "engine_step_s",
                    )
                    if k in profiled
                },
            }
            document["scenario"] = loaded.name
    if runs and loaded is not None:
        document["measurements"].update(_from_runs(document, loaded, runs, measurements_from_runs))
        document["scenarios_used"] = sorted({r.scenario for r in runs if r.source == "real"})
    write_calibration(out, document)
    laws = document["measurements"]["laws"]
    table = Table(title=f"calibration ({document['machine']['hostname']})")
    table.add_column("measurement or law")
    table.add_column("value", justify="right")
    for key, value in document["measurements"].items():
        if key not in ("laws", "law_samples"):
            table.add_row(key, str(value))
    for key, form in laws["forms"].items():
        fitted = laws.get(key)
        values = ", ".join(f"{k}={_short(v)}" for k, v in (fitted or {}).items())
        table.add_row(f"{key} = {form}", values)
    for key in ("park_s", "collective_failure_s", "probe_s", "exit_notice_s"):
        if isinstance(laws.get(key), int | float):  # a law's constant (or an older file's)
            table.add_row(key, _short(laws[key]))
    console.print(table)
    if loaded is not None:
        console.print(f"for {loaded.name}:")
        for override in scenario_overrides(document, loaded):
            console.print(f"  --set {override}")
    console.print(f"calibration written to {out}")


def profile_run(scenario: Path, overrides: tuple[str, ...], directory: Path) -> dict[str, Any]:
    """A failure-free run of the scenario by the real harness (``gemini-ckpt real``, failures
    removed, ``PROFILE_ITERATIONS`` iterations, in a temporary folder under ``directory``):
    its median iteration (with the strategy's checkpoint) and step (without), what a trainer
    held of its own as it ended (the median over the ranks: a lost trainer's teardown, which
    its survivors wait for, grows with it), and the other jobs' runnable processes as it
    started (the laws rescale the iteration to the load of the moment a prediction is
    made)."""
    import subprocess
    import sys
    import tempfile

    from analysis.calibration import runnable_processes
    from analysis.results import load_run
    from shared.errors import RunFolderError

    background = runnable_processes()  # other jobs' runnable processes as it starts
    with tempfile.TemporaryDirectory(prefix=".profile-", dir=directory) as folder:
        out = Path(folder) / "run"
        settings = [*overrides, "failures.schedule=[]", f"training.iterations={PROFILE_ITERATIONS}"]
        args = [sys.executable, "-m", "gemini_ckpt", "real", str(scenario), "--out", str(out)]
        for setting in settings:
            args += ["--set", setting]
        done = subprocess.run(args, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
            raise click.ClickException(f"the profile run failed (exit {done.returncode}):\n{tail}")
        try:
            summary = load_run(out).summary
        except RunFolderError as error:
            raise click.ClickException(f"the profile run left no summary: {error}") from error
    trainer = (summary.extra.get("node_memory") or {}).get("trainer") or {}
    return {
        "run_iteration_time_s": round(summary.iteration_time_s, 6),
        "run_step_s": round(summary.iteration_time_no_ckpt_s or summary.iteration_time_s, 6),
        **({"run_trainer_anon_bytes": int(trainer["anon"])} if "anon" in trainer else {}),
        "iterations": PROFILE_ITERATIONS,
        "background": round(background, 2),
    }


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _from_runs(
    document: dict[str, Any], loaded: Any, runs: list[Any], measure: Any
) -> dict[str, float]:
    """Recovery costs measured by runs of ``loaded`` (``measurements_from_runs``)."""
    # A restore from memory moves a node's shard at about the memory copy bandwidth; what the
    # runs measured beyond that is the restore's fixed cost.
    copy = float(document["measurements"].get("memory_copy_gbyte_s") or 0) * 1e9
    shard = loaded.checkpoint_bytes_per_node
    transfer = shard / copy if copy > 0 else 0.0
    result: dict[str, float] = measure(
        runs, replacement_s=loaded.cluster.replacement_s, transfer_s=transfer
    )
    return result
