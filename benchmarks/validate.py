"""Validate the simulator on shapes it was not calibrated on, through the product's commands.

    .venv/bin/python benchmarks/validate.py [--out runs/validation] [--only NAME ...]
        [--calibration FILE] [--rerun] [--no-netns] [--repeat N]

1. **Calibration**, once: ``gemini-ckpt calibrate --out OUT/calibration.yaml`` measures this
   machine and fits the laws of the recovery costs and the iteration to micro-measurements of
   reference shapes (``benchmarks.calibrate.REFERENCE_SHAPES``), none of which is a validation
   scenario's shape, and never from a scenario's run. ``--calibration FILE`` reuses a file.
2. **Each scenario** of ``scenarios/validation/`` (its strategy as its file says), one after
   the other: ``gemini-ckpt calibrate SCENARIO --laws OUT/calibration.yaml --profile micro``
   (the machine's laws plus a failure-free profile of the configuration: warm ranks of its
   model, a few iterations; ``--profile run``: the harness run with the failures removed,
   whose iteration includes the strategy's checkpoint, a minute or two more per scenario;
   ``none``: the laws' iteration), then ``gemini-ckpt
   sim SCENARIO --calibration OUT/<name>/calibration.yaml --load now`` (the laws at the
   scenario's shape and this host's current load, within its limits: netns links, emulated
   storage) and ``gemini-ckpt real SCENARIO``, into ``OUT/<name>/{sim,real}-<strategy>``.
   The netns scenarios need root with ``ip`` and ``tc`` (else they are skipped and the table
   says so). The load average is read before and after each real run.
3. **The table** (printed, and ``OUT/validation.md``): per scenario and failure, predicted
   against measured for detection, restart (stop + replacement + restart: from detection to
   the new process group), retrieval, lost progress, downtime and wasted time; then per phase
   the median |relative error| over the scenarios (each scenario's failures summed) against
   the targets (<= 10% per phase, <= 5% for downtime and wasted time), and the worst cases
   with the sub-phase that misses most.

``--repeat N`` measures each scenario N times (``real-<strategy>``, ``real-<strategy>-2``, ...,
one after the other). The prediction is then compared with the median of the runs, failure by
failure and phase by phase, and the table adds what the runs of one scenario say about the
machine itself: per phase, the median over the scenarios of the |relative difference| between
two of its runs (each scenario's failures summed; the median over every ordered pair of runs,
so with two runs the mean of A against B and B against A), the error a prediction that
equalled one run exactly would show against another. A phase whose runs differ by more than
its target cannot be validated to that target from one run.

Existing calibrations, predictions and real runs are kept (``--rerun`` redoes them), so an
interrupted run continues where it stopped. Expect 2-4 minutes per scenario on a loaded
2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.results import load_run  # noqa: E402
from gemini_ckpt.commands.run import ChildRun  # noqa: E402
from shared.scenario_loader import load_scenario  # noqa: E402
from shared.summary import FailureRecord  # noqa: E402

VALIDATION = REPO / "scenarios" / "validation"
REAL_TIMEOUT_S = 600.0

PHASES: tuple[tuple[str, str, float], ...] = (
    ("detection", "detection", 0.10),
    ("restart", "restart", 0.10),
    ("retrieval", "retrieval", 0.10),
    ("lost_progress", "lost progress", 0.10),
    ("downtime", "downtime", 0.05),
    ("wasted", "wasted time", 0.05),
)
"""(key, label, target median |relative error|) of the compared phases."""

SUB_PHASES = ("detection_s", "stop_s", "replacement_s", "restart_s", "retrieval_s")


def phase_value(record: FailureRecord, phase: str) -> float:
    """A phase of one failure, s; ``restart`` is everything from detection to the new group."""
    if phase == "restart":
        return record.stop_s + record.replacement_s + record.restart_s
    if phase == "lost_progress":
        return record.lost_progress_s
    return float(getattr(record, f"{phase}_s"))


def relative(predicted: float, measured: float) -> float | None:
    return (predicted - measured) / measured if measured > 0 else None


def median_record(records: Sequence[FailureRecord]) -> FailureRecord:
    """One failure measured several times: each timed field the median of the runs'; the
    rest (kind, nodes, tier, lost iterations) as the first run recorded it."""

    def median(name: str) -> float:
        return statistics.median(float(getattr(r, name)) for r in records)

    return replace(
        records[0],
        detection_s=median("detection_s"),
        stop_s=median("stop_s"),
        replacement_s=median("replacement_s"),
        restart_s=median("restart_s"),
        retrieval_s=median("retrieval_s"),
        lost_progress_s=median("lost_progress_s"),
        wasted_s=median("wasted_s"),
        downtime_s=median("downtime_s"),
    )


def netns_possible() -> str | None:
    """None when netns mode can run here, else why not."""
    if os.name != "posix" or os.geteuid() != 0:
        return "netns mode needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"netns mode needs `{tool}`"
    return None


def load_average() -> float:
    """The 1-minute load average of this machine."""
    return os.getloadavg()[0]


def product(args: Sequence[str], log: Path) -> int:
    """Run ``gemini-ckpt ARGS`` as a child, its output in ``log``; its exit code."""
    child = ChildRun(list(args), log)
    try:
        return child.process.wait(timeout=REAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.stop()
        return -1
    except KeyboardInterrupt:
        child.stop()
        raise
    finally:
        child.handle.close()


@dataclass
class Outcome:
    """One scenario: its runs compared failure by failure."""

    name: str
    strategy: str
    failures: list[tuple[FailureRecord, FailureRecord]] = field(default_factory=list)
    load: tuple[float, float] | None = None
    """The load average before and after the real runs this invocation measured (None when
    every run was kept from an earlier invocation, which did not record it)."""
    real_s: float = 0.0
    problem: str = ""
    iteration_s: float = 0.0  # the real run's median iteration (the runs' median with --repeat)
    runs: list[list[FailureRecord]] = field(default_factory=list)
    """With ``--repeat``: each measured run's records of ``failures``, in their order."""

    def total(self, phase: str, which: int) -> float:
        return sum(phase_value(pair[which], phase) for pair in self.failures)

    def error(self, phase: str) -> float | None:
        if not self.failures:
            return None
        return relative(self.total(phase, 0), self.total(phase, 1))

    def error_per_iteration(self, phase: str) -> float | None:
        """The error over max(measured, one measured iteration per failure): lost progress is
        whole iterations lost plus the part of one in flight, so a crash that loses none in
        both faces (0.00 s against 0.01 s) is not a -100% miss."""
        if not self.failures or self.iteration_s <= 0:
            return None
        floor = len(self.failures) * self.iteration_s
        predicted, measured = self.total(phase, 0), self.total(phase, 1)
        return (predicted - measured) / max(measured, floor)

    def error_against_run(self, phase: str, run: int) -> float | None:
        """The prediction's error (failures summed) against measured run ``run`` alone."""
        predicted = self.total(phase, 0)
        return relative(predicted, sum(phase_value(r, phase) for r in self.runs[run]))

    def runs_apart(self, phase: str) -> float | None:
        """The |relative difference| of the phase (failures summed) between two of this
        scenario's measured runs, the median over every ordered pair: what a prediction equal
        to one run would miss another by. None with fewer than two runs."""
        totals = [sum(phase_value(r, phase) for r in run) for run in self.runs]
        apart = [
            abs(d)
            for i, a in enumerate(totals)
            for j, b in enumerate(totals)
            if i != j and (d := relative(a, b)) is not None
        ]
        return statistics.median(apart) if len(self.runs) > 1 and apart else None

    def worst_sub_phase(self) -> str:
        """The sub-phase whose error moves the downtime most, with its figures."""
        errors = []
        for name in SUB_PHASES:
            predicted = sum(float(getattr(p, name)) for p, _ in self.failures)
            measured = sum(float(getattr(m, name)) for _, m in self.failures)
            errors.append((abs(predicted - measured), name, predicted, measured))
        _, name, predicted, measured = max(errors)
        return f"{name[:-2]} {predicted:.2f} s predicted, {measured:.2f} s measured"


