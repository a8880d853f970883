"""Adaptive checkpoint interval on slow links: iteration overhead and wasted time, measured and
simulated.

    sudo .venv/bin/python benchmarks/adaptive_interval.py [--out runs/adaptive-interval]

On ``scenarios/headline.yaml`` (4 emulated nodes, the 3.2M-parameter GPT, 39 MB of state per
rank) in netns mode (root: a namespace per node, tc limits) with every link at 0.5 Gbit/s, no
persistence, and one lost node (node 2 after iteration ``--fail-at``), three real runs one after
the other, each ``gemini-ckpt real`` of this source tree:

1. ``checkpoint.interval: 1``: a checkpoint every iteration, as Gemini does by default; one
   copy of 39 MB takes 0.6 s at 0.5 Gbit/s, longer than an iteration's idle time, so the next
   ``save()`` waits for the spill;
2. ``checkpoint.interval: adaptive``: k chosen online (``shared.adaptive``) from the profiled
   idle spans and the measured replication throughput.
3. the same with ``checkpoint.compression: auto``: the engine measures the codec on the state
   and compresses the chunks when the link is the bottleneck (``shared.compression``).

For each: the mean iteration time over the iterations after profiling and before the failure
(the mean, not the median: with k > 1 the waits gather at the checkpoint iterations), the step
alone (``step_s``, forward/backward/optimizer: the iteration without checkpointing), the
overhead, the k the ranks agreed on (``ckpt_interval_changed``), and the lost node's wasted
time (lost progress + retrieval) and restored iteration. Then the simulator on the same
scenario and settings, fed what the engine measured when it chose k (its iteration, idle time
and replication throughput, and the codec's ratio and speed): the k it chooses and the wasted
time it predicts, beside the measured ones. Written to ``OUT/report.md``. Existing run folders
are kept (``--rerun`` deletes them first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import headline  # noqa: E402
from benchmarks.headline import load  # noqa: E402
from shared.events import read_events  # noqa: E402
from shared.scenario_loader import load_scenario  # noqa: E402

SCENARIO = REPO / "scenarios" / "headline.yaml"
REAL_TIMEOUT_S = 900.0


def settings(options: argparse.Namespace, interval: str, compression: str = "off") -> list[str]:
    return [
        f"checkpoint.compression={compression}",
        f"real.mode={options.mode}",
        f"cluster.network_bandwidth_gbit_s={options.gbit_s}",
        "checkpoint.persist_every_iterations=null",
        f"checkpoint.interval={interval}",
        f"training.iterations={options.iterations}",
        f"failures.schedule=[{{kind: hardware, nodes: [2], at_iteration: {options.fail_at}}}]",
    ]


def real_run(folder: Path, overrides: list[str], logs: Path) -> bool:
    return headline.real_run(SCENARIO, folder, overrides, logs, timeout_s=REAL_TIMEOUT_S)


def measured(folder: Path, first: int, last: int) -> dict[str, Any]:
    """Iteration times of rank 0 over iterations ``first..last`` of the first attempt, the
    agreed k, and the failure's wasted time."""
    events = read_events(folder / "events.jsonl")
    durations, steps, ks = [], [], []
    inputs: dict[str, Any] = {}
    codec: dict[str, Any] = {}
    seen: set[int] = set()
    failed_s = min((e.time_s for e in events if e.kind == "failure_injected"), default=None)
    for event in events:
        if event.rank != 0 or event.iteration is None:
            continue
        before_failure = failed_s is None or event.time_s < failed_s
        if event.kind == "iteration_end" and first <= event.iteration <= last:
            if event.iteration in seen:  # a recomputed iteration after the failure
                continue
            seen.add(event.iteration)
            durations.append(float(event.details["duration_s"]))  # type: ignore[arg-type]
            steps.append(float(event.details["step_s"]))  # type: ignore[arg-type]
        if event.kind == "ckpt_compression" and event.details.get("ratio") and before_failure:
            codec = dict(event.details)
        if event.kind == "ckpt_interval_changed" and before_failure:
            ks.append((event.iteration, event.details.get("interval")))
            inputs = dict(event.details)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    failures = summary.get("failures") or []
    lost: dict[str, Any] = next((f for f in failures if f.get("kind") == "hardware"), {})
    mean, step = statistics.fmean(durations), statistics.median(steps)
    return {
        "iterations": len(durations),
        "mean_s": mean,
        "median_s": statistics.median(durations),
        "step_s": step,
        "overhead": mean / step - 1,
        "k": [k for _, k in ks],
        "k_at": [i for i, _ in ks],
        "wasted_s": lost.get("wasted_s"),
        "lost_iterations": lost.get("lost_iterations"),
        "retrieval_s": lost.get("retrieval_s"),
        "restored": lost.get("restored_iteration"),
        "inputs": inputs,  # what the engine chose its k from (ckpt_interval_changed)
        "codec": codec,  # the codec measured on the state (ckpt_compression)
    }


