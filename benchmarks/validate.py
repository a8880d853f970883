"""Validate the simulator against the real harness, and measure Gemini against the baseline.

    .venv/bin/python benchmarks/validate.py [--out runs/validation] [--no-netns] [--no-headline]

Steps (about 10-15 minutes on a 2-core machine; real runs one at a time):

1. **Calibration**, once, from the quickstart scenario only: the real harness runs
   ``scenarios/quickstart.yaml`` with Gemini and with the persistent baseline (every 10
   iterations, as the scenario says), twice each (``--calibration-runs``: the restart phase is
   CPU-bound and varies with the machine's load, so more samples make a steadier median),
   then ``gemini-ckpt calibrate --quick --from-run`` on those runs writes
   ``OUT/calibration.yaml`` (micro-benchmarks of this machine plus the recovery costs those
   runs measured). Quickstart is thereby *used for calibration* and left out of the
   validation median.
2. **Validation**: every ``scenarios/validation/*.yaml`` (none used to calibrate) is simulated
   with that calibration and run by the real harness, Gemini: ``OUT/<name>/{sim,real}-gemini``.
   The netns scenario runs only as root with ``ip`` and ``tc`` (else it is skipped, and the
   table says so).
3. **Headline**: the persistent baseline for the software, hardware and two-simultaneous
   scenarios, real and simulated, saving every K iterations by the HighFreq rule
   ``K = ceil(t_save / T_iter)`` with ``t_save`` the blocking save time and ``T_iter`` the
   iteration time the calibration's baseline run measured (``OUT/<name>/{sim,real}-baseline``).
4. ``OUT/report.html`` / ``OUT/report.md`` (``analysis.report``: validation table, per-phase
   errors, Gemini vs baseline) and ``OUT/validation.md`` (the tables the README quotes).

Existing real-run folders are kept (``--rerun`` deletes them first), so an interrupted run
continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.calibration import calibration_overrides, load_calibration  # noqa: E402
from analysis.compare import compare_strategies, validate  # noqa: E402
from analysis.report import (  # noqa: E402
    markdown_table,
    phase_table,
    strategies_table,
    validation_table,
    write_report,
)
from analysis.results import load_run, load_runs  # noqa: E402
from gemini_ckpt.commands.run import ChildRun  # noqa: E402
from shared.costs import highfreq_interval_iterations  # noqa: E402
from shared.events import read_events  # noqa: E402
from shared.scenario import Scenario  # noqa: E402
from shared.scenario_loader import load_scenario  # noqa: E402

QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
VALIDATION = REPO / "scenarios" / "validation"
HEADLINE = ("v-software", "v-hardware", "v-two-simultaneous")
REAL_TIMEOUT_S = 600.0


def netns_possible() -> str | None:
    """None when netns mode can run here, else why not."""
    if os.name != "posix" or os.geteuid() != 0:
        return "netns mode needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"netns mode needs `{tool}`"
    return None


def real_run(scenario: Path, folder: Path, settings: list[str], logs: Path) -> bool:
    """One ``gemini-ckpt real`` child; True when it succeeded (or had already)."""
    if (folder / "summary.json").exists():
        print(f"  {folder.relative_to(logs.parent)}: kept from an earlier run")
        return True
    if folder.exists():
        shutil.rmtree(folder)
    args = ["real", str(scenario), "--out", str(folder)]
    for setting in settings:
        args += ["--set", setting]
    began = time.monotonic()
    child = ChildRun(args, logs / f"{folder.parent.name}-{folder.name}.log")
    try:
        code = child.process.wait(timeout=REAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.stop()
        code = -1
    except KeyboardInterrupt:
        child.stop()
        raise
    finally:
        child.handle.close()
    took = time.monotonic() - began
    print(f"  {folder.relative_to(logs.parent)}: real, exit {code}, {took:.0f} s")
    return code == 0


def sim_run(scenario: Path, folder: Path, settings: list[str]) -> None:
    from sim import simulate, write_result

    write_result(simulate(load_scenario(scenario, settings)), folder)


def for_scenario(scenario: Scenario, calibrated: list[str]) -> list[str]:
    """The calibration's overrides for one scenario: in netns mode, tc limits each node link
    to the scenario's bandwidth, so the measured loopback rate applies only above it."""
    key = "cluster.network_bandwidth_gbit_s="
    if scenario.real.mode != "netns":
        return list(calibrated)
    out = []
    for setting in calibrated:
        if setting.startswith(key):
            measured = float(setting[len(key) :])
            setting = key + f"{min(measured, scenario.cluster.network_bandwidth_gbit_s):.6g}"
        out.append(setting)
    return out