def real_folder(folder: Path, strategy: str, run: int) -> Path:
    """The folder of a scenario's measured run ``run`` (1, 2, ...)."""
    return folder / (f"real-{strategy}" if run == 1 else f"real-{strategy}-{run}")


def run_scenario(
    path: Path, out: Path, calibration: Path, rerun: bool, profile: str, repeat: int = 1
) -> Outcome:
    loaded = load_scenario(path)
    strategy = loaded.checkpoint.strategy
    outcome = Outcome(loaded.name, strategy)
    folder = out / path.stem
    logs = out / "logs"
    sim_folder = folder / f"sim-{strategy}"
    folder.mkdir(parents=True, exist_ok=True)
    own = folder / "calibration.yaml"
    if rerun or not own.exists():
        # The machine's laws plus a failure-free profile of this configuration.
        args = ["calibrate", str(path), "--laws", str(calibration), "--profile", profile]
        code = product(
            [*args, "--out", str(own), "--dir", str(folder)], logs / f"{path.stem}-cal.log"
        )
        if code != 0:
            outcome.problem = f"calibrate exited {code}"
            return outcome
    code = 0
    if rerun or not (sim_folder / "summary.json").exists():  # a prediction made is kept
        code = product(
            [
                *("sim", str(path), "--calibration", str(own), "--load", "now"),
                *("--out", str(sim_folder)),
            ],
            logs / f"{path.stem}-sim.log",
        )
    if code != 0:
        outcome.problem = f"sim exited {code}"
        return outcome
    summaries = []
    for run in range(1, repeat + 1):
        measured_folder = real_folder(folder, strategy, run)
        if rerun and measured_folder.exists():
            shutil.rmtree(measured_folder)
        if not (measured_folder / "summary.json").exists():
            if measured_folder.exists():
                shutil.rmtree(measured_folder)
            log = logs / f"{path.stem}-real{'' if run == 1 else f'-{run}'}.log"
            before = load_average()
            began = time.monotonic()
            code = product(["real", str(path), "--out", str(measured_folder)], log)
            outcome.real_s += time.monotonic() - began
            after = load_average()
            outcome.load = (
                (before, after)
                if outcome.load is None
                else (min(outcome.load[0], before), max(outcome.load[1], after))
            )
            if code != 0:
                outcome.problem = f"real exited {code} (log: {log})"
                return outcome
        summaries.append(load_run(measured_folder).summary)
    predicted = load_run(sim_folder).summary.failures
    outcome.iteration_s = statistics.median(summary.iteration_time_s for summary in summaries)
    measured = [{f.index: f for f in summary.failures} for summary in summaries]
    matched = []
    for record in predicted:
        runs = [m[record.index] for m in measured if record.index in m]
        if len(runs) == len(measured) and all(r.complete for r in runs):
            matched.append((record, runs))
    outcome.failures = [(record, median_record(runs)) for record, runs in matched]
    if repeat > 1:
        outcome.runs = [[runs[i] for _, runs in matched] for i in range(repeat)]
    if len(outcome.failures) < len(predicted):
        unmatched = len(predicted) - len(outcome.failures)
        outcome.problem = f"{unmatched} failure(s) not matched" + (
            f" in all {repeat} runs" if repeat > 1 else ""
        )
    return outcome


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"


