"""The README's headline: Gemini against the persistent-storage baseline, measured.

    .venv/bin/python benchmarks/headline.py [--out runs/headline] [--rerun]

On ``scenarios/headline.yaml`` (4 emulated nodes, a 3.2M-parameter GPT, shared storage at
0.2 Gbit/s emulated in the application; a trainer crash, a lost node, two nodes at once in
different groups), one real run at a time (5-6 minutes on 2 cores):

1. **probe**: the baseline without failures (15 iterations, a save every 5) measures its
   blocking save ``t_save`` and its iteration ``T_iter``; the baseline's interval is the
   HighFreq rule ``K = ceil(t_save / T_iter)`` (``validate.highfreq_interval``, the code
   ``benchmarks/validate.py`` uses). Unless ``--no-sim``, Gemini without failures (15
   iterations) measures its own iteration, checkpoint included: on a host without
   accelerators the capture and the replication take CPU from training, so it is longer
   than ``T_iter``;
2. ``gemini-ckpt real`` with Gemini, then with the baseline saving every K iterations;
3. the simulator on the same scenario for both, with this machine's recovery costs from the
   micro-benchmarks ``gemini-ckpt run`` calibrates with (``OUT/calibration.yaml``, measured
   before the real runs) and each strategy's probed iteration (``training.iteration_time_s``;
   the baseline's saves block for the state over the storage's bandwidth, as the harness's
   synchronous writes do): its prediction beside the measurement;
4. the table (wasted time and downtime per failure, speedups, tiers) printed and written to
   ``OUT/headline.md`` with the commands.

Existing real-run folders are kept (``--rerun`` deletes them first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.costs import highfreq_interval_iterations  # noqa: E402
from shared.events import read_events  # noqa: E402
from shared.scenario_loader import load_scenario  # noqa: E402

SCENARIO = REPO / "scenarios" / "headline.yaml"
LABELS = {"software": "trainer crash", "hardware": "lost node"}
REAL_TIMEOUT_S = 600.0


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def real_run(
    scenario: Path,
    folder: Path,
    settings: list[str],
    logs: Path,
    timeout_s: float = REAL_TIMEOUT_S,
) -> bool:
    """One ``gemini-ckpt real`` run (this source tree); True when it succeeded or had."""
    if (folder / "summary.json").exists():
        print(f"  {folder.name}: kept from an earlier run", flush=True)
        return True
    if folder.exists():
        shutil.rmtree(folder)
    command = [sys.executable, "-m", "gemini_ckpt", "real", str(scenario), "--out", str(folder)]
    for setting in settings:
        command += ["--set", setting]
    logs.mkdir(parents=True, exist_ok=True)
    before, began = load(), time.monotonic()
    with open(logs / f"{folder.name}.log", "w") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(60)
            code = -1
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM taken as one: the run stops too
            process.terminate()  # its cluster's teardown is bounded (real.launcher.run)
            process.wait(60)
            raise
    print(
        f"  {folder.name}: exit {code}, {time.monotonic() - began:.0f} s "
        f"({before} before, {load()} after)",
        flush=True,
    )
    return code == 0


def sim_run(scenario: Path, folder: Path, settings: list[str]) -> None:
    from sim import simulate, write_result

    write_result(simulate(load_scenario(scenario, settings)), folder)


def highfreq_interval(run_folders: list[Path]) -> tuple[int, float, float]:
    """(K, t_save, T_iter) of the HighFreq rule from measured baseline runs (medians)."""
    saves, iterations = [], []
    for folder in run_folders:
        for event in read_events(folder / "events.jsonl"):
            seconds = event.details.get("seconds")
            if event.kind == "persist_done" and isinstance(seconds, int | float):
                saves.append(float(seconds))
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        iterations.append(summary.get("iteration_time_no_ckpt_s") or summary["iteration_time_s"])
    t_save, iteration = statistics.median(saves), statistics.median(iterations)
    return highfreq_interval_iterations(t_save, iteration), t_save, iteration


def probe_iteration(folder: Path) -> float:
    """A failure-free run's median iteration, its checkpoint included, s."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return float(summary["iteration_time_s"])