def simulated(
    overrides: list[str], inputs: dict[str, Any], codec: dict[str, Any]
) -> dict[str, Any]:
    """The simulator on the same settings, fed what the engine measured when it chose k: one
    iteration's training time and idle time (as a compute phase and a communication phase) and
    the replication throughput (as the links' bandwidth)."""
    from sim import simulate
    from sim.model import build_model

    iteration_s, idle_s = float(inputs["iteration_s"]), float(inputs["idle_s"])
    busy_s = max(iteration_s - idle_s, 1e-3)
    sim_overrides = [
        *[o for o in overrides if not o.startswith("real.")],
        f"training.phases=[{{kind: compute, duration_s: {idle_s:.6g}}}, "
        f"{{kind: communication, duration_s: {busy_s:.6g}}}]",
        f"cluster.network_bandwidth_gbit_s={float(inputs['throughput_bytes_per_s']) * 8e-9:.6g}",
    ]
    if codec:  # the ratio and the slower of the codec's two throughputs, as measured
        speed = min(float(codec["compress_bytes_per_s"]), float(codec["decompress_bytes_per_s"]))
        sim_overrides += [
            f"checkpoint.compression_ratio={float(codec['ratio']):.6g}",
            f"checkpoint.compression_gbyte_s={speed / 1e9:.6g}",
        ]
    scenario = load_scenario(SCENARIO, sim_overrides)
    model = build_model(scenario)
    result = simulate(scenario)
    lost = next((f for f in result.summary.failures if f.kind == "hardware"), None)
    base_s = idle_s + busy_s
    return {
        "k": model.strategy.checkpoint_every,
        "iteration_s": model.strategy.mean_iteration_s,
        "overhead": model.strategy.mean_iteration_s / base_s - 1,
        "wasted_s": None if lost is None else lost.wasted_s,
        "lost_iterations": None if lost is None else lost.lost_iterations,
        "restored": None if lost is None else lost.restored_iteration,
    }


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "adaptive-interval")
    parser.add_argument("--rerun", action="store_true", help="Delete earlier real runs first.")
    parser.add_argument("--mode", choices=["netns", "local"], default="netns")
    parser.add_argument("--gbit-s", type=float, default=0.5, help="every node's link")
    parser.add_argument("--iterations", type=int, default=36)
    parser.add_argument("--fail-at", type=int, default=26, help="node 2 is lost after this")
    parser.add_argument(
        "--skip", type=int, default=8, help="first iterations left out (profiling, warm-up)"
    )
    options = parser.parse_args()
    if options.mode == "netns" and os.geteuid() != 0:
        print("netns mode needs root (network namespaces, tc): run with sudo or --mode local")
        return 2
    out: Path = options.out
    if options.rerun and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    loads = [f"start: {load()}"]
    # name: (interval, compression, folder)
    runs = {
        "every iteration": ("1", "off", "real-1"),
        "adaptive": ("adaptive", "off", "real-adaptive"),
        "adaptive, compression auto": ("adaptive", "auto", "real-adaptive-auto"),
    }
    rows: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    print("real runs (gemini-ckpt real, one after the other)", flush=True)
    for name, (interval, compression, folder_name) in runs.items():
        folder = out / folder_name
        if not real_run(folder, settings(options, interval, compression), logs):
            print(f"the {name} run failed; see {logs}")
            return 1
    loads.append(f"end of the real runs: {load()}")
    reals = {
        name: measured(out / folder, options.skip + 1, options.fail_at)
        for name, (_, _, folder) in runs.items()
    }
    inputs = reals["adaptive"]["inputs"]
    if not inputs:
        print("the adaptive run never changed k: nothing to feed the simulator")
        return 1
    for name, (interval, compression, _) in runs.items():
        real = reals[name]
        fed = real["inputs"] or inputs
        rows[name] = (real, simulated(settings(options, interval, compression), fed, real["codec"]))
    every = rows["every iteration"][0]
    lines = [
        "# Adaptive checkpoint interval on 0.5 Gbit/s links (measured and simulated)",
        "",
        f"`sudo .venv/bin/python benchmarks/adaptive_interval.py --out {options.out}`: "
        f"`scenarios/headline.yaml` in {options.mode} mode, links at {options.gbit_s} Gbit/s, "
        f"{options.iterations} iterations, node 2 lost after iteration {options.fail_at}; "
        f"iteration times of rank 0 over iterations {options.skip + 1}-{options.fail_at} "
        "(mean of `duration_s`; the step alone is the median `step_s`). The simulator is fed "
        "what the adaptive run's engine measured when it chose k: iteration "
        f"{float(inputs['iteration_s']):.3f} s with {float(inputs['idle_s']):.3f} s idle, "
        f"replication at {float(inputs['throughput_bytes_per_s']) / 1e6:.1f} MB/s; its "
        "overhead is against that iteration.",
        "",
        "| interval | k measured (sim) | iteration s: mean (median) | step s | overhead "
        "measured (sim) | vs every iteration | lost node: wasted s measured (sim) | lost "
        "iterations (sim) | restored (sim) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (real, sim) in rows.items():
        k = real["k"][-1] if real["k"] else 1
        lines.append(
            f"| {name} | {k} ({sim['k']}) | {_f(real['mean_s'], 3)} ({_f(real['median_s'], 3)}) "
            f"| {_f(real['step_s'], 3)} | {real['overhead']:+.1%} ({sim['overhead']:+.1%}) | "
            f"{real['mean_s'] / every['mean_s'] - 1:+.1%} | {_f(real['wasted_s'])} "
            f"({_f(sim['wasted_s'])}) | {real['lost_iterations']} ({sim['lost_iterations']}) | "
            f"{real['restored']} ({sim['restored']}) |"
        )
    lines.append("")
    for name, (real, _) in rows.items():
        if real["k"]:
            changes = zip(real["k_at"], real["k"], strict=True)
            lines.append(
                f"k changes (iteration: k), {name}: " + ", ".join(f"{i}: {k}" for i, k in changes)
            )
        if real["codec"]:
            codec = real["codec"]
            lines.append(
                f"codec, {name}: ratio {float(codec['ratio']):.3f}, compress "
                f"{float(codec['compress_bytes_per_s']) / 1e6:.0f} MB/s, decompress "
                f"{float(codec['decompress_bytes_per_s']) / 1e6:.0f} MB/s: "
                f"{'on' if codec.get('enabled') else 'off'} ({codec.get('reason')})"
            )
    lines += [
        "",
        "Load (`uptime`): " + "; ".join(loads) + ".",
        "",
    ]
    text = "\n".join(lines)
    (out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
