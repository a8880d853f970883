"""``gemini-ckpt run SCENARIO [--out DIR]``: the main job.

Runs one scenario four ways and reports on all of them:

- ``DIR/sim-gemini``, ``DIR/sim-baseline``: the simulator (in this process, through
  ``sim.simulate``), Gemini and the persistent-storage baseline;
- ``DIR/real-gemini``, ``DIR/real-baseline``: the real harness on an emulated cluster, each a
  ``gemini-ckpt real`` child process whose output goes to ``DIR/logs/<name>.log``;
- ``DIR/sweep/``: simulated runs at several failure rates and cluster sizes (the ETTR figure);
- ``DIR/report.html``, ``DIR/report.md``, ``DIR/figures/``: the report (``analysis.report``);
- ``DIR/final-report.md``, ``DIR/final-report.html``, ``DIR/slides.html``, ``DIR/demo.mp4``:
  the deliverables made from it (``--no-video`` skips the video).

The baseline is the same scenario with ``checkpoint.strategy=persistent``; when the scenario
names no persistent interval, it saves every K iterations by the HighFreq rule, K = ceil(t_save /
T_iter) from the scenario's save cost and iteration time (``baseline_overrides``).

Before it simulates, the job **calibrates this machine** (``OUT/calibration.yaml``, a few
seconds): micro-benchmarks of an in-process recovery (``benchmarks.calibrate.measure_recovery``: a
warm rank joining and rejoining a gloo group around the scenario's model, a collective failing
when a peer vanishes, a probe round trip, a killed child's exit notice, loading a state, the
iteration), turned into recovery costs by ``analysis.calibration.recovery_costs``. So the
prediction is made on the machine that then measures, and never from the run it is compared
with. A calibration file (``--calibration``, from ``gemini-ckpt calibrate``) replaces it; its
overrides (its laws evaluated at this scenario's shape, ``analysis.calibration.
scenario_overrides``) go to the simulated runs only, and the scenarios it was calibrated on are
left out of the validation median. Either way no calibration overrides what the scenario
deliberately limits: netns links keep their tc rate (a measured rate applies only below it),
emulated storage its bandwidth. ``--no-calibrate`` simulates the scenario's own values.

Ctrl-C (or SIGTERM) stops the running child with SIGTERM, which makes ``gemini-ckpt real`` tear
its emulated cluster down; a child still alive after a grace period is killed with its process
group. Exit code: 0 when every run and the report succeeded, 1 when a run failed (the report is
still written from the runs that exist), 130 when interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from shared.errors import ScenarioError
from shared.scenario import Scenario
from shared.scenario_loader import load_scenario

TEARDOWN_GRACE_S = 60.0
"""How long a ``gemini-ckpt real`` child gets to tear its cluster down after SIGTERM."""

SWEEP_RATE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SWEEP_SIZE_FACTORS = (1, 2, 4, 8, 16)
DEFAULT_FAILURES_PER_NODE_PER_DAY = 2.0


def baseline_overrides(scenario: Scenario) -> list[str]:
    """Overrides that turn a scenario into its persistent-storage baseline.

    A scenario that names no baseline interval gets the HighFreq rule, K = ceil(t_save /
    T_iter) with the scenario's save cost (``cluster.storage.save_time_s`` plus the upload)
    and iteration time, as a fixed K so that the real harness saves at the same iterations.
    """
    overrides = ["checkpoint.strategy=persistent"]
    checkpoint = scenario.checkpoint
    if (
        checkpoint.baseline_interval == "fixed"
        and checkpoint.baseline_every_iterations is None
        and checkpoint.baseline_interval_s is None
    ):
        from sim.model import build_model

        highfreq = scenario.replace(
            checkpoint=checkpoint.model_copy(
                update={"strategy": "persistent", "baseline_interval": "highfreq"}
            )
        )
        every = build_model(highfreq).strategy.persist_every or 1
        overrides.append(f"checkpoint.baseline_every_iterations={every}")
    return overrides


def sweep_points(scenario: Scenario) -> list[tuple[str, list[str]]]:
    """(folder name, overrides) of the ETTR sweep: failure rates at the scenario's size, then
    sizes at its failure rate (a stochastic process replaces any explicit schedule)."""
    process = scenario.failures.process
    nodes = scenario.cluster.nodes
    per_node = DEFAULT_FAILURES_PER_NODE_PER_DAY
    if process is not None:
        per_node = process.failures_per_node_per_day or (process.failures_per_day or 0) / nodes
    hardware = process.hardware_fraction if process is not None else 0.5
    days = max(scenario.sim.duration_days, 1.0)

    def failures(rate: float) -> list[str]:
        return [
            "failures.schedule=[]",
            "failures.process={distribution: exponential, "
            f"failures_per_node_per_day: {rate:.6g}, hardware_fraction: {hardware}}}",
            f"sim.duration_days={days}",
        ]

    points = [(f"rate-{per_node * f:.4g}", failures(per_node * f)) for f in SWEEP_RATE_FACTORS]
    points += [
        (f"nodes-{nodes * f}", [*failures(per_node), f"cluster.nodes={nodes * f}"])
        for f in SWEEP_SIZE_FACTORS
        if f > 1
    ]
    return points


class ChildRun:
    """A ``gemini-ckpt`` child process we own: started in its own session, logged to a file,
    stopped with SIGTERM then killed with its group."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        program: Sequence[str] = (sys.executable, "-m", "gemini_ckpt"),
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in wait/stop
        self.process = subprocess.Popen(
            [*program, *args],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self) -> int:
        try:
            return self.process.wait()
        finally:
            self.handle.close()

    def stop(self, say: Callable[[str], None] = print) -> None:
        """SIGTERM (the child tears down), then SIGKILL to its process group.

        Returns only once the child has ended: a further Ctrl-C (or SIGTERM) while it tears
        down is answered with ``say`` and otherwise ignored. It used to end this process at
        once, leaving the cluster's teardown (agents, stores, namespaces) to run on behind
        the shell's prompt; the child ignores interrupts there itself, its teardown being
        bounded (``real.launcher.run``), and so is this wait (``TEARDOWN_GRACE_S``)."""
        if self.process.poll() is None:
            with _patient(say):
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=TEARDOWN_GRACE_S)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
        self.handle.close()