def tables(outcomes: Sequence[Outcome], skipped: dict[str, str]) -> str:
    """The Markdown tables: per failure, per phase medians and worst cases."""
    lines = [
        "| scenario | strategy | failure | tier (pred / meas) | "
        + " | ".join(label for _, label, _ in PHASES)
        + " |",
        "|---|---|---|---|" + "---|" * len(PHASES),
    ]
    for outcome in outcomes:
        if outcome.problem and not outcome.failures:
            lines.append(f"| {outcome.name} | {outcome.strategy} | {outcome.problem} |")
            continue
        for predicted, measured in outcome.failures:
            cells = []
            for key, _, _ in PHASES:
                p, m = phase_value(predicted, key), phase_value(measured, key)
                cells.append(f"{p:.2f} / {m:.2f} ({percent(relative(p, m))})")
            lines.append(
                f"| {outcome.name} | {outcome.strategy} | {measured.kind} {list(measured.nodes)}"
                f" | {predicted.tier} / {measured.tier} | " + " | ".join(cells) + " |"
            )
    repeats = max((len(o.runs) for o in outcomes), default=0)
    lines += [
        "",
        "Cells: predicted / measured seconds (relative error)"
        + (f"; measured: the median of {repeats} runs." if repeats > 1 else "."),
        "",
    ]
    if skipped:
        lines += ["Not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()), ""]
    compared = [o for o in outcomes if o.failures]
    lines += [
        f"Per phase over {len(compared)} scenarios (each scenario's failures summed):",
        "",
        "| phase | median abs error | target | worst scenario (error) | met |"
        + (" two runs apart (median) |" if repeats > 1 else ""),
        "|---|---|---|---|---|" + ("---|" if repeats > 1 else ""),
    ]
    for key, label, target in PHASES:
        errors = [(o.error(key), o) for o in compared]
        known = [(abs(e), o, e) for e, o in errors if e is not None]
        apart = [a for o in compared if (a := o.runs_apart(key)) is not None]
        extra = ""
        if repeats > 1:
            extra = f" {statistics.median(apart):.1%} |" if apart else " - |"
        if not known:
            lines.append(f"| {label} | - | <= {target:.0%} | - | - |{extra}")
            continue
        median = statistics.median(a for a, _, _ in known)
        worst = max(known, key=lambda item: item[0])
        lines.append(
            f"| {label} | {median:.1%} | <= {target:.0%} | {worst[1].name} ({worst[2]:+.0%}) | "
            f"{'yes' if median <= target else 'no'} |{extra}"
        )
    floored = [(o.error_per_iteration("lost_progress"), o) for o in compared]
    known_floored = [(abs(e), o, e) for e, o in floored if e is not None]
    if known_floored:
        median = statistics.median(a for a, _, _ in known_floored)
        worst = max(known_floored, key=lambda item: item[0])
        lines.append(
            f"| lost progress, over max(measured, one iteration per failure) | {median:.1%} | "
            f"<= 10% | {worst[1].name} ({worst[2]:+.0%}) | {'yes' if median <= 0.10 else 'no'} |"
            + (" - |" if repeats > 1 else "")
        )
    if repeats > 1:
        lines += [
            "",
            "Two runs apart: per phase, the median over the scenarios of the |relative "
            "difference| between two measured runs of one scenario (each scenario's failures "
            "summed), the error a prediction equal to one run would show against another.",
            "",
            "The same prediction against each run alone (median abs error per phase over the "
            "scenarios measured that many times), as a validation of one run would read it:",
            "",
            "| run | " + " | ".join(label for _, label, _ in PHASES) + " |",
            "|---|" + "---|" * len(PHASES),
        ]
        for run in range(repeats):
            cells = []
            for key, _, _ in PHASES:
                run_errors = [
                    abs(e)
                    for o in compared
                    if len(o.runs) > run and (e := o.error_against_run(key, run)) is not None
                ]
                cells.append(f"{statistics.median(run_errors):.1%}" if run_errors else "-")
            lines.append(f"| {run + 1} | " + " | ".join(cells) + " |")
    lines += ["", "Where each scenario's downtime misses most:", ""]
    for outcome in sorted(compared, key=lambda o: -abs(o.error("downtime") or 0.0)):
        spread = ""
        if len(outcome.runs) > 1:
            spread = "; its runs apart: " + ", ".join(
                f"{label} {'-' if (a := outcome.runs_apart(key)) is None else f'{a:.0%}'}"
                for key, label, _ in PHASES
            )
        lines.append(
            f"- {outcome.name}: downtime {percent(outcome.error('downtime'))}, "
            f"wasted {percent(outcome.error('wasted'))}; largest sub-phase miss: "
            f"{outcome.worst_sub_phase()}; "
            + (
                "its real runs kept from before (load average not recorded)"
                if outcome.load is None
                else f"load average {outcome.load[0]:.1f} -> {outcome.load[1]:.1f} during its "
                f"real run{'s' if outcome.runs else ''}"
            )
            + spread
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "validation")
    parser.add_argument("--only", nargs="*", help="Validation scenario names (file stems).")
    parser.add_argument("--calibration", type=Path, help="Reuse this calibration file.")
    parser.add_argument("--rerun", action="store_true", help="Delete earlier real runs first.")
    parser.add_argument("--no-netns", action="store_true", help="Skip the netns scenarios.")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="Measure each scenario N times, compare the prediction with the median of the "
        "runs and report how far two runs of one scenario are apart (default: 1).",
    )
    parser.add_argument(
        "--profile",
        choices=("run", "micro", "none"),
        default="micro",
        help="How each scenario's configuration is profiled without failures before it is "
        "simulated (gemini-ckpt calibrate --profile; default: micro; run adds a failure-free "
        "harness run of a minute or two per scenario; none leaves the iteration to the laws).",
    )
    options = parser.parse_args()
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    loads = [load_average()]
    calibration = options.calibration or out / "calibration.yaml"
    if not calibration.exists():
        print(f"1. calibration: gemini-ckpt calibrate --out {calibration}")
        code = product(
            ["calibrate", "--out", str(calibration), "--dir", str(out)], out / "logs" / "cal.log"
        )
        if code != 0:
            print(f"calibration failed (exit {code}); see {out / 'logs' / 'cal.log'}")
            return 1
    else:
        print(f"1. calibration: {calibration} (kept)")
    scenarios = sorted(VALIDATION.glob("*.yaml"))
    if options.only:
        scenarios = [s for s in scenarios if s.stem in options.only]
    outcomes: list[Outcome] = []
    skipped: dict[str, str] = {}
    print(f"2. {len(scenarios)} scenarios: simulated (calibrated) and measured")
    for path in scenarios:
        loaded = load_scenario(path)
        if loaded.real.mode == "netns":
            reason = "--no-netns" if options.no_netns else netns_possible()
            if reason:
                skipped[loaded.name] = reason
                print(f"  {path.stem}: skipped ({reason})")
                continue
        outcome = run_scenario(
            path, out, calibration, options.rerun, options.profile, options.repeat
        )
        loads.append(load_average())
        outcomes.append(outcome)
        print(
            f"  {path.stem}: downtime {percent(outcome.error('downtime'))}, wasted "
            f"{percent(outcome.error('wasted'))}"
            + (f", real {outcome.real_s:.0f} s" if outcome.real_s else "")
            + (f" ({outcome.problem})" if outcome.problem else "")
        )
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    report = "\n".join(
        [
            "# Validation: the simulator against the real harness",
            "",
            f"`.venv/bin/python benchmarks/validate.py --out {shown}"
            + (f" --repeat {options.repeat}`" if options.repeat > 1 else "`")
            + f" ({time.monotonic() - began:.0f} s; 1-minute load average "
            f"{min(loads):.1f}-{max(loads):.1f} while it ran, {os.cpu_count()} CPUs)",
            "",
            tables(outcomes, skipped),
        ]
    )
    (out / "validation.md").write_text(report, encoding="utf-8")
    print(report)
    failed = [o.name for o in outcomes if o.problem]
    if failed:
        print("problems: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    from gemini_ckpt.interrupts import run_script

    raise SystemExit(run_script(main))