def highfreq_interval(run_folders: list[Path]) -> tuple[int, float, float]:
    """(K, t_save, T_iter) of the HighFreq rule from measured baseline runs (medians)."""
    saves = []
    iterations = []
    for folder in run_folders:
        for event in read_events(folder / "events.jsonl"):
            seconds = event.details.get("seconds")
            if event.kind == "persist_done" and isinstance(seconds, int | float):
                saves.append(float(seconds))
        summary = load_run(folder).summary
        iterations.append(summary.iteration_time_no_ckpt_s or summary.iteration_time_s)
    t_save = statistics.median(saves)
    iteration = statistics.median(iterations)
    return highfreq_interval_iterations(t_save, iteration), t_save, iteration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "validation")
    parser.add_argument("--no-netns", action="store_true", help="Skip the netns scenario.")
    parser.add_argument("--no-headline", action="store_true", help="Skip the baseline runs.")
    parser.add_argument("--rerun", action="store_true", help="Delete earlier real runs first.")
    parser.add_argument("--only", nargs="*", help="Validation scenario names (file stems).")
    parser.add_argument(
        "--calibration-runs",
        type=int,
        default=2,
        help="Pairs (Gemini, baseline) of quickstart runs to calibrate from (default 2).",
    )
    options = parser.parse_args()
    out: Path = options.out
    if options.rerun and out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []

    print("1. calibration (quickstart only)")
    quickstart = load_scenario(QUICKSTART)
    every = quickstart.checkpoint.persist_every_iterations or 10
    persistent = [
        "checkpoint.strategy=persistent",
        f"checkpoint.persistent_every_iterations={every}",
    ]
    calibration_runs: list[Path] = []
    for repeat in range(1, options.calibration_runs + 1):
        suffix = "" if repeat == 1 else f"-{repeat}"
        for strategy, settings in (("gemini", []), ("baseline", persistent)):
            folder = out / "quickstart" / f"real-{strategy}{suffix}"
            real_run(QUICKSTART, folder, settings, logs)
            calibration_runs.append(folder)
    calibration_file = out / "calibration.yaml"
    if not calibration_file.exists():
        args = [sys.executable, "-m", "gemini_ckpt", "calibrate", str(QUICKSTART), "--quick"]
        args += ["--dir", str(out), "--out", str(calibration_file)]
        for run in calibration_runs:
            args += ["--from-run", str(run)]
        subprocess.run(args, check=True, cwd=REPO)
    calibration = load_calibration(calibration_file)
    calibrated = calibration_overrides(calibration)
    print("   " + "\n   ".join(calibrated))

    print("2. validation scenarios: simulated (calibrated) and measured, Gemini")
    skipped: dict[str, str] = {}
    scenarios = sorted(VALIDATION.glob("*.yaml"))
    if options.only:
        scenarios = [s for s in scenarios if s.stem in options.only]
    for path in scenarios:
        loaded = load_scenario(path)
        folder = out / path.stem
        if loaded.real.mode == "netns":
            reason = "--no-netns" if options.no_netns else netns_possible()
            if reason:
                skipped[loaded.name] = reason
                print(f"  {path.stem}: skipped ({reason})")
                continue
        sim_run(path, folder / "sim-gemini", for_scenario(loaded, calibrated))
        if not real_run(path, folder / "real-gemini", [], logs):
            failed.append(f"{path.stem}/real-gemini")

    rule = ""
    if not options.no_headline:
        k, t_save, t_iter = highfreq_interval(calibration_runs[1:2])
        rule = (
            f"Baseline interval by the HighFreq rule: K = ceil(t_save / T_iter) = "
            f"ceil({t_save:.3f} s / {t_iter:.3f} s) = {k} iterations (medians of the "
            "calibration's baseline run)."
        )
        print(f"3. headline: persistent baseline, {rule}")
        baseline = ["checkpoint.strategy=persistent", f"checkpoint.persistent_every_iterations={k}"]
        for name in HEADLINE:
            if options.only and name not in options.only:
                continue
            path = VALIDATION / f"{name}.yaml"
            settings = for_scenario(load_scenario(path), calibrated)
            sim_run(path, out / name / "sim-baseline", [*baseline, *settings])
            if not real_run(path, out / name / "real-baseline", baseline, logs):
                failed.append(f"{name}/real-baseline")

    print("4. report")
    runs = load_runs([out])
    used = [str(s) for s in calibration.get("scenarios_used") or []]
    report = validate(runs, calibration_scenarios=used)
    files = write_report(runs, out, calibration_scenarios=used, animation=False)
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    parts = [
        "# Validation and headline figures",
        "",
        f"`.venv/bin/python benchmarks/validate.py --out {shown}`",
        "",
        "Calibration: " + ", ".join(calibrated),
        "",
        markdown_table(validation_table(report)),
    ]
    if skipped:
        parts.append(
            "Not run: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()) + "\n"
        )
    parts.append(markdown_table(phase_table(report)))
    if rule:
        parts += [markdown_table(strategies_table(compare_strategies(runs))), rule, ""]
    (out / "validation.md").write_text("\n".join(parts), encoding="utf-8")
    print(report.verdict)
    print(f"{out / 'validation.md'}, {files.html}")
    if failed:
        print("failed runs: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