def _patient(say: Callable[[str], None]) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C and SIGTERM only make ``say`` a line, for the block."""
    from real.runtime.processes import interrupts_handled

    def answer(signum: int, frame: Any) -> None:
        say(
            "still stopping the running cluster: its teardown ends its processes and "
            f"frees their memory (at most {TEARDOWN_GRACE_S:.0f} s, then they are killed)"
        )

    return interrupts_handled(answer)


def calibrate_machine(scenario: Path, overrides: Sequence[str], out: Path) -> dict[str, Any]:
    """Measure this machine's recovery costs for ``scenario`` and write ``out/calibration.yaml``.

    Micro-benchmarks only (``benchmarks.calibrate.measure_recovery``), never the scenario's run.
    Returns the calibration document (with its ``overrides``).
    """
    import platform

    from analysis.calibration import scenario_overrides, write_calibration
    from benchmarks.calibrate import CalibrationOptions, measure_recovery

    loaded = load_scenario(scenario, overrides)
    measurements = measure_recovery(CalibrationOptions(scenario, tuple(overrides), out, quick=True))
    document: dict[str, Any] = {
        "version": 1,
        "machine": {"hostname": platform.node(), "cpus": os.cpu_count()},
        "scenario": loaded.name,
        "source": "micro",
        "scenarios_used": [],
        "measurements": measurements,
    }
    write_calibration(out / "calibration.yaml", document)
    document["overrides"] = scenario_overrides(document, loaded)
    return document


RUN_FOLDERS = ("sim-gemini", "sim-baseline", "real-gemini", "real-baseline")
"""The run folders ``gemini-ckpt run`` writes in ``--out``, beside ``sweep/`` (its sweep's)."""


def _clear_earlier(out: Path, names: set[str], *, console: Console) -> None:
    """Remove the run folders an earlier ``gemini-ckpt run`` left in ``out`` that this one will
    not write again (its real runs after ``--no-real``, its sweep after ``--no-sweep``): the
    report reads every run folder in ``out``, and would pair this run's simulations with
    measurements they were not made for. Only the names this command writes
    (``RUN_FOLDERS``, ``sweep/*``) are touched, never a link; other folders and a calibration
    file are left alone. (The report removes its own earlier files, figures and video.)"""
    earlier = [
        *(out / name for name in RUN_FOLDERS),
        *sorted((out / "sweep").glob("*")),
    ]
    for path in earlier:
        if str(path.relative_to(out)) in names or path.is_symlink() or not path.exists():
            continue
        console.print(f"removing {path}: an earlier run's, which this one does not replace")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _simulate(scenario_path: Path, overrides: Sequence[str], out: Path) -> None:
    from sim import simulate, write_result

    write_result(simulate(load_scenario(scenario_path, overrides)), out)


@click.command("run")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: runs/<scenario name>).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario field."
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Calibration file (gemini-ckpt calibrate) applied to the simulated runs.",
)
@click.option(
    "--calibrate/--no-calibrate",
    default=True,
    show_default=True,
    help="Measure this machine's recovery costs first (micro-benchmarks, a few seconds; "
    "OUT/calibration.yaml) and simulate with them.",
)
@click.option("--real/--no-real", default=True, show_default=True, help="Run the real harness.")
@click.option(
    "--force",
    is_flag=True,
    help="Run the real clusters even where the size check says they do not fit this host.",
)
@click.option(
    "--sweep/--no-sweep", default=True, show_default=True, help="Simulate the ETTR sweep."
)
@click.option("--gif/--no-gif", default=True, show_default=True, help="Animate one recovery.")
@click.option(
    "--video/--no-video",
    default=True,
    show_default=True,
    help="Write demo.mp4, one recovery simulated and measured side by side (a few seconds).",
)
def command(
    scenario: Path,
    out: Path | None,
    overrides: tuple[str, ...],
    calibration: Path | None,
    calibrate: bool,
    real: bool,
    force: bool,
    sweep: bool,
    gif: bool,
    video: bool,
) -> None:
    """Simulate and run SCENARIO, Gemini and the persistent baseline, and write the report."""
    from analysis.calibration import calibration_scenarios, load_calibration, scenario_overrides

    console = Console(stderr=True, soft_wrap=True)  # paths stay whole when piped
    started = time.monotonic()  # the whole job, its calibration included
    loaded = load_scenario(scenario, overrides)
    runs_real = real and "real" in loaded.targets
    if runs_real:
        from gemini_ckpt.commands.real import require_netns
        from real.launcher.capacity import require_fits

        # Refused here, before minutes of calibration and simulation (exit 2, as `real`).
        for strategy in ("gemini", "persistent"):
            require_fits(loaded, strategy, force=force, source=str(scenario))
        if loaded.real.mode == "netns":
            require_netns()
    out = out or Path("runs") / loaded.name
    document: dict[str, Any] | None = None
    calibrated_on: list[str] = []
    if calibration is not None:  # read before the run folder is made: a typo leaves nothing
        try:
            document = load_calibration(calibration)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--calibration") from error
        calibrated_on = calibration_scenarios(document)
    out.mkdir(parents=True, exist_ok=True)
    if document is None and calibrate:
        console.print("calibrating this machine (micro-benchmarks of an in-process recovery)")
        began = time.monotonic()
        try:
            document = calibrate_machine(scenario, overrides, out)
        except (OSError, RuntimeError, TimeoutError) as error:
            raise click.ClickException(f"calibration failed: {error}") from error
        console.print(f"calibrated in {time.monotonic() - began:.1f} s: {out / 'calibration.yaml'}")
    base = list(overrides)
    gemini = [*base, "checkpoint.strategy=gemini"]
    # The calibration's costs for each strategy (Gemini's iteration carries its checkpoints).
    gemini_extra, baseline_extra = (
        ([], [])
        if document is None
        else (
            scenario_overrides(document, loaded, strategy="gemini"),
            scenario_overrides(document, loaded, strategy="persistent"),
        )
    )
    # The baseline's interval (HighFreq) from the iteration this machine runs.
    baseline = baseline_overrides(load_scenario(scenario, [*base, *baseline_extra]))
    # The simulator takes every scenario, whatever its targets.
    jobs: list[tuple[str, str, list[str]]] = [
        ("sim", "sim-gemini", [*gemini, *gemini_extra]),
        ("sim", "sim-baseline", [*base, *baseline, *baseline_extra]),
    ]
    if runs_real:
        jobs += [
            ("real", "real-gemini", [*base, "checkpoint.strategy=gemini"]),
            ("real", "real-baseline", [*base, *baseline]),
        ]
    elif real:
        console.print(f"[yellow]{loaded.name} does not target real; simulating only[/]")
    if sweep:
        for name, settings in sweep_points(loaded):
            jobs.append(("sweep", f"sweep/{name}-gemini", [*base, *settings, *gemini_extra]))
            jobs.append(
                ("sweep", f"sweep/{name}-baseline", [*base, *settings, *baseline, *baseline_extra])
            )
    _clear_earlier(out, {name for _, name, _ in jobs}, console=console)
    failed: list[str] = []
    finished: list[str] = []
    child: ChildRun | None = None

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        for number, (kind, name, settings) in enumerate(jobs, start=1):
            folder = out / name
            step = f"[{number}/{len(jobs)}] {name}"
            if kind == "real" and (folder / "events").exists():
                # The same command again (or after a Ctrl-C): its earlier run gives way, as the
                # simulations and the report do; another --out keeps it.
                console.print(f"{step}: replacing the earlier run in {folder}")
                shutil.rmtree(folder)
            began = time.monotonic()
            if kind in ("sim", "sweep"):
                if kind == "sim":
                    console.print(f"{step}: simulating")
                elif jobs[number - 2][0] != "sweep":
                    count = sum(1 for job in jobs if job[0] == "sweep")
                    console.print(f"[{number}-{number + count - 1}/{len(jobs)}] ETTR sweep")
                try:
                    _simulate(scenario, settings, folder)
                except (ScenarioError, ValueError, RuntimeError) as error:
                    console.print(f"[red]{step} failed[/]: {error}")
                    failed.append(name)
                    continue
            else:
                console.print(f"{step}: emulated cluster, log in {out / 'logs' / name}.log")
                child = ChildRun(
                    [
                        "real",
                        str(scenario),
                        "--out",
                        str(folder),
                        *_sets(settings),
                        *(["--force"] if force else []),
                    ],
                    out / "logs" / f"{name}.log",
                )
                code = child.wait()
                child = None
                if code != 0:
                    console.print(f"[red]{step} failed (exit {code})[/]; log tail:")
                    console.print(_tail(out / "logs" / f"{name}.log"))
                    failed.append(name)
                    continue
            finished.append(name)
            if kind != "sweep":
                console.print(f"{step}: done in {time.monotonic() - began:.1f} s")
        console.print("writing the report")
        files = _report(out, calibrated_on, gif, video)
    except KeyboardInterrupt:
        if child is not None:
            console.print("interrupted: stopping the running cluster (teardown)...")
            child.stop(lambda line: console.print(f"[yellow]{line}[/]"))
        console.print("[red]Interrupted.[/]")
        kept = [*(["calibration.yaml"] if (out / "calibration.yaml").exists() else []), *finished]
        console.print(
            f"kept in {out}: {', '.join(kept) if kept else 'nothing finished'}"
            + ("; a run cut short has no summary and is left out of any report" if child else "")
            + ". The same command starts over and replaces them; another --out keeps them."
        )
        raise click.exceptions.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print(f"done in {time.monotonic() - started:.0f} s: {files.html} and {files.markdown}")
    made = [files.final_html, files.final_markdown, files.slides, files.video]
    console.print("deliverables: " + ", ".join(str(path) for path in made if path is not None))
    if files.validation is not None:
        console.print(files.validation.verdict)
    if failed:
        console.print(f"[red]failed runs: {', '.join(failed)}[/]")
        raise click.exceptions.Exit(1)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _sets(settings: Sequence[str]) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


def _report(out: Path, calibrated_on: Sequence[str], gif: bool, video: bool) -> Any:
    from analysis.results import load_runs, split_sweep
    from gemini_ckpt.commands.report import write_files
    from shared.errors import RunFolderError

    try:
        runs = load_runs([out])
    except RunFolderError as error:
        raise click.ClickException(f"no run finished, no report: {error}") from error
    main, sweep = split_sweep(runs)
    return write_files(main, out, sweep, calibrated_on, gif=gif, video=video)