def failures(folder: Path) -> list[dict[str, Any]]:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return sorted(summary.get("failures") or [], key=lambda f: int(f["index"]))


def label(failure: dict[str, Any]) -> str:
    nodes = failure.get("nodes") or []
    if failure.get("kind") == "hardware" and len(nodes) > 1:
        return f"two nodes at once ({', '.join(map(str, nodes))})"
    text = LABELS.get(str(failure.get("kind")), str(failure.get("kind")))
    return f"{text} ({', '.join(map(str, nodes))})" if nodes else text


def _s(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f} s"


def _x(baseline: Any, gemini: Any) -> str:
    if baseline is None or gemini is None or float(gemini) <= 0:
        return "-"
    return f"{float(baseline) / float(gemini):.1f}x"


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def table(measured: dict[str, Path], simulated: dict[str, Path]) -> str:
    gemini, baseline = failures(measured["gemini"]), failures(measured["baseline"])
    sim_g, sim_b = (failures(simulated[k]) if simulated else [] for k in ("gemini", "baseline"))
    lines = [
        "| failure | wasted Gemini | wasted baseline | speedup | downtime Gemini "
        "| downtime baseline | speedup | tier Gemini / baseline "
        "| sim wasted Gemini / baseline (speedup) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, g: dict[str, Any], b: dict[str, Any], sg: Any, sb: Any, tiers: str) -> str:
        sim = "-"
        if sg and sb:
            sim = (
                f"{_s(sg.get('wasted_s'))} / {_s(sb.get('wasted_s'))} "
                f"({_x(sb.get('wasted_s'), sg.get('wasted_s'))})"
            )
        return (
            f"| {name} | {_s(g.get('wasted_s'))} | {_s(b.get('wasted_s'))} "
            f"| {_x(b.get('wasted_s'), g.get('wasted_s'))} | {_s(g.get('downtime_s'))} "
            f"| {_s(b.get('downtime_s'))} | {_x(b.get('downtime_s'), g.get('downtime_s'))} "
            f"| {tiers} | {sim} |"
        )

    for i, (g, b) in enumerate(zip(gemini, baseline, strict=False)):
        sg = sim_g[i] if i < len(sim_g) else None
        sb = sim_b[i] if i < len(sim_b) else None
        lines.append(row(label(g), g, b, sg, sb, f"{g.get('tier')} / {b.get('tier')}"))
    means = {k: _mean(gemini, k) for k in ("wasted_s", "downtime_s")}
    bmeans = {k: _mean(baseline, k) for k in ("wasted_s", "downtime_s")}
    smeans = [{"wasted_s": _mean(s, "wasted_s")} if s else None for s in (sim_g, sim_b)]
    lines.append(row("**mean per failure**", means, bmeans, smeans[0], smeans[1], ""))
    return "\n".join(lines)


def phases(folder: Path) -> str:
    parts = []
    for f in failures(folder):
        bits = [
            f"{k[:-2]} {float(f[k]):.2f}"
            for k in (
                "detection_s",
                "stop_s",
                "replacement_s",
                "restart_s",
                "retrieval_s",
                "lost_progress_s",
            )
            if f.get(k) is not None
        ]
        parts.append(f"{label(f)}: " + ", ".join(bits) + f" (lost {f.get('lost_iterations')} it.)")
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "headline")
    parser.add_argument("--rerun", action="store_true", help="Delete earlier real runs first.")
    parser.add_argument(
        "--no-sim", action="store_true", help="Only the real runs: no calibration, no simulator."
    )
    options = parser.parse_args()
    out: Path = options.out
    if options.rerun and out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    out.mkdir(parents=True, exist_ok=True)
    loads = [f"start: {load()}"]

    costs: list[str] = []
    if not options.no_sim:
        print("0. calibrate: micro-benchmarks of an in-process recovery on this machine")
        from gemini_ckpt.commands.run import calibrate_machine

        calibration = calibrate_machine(SCENARIO, [], out)
        costs = [o for o in calibration["overrides"] if not o.startswith("training.")]
        print("   " + " ".join(costs))

    print(
        "1. probes without failures: the baseline's t_save and T_iter"
        + ("" if options.no_sim else ", Gemini's iteration")
    )
    probe = out / "probe-baseline"
    failure_free = ["training.iterations=15", "failures.schedule=[]"]
    probe_settings = [
        "checkpoint.strategy=persistent",
        "checkpoint.baseline_every_iterations=5",
        *failure_free,
    ]
    if not real_run(SCENARIO, probe, probe_settings, logs):
        print("the probe run failed; see " + str(logs))
        return 1
    k, t_save, t_iter = highfreq_interval([probe])
    rule = (
        f"K = ceil(t_save / T_iter) = ceil({t_save:.2f} s / {t_iter:.3f} s) = {k} iterations "
        "(the HighFreq rule; medians of the probe run)"
    )
    print(f"   baseline interval: {rule}")
    gemini_iteration = ""
    t_iter_gemini = t_iter
    if not options.no_sim:
        # The simulator's network model does not see the checkpoint's CPU work on this host:
        # Gemini's iteration is measured as it runs, by a failure-free run, never the compared one.
        probe_gemini = out / "probe-gemini"
        if not real_run(SCENARIO, probe_gemini, failure_free, logs):
            print("the Gemini probe run failed; see " + str(logs))
            return 1
        t_iter_gemini = probe_iteration(probe_gemini)
        gemini_iteration = (
            f"Gemini's iteration with its checkpoint: {t_iter_gemini:.3f} s "
            f"({t_iter_gemini / t_iter - 1:+.0%} on T_iter; median of its probe run)"
        )
        print(f"   {gemini_iteration}")

    print("2. real runs")
    baseline_settings = [
        "checkpoint.strategy=persistent",
        f"checkpoint.baseline_every_iterations={k}",
    ]
    measured = {"gemini": out / "real-gemini", "baseline": out / "real-baseline"}
    failed = [
        name
        for name, settings in (("gemini", []), ("baseline", baseline_settings))
        if not real_run(SCENARIO, measured[name], settings, logs)
    ]
    if failed:
        print("failed real runs: " + ", ".join(failed) + f"; see {logs}")
        return 1

    loads.append(f"end of the real runs: {load()}")
    simulated: dict[str, Path] = {}
    if not options.no_sim:
        print("3. simulator (this machine's recovery costs, each strategy's probed iteration)")
        # The harness's save is one synchronous write (no separate upload), so the simulator's
        # save blocks for the state over the storage's bandwidth: t_save sets only K.
        simulated = {"gemini": out / "sim-gemini", "baseline": out / "sim-baseline"}
        sim_run(
            SCENARIO,
            simulated["gemini"],
            [*costs, f"training.iteration_time_s={t_iter_gemini:.6g}"],
        )
        sim_run(
            SCENARIO,
            simulated["baseline"],
            [*baseline_settings, *costs, f"training.iteration_time_s={t_iter:.6g}"],
        )

    command = "`.venv/bin/python benchmarks/headline.py"
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    command += "" if shown == Path("runs/headline") else f" --out {shown}"
    command += " --no-sim`" if options.no_sim else "`"
    text = "\n".join(
        [
            "# Headline: Gemini vs the persistent-storage baseline (emulated 4-node cluster)",
            "",
            command,
            "",
            f"Scenario `scenarios/headline.yaml`; baseline interval: {rule}."
            + (f" {gemini_iteration}." if gemini_iteration else ""),
            "",
            table(measured, simulated),
            "",
            "Phases (s), Gemini: " + phases(measured["gemini"]),
            "",
            "Phases (s), baseline: " + phases(measured["baseline"]),
            "",
            "Real runs: `gemini-ckpt real scenarios/headline.yaml --out OUT/real-gemini` and "
            f"`gemini-ckpt real scenarios/headline.yaml --out OUT/real-baseline "
            f"--set checkpoint.strategy=persistent --set "
            f"checkpoint.baseline_every_iterations={k}`.",
            "",
            "Load (`uptime`): " + "; ".join(loads) + ".",
            "",
        ]
    )
    (out / "headline.md").write_text(text, encoding="utf-8")
    print(text)
    print(out / "headline.md")
    return 0


if __name__ == "__main__":
    from gemini_ckpt.interrupts import run_script

    raise SystemExit(run_script(main))
