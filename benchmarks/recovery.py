"""Downtime per trainer crash and per lost node, phase by phase, over several failures.

    .venv/bin/python benchmarks/recovery.py [--out runs/recovery] [--runs N]
        [--compare OTHER_TREE] [--strategy gemini|persistent] [--store embedded|etcd]

Runs ``gemini-ckpt real scenarios/quickstart.yaml`` (4 emulated nodes x 1 rank, 2 warm standby
agents, the heartbeat lease 3 s) with a longer schedule of failures: four trainer crashes (one
per node) and two lost nodes (a live standby agent takes each slot, ``replacement_s`` 0.5 s),
a few iterations apart, and prints the median and the range of every recovery phase per kind
(detection, stop, replacement, restart, retrieval, downtime), how each was detected, and the
restart's parts as the trainers measured them (joining the group, wrapping the model, building
the checkpointer; the slowest rank). A lost node that ran the root agent is listed on its own:
nobody is left to probe it, so a survivor's agent probes the root's agent and revokes its
election lease, and the new root finds the node when it adopts the job.

``--compare OTHER_TREE`` runs the same from another source tree (a checkout of an earlier
commit, with this virtual environment) alternately with this one, ``--runs`` times each, and
prints both side by side: measured under the same load, minutes apart. The load average
(``uptime``) is printed with every run. One run takes 1-2 minutes on 2 cores.

``--store etcd`` coordinates the agents through etcd (``real.store: etcd``, an etcd on loopback
that the launcher starts, as on a real cluster where etcd is a service) instead of the embedded
store; it needs the ``etcd`` binary (Debian's etcd-server).
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
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCENARIO = "scenarios/quickstart.yaml"
SCHEDULE = (
    "[{kind: software, nodes: [1], at_iteration: 8},"
    " {kind: hardware, nodes: [3], at_iteration: 16},"
    " {kind: software, nodes: [2], at_iteration: 24},"
    " {kind: software, nodes: [0], at_iteration: 32},"
    " {kind: hardware, nodes: [1], at_iteration: 40},"
    " {kind: software, nodes: [3], at_iteration: 48}]"
)
SETTINGS = ("training.iterations=56", f"failures.schedule={SCHEDULE}")
PHASES = ("detection_s", "stop_s", "replacement_s", "restart_s", "retrieval_s", "downtime_s")
PARTS = ("join_s", "build_s", "checkpointer_s")


def load() -> str:
    """The load averages, as ``uptime`` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def real_run(tree: Path, out: Path, strategy: str, store: str = "embedded") -> Path:
    """One ``gemini-ckpt real`` run from the source tree ``tree``; its folder."""
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "gemini_ckpt", "real", SCENARIO, "--out", str(out)]
    for setting in (*SETTINGS, f"checkpoint.strategy={strategy}", f"real.store={store}"):
        command += ["--set", setting]
    if strategy == "persistent":
        command += ["--set", "checkpoint.baseline_every_iterations=6"]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        code = subprocess.call(command, cwd=tree, stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"the run in {tree} failed ({code}); see {log}")
    return out


def failures(run: Path) -> list[dict[str, Any]]:
    """The run's failures with their phases, how they were detected, the restart's parts."""
    summary = json.loads((run / "summary.json").read_text())
    detected: dict[int, str] = {}
    parts: dict[int, dict[str, float]] = defaultdict(dict)
    elections: list[tuple[float, int]] = []  # (time, the elected root's node id)
    injected: dict[int, tuple[float, list[int]]] = {}  # index -> (time, its node ids)
    for line in (run / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        details = event.get("details", {})
        if event["kind"] == "root_elected":
            elections.append((float(event["time_s"]), int(event["node"])))
        index = details.get("failure")
        if event["kind"] == "failure_injected" and index is not None:
            injected[int(index)] = (float(event["time_s"]), list(details.get("node_ids", [])))
        if index is None:
            continue
        if event["kind"] == "failure_detected":
            detected.setdefault(index, str(details.get("detected_by", "?")))
        if event["kind"] == "process_group_ready":
            for part in PARTS:
                if part in details:
                    parts[index][part] = max(parts[index].get(part, 0.0), float(details[part]))
    rows = []
    for failure in summary.get("failures") or []:
        index = int(failure["index"])
        kind = "trainer crash" if failure["kind"] == "software" else "lost node"
        when, node_ids = injected.get(index, (float(failure.get("time_s", 0.0)), []))
        roots = [node for at, node in sorted(elections) if at <= when]
        if kind == "lost node" and roots and roots[-1] in node_ids:
            kind = "lost node running the root"
        rows.append({**failure, **parts[index], "label": kind, "by": detected.get(index, "?")})
    return rows


def median(values: list[float]) -> str:
    if not values:
        return "-"
    text = f"{statistics.median(values):.2f}"
    return text if len(values) == 1 else f"{text} ({min(values):.2f}-{max(values):.2f})"


def table(rows_by_name: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| kind | tree | n | detected by | "
        + " | ".join(p[:-2] for p in PHASES)
        + " | restart parts: "
        + " / ".join(p[:-2] for p in PARTS)
        + " |",
        "|---" * (5 + len(PHASES)) + "|",
    ]
    labels = ("trainer crash", "lost node", "lost node running the root")
    for label in labels:
        for name, rows in rows_by_name.items():
            chosen = [r for r in rows if r["label"] == label]
            if not chosen:
                continue
            by = sorted({r["by"] for r in chosen})
            cells = [median([float(r[p]) for r in chosen if r.get(p) is not None]) for p in PHASES]
            restart_parts = " / ".join(
                median([float(r[p]) for r in chosen if p in r]).split(" ")[0] for p in PARTS
            )
            lines.append(
                f"| {label} | {name} | {len(chosen)} | {', '.join(by)} | "
                + " | ".join(cells)
                + f" | {restart_parts} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "recovery")
    parser.add_argument("--runs", type=int, default=1, help="runs per source tree")
    parser.add_argument("--compare", type=Path, help="another source tree, run alternately")
    parser.add_argument("--strategy", choices=("gemini", "persistent"), default="gemini")
    parser.add_argument(
        "--store",
        choices=("embedded", "etcd"),
        default="embedded",
        help="the agents' coordination store (etcd: an etcd on loopback, started by the run)",
    )
    options = parser.parse_args()
    trees = {"this": REPO}
    if options.compare is not None:
        trees = {"other": options.compare.resolve(), "this": REPO}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    loads = []
    for run in range(options.runs):
        for name, tree in trees.items():
            before = load()
            started = time.monotonic()
            folder = real_run(tree, options.out / f"{name}-{run}", options.strategy, options.store)
            after = load()
            found = failures(folder)
            rows[name] += found
            loads.append(
                f"{name} run {run}: {time.monotonic() - started:.0f} s; before: "
                f"{before}; after: {after}"
            )
            print(loads[-1], flush=True)
            for r in found:
                print(
                    f"  {r['label']:<28} by {r['by']:<6} "
                    + " ".join(
                        f"{p[:-2]} {float(r[p]):.2f}" for p in PHASES if r.get(p) is not None
                    )
                )
    text = "\n".join(
        [
            "# Recovery downtime per failure, by phase (medians, range in parentheses; s)",
            "",
            f"`.venv/bin/python benchmarks/recovery.py --runs {options.runs}"
            + (f" --compare {options.compare}" if options.compare else "")
            + (f" --store {options.store}" if options.store != "embedded" else "")
            + "`",
            "",
            f"`gemini-ckpt real {SCENARIO}` with "
            + ", ".join(f"`--set {s}`" for s in (*SETTINGS, f"real.store={options.store}")),
            "",
            table(rows),
            "",
            *[f"- {line}" for line in loads],
            "",
        ]
    )
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "recovery.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
