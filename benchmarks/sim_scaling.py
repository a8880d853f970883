"""Simulator speed: simulated days per wall second for 100, 1,000 and 10,000 nodes.

The issue's target: 1,000 nodes, 30 simulated days, 1.5% of nodes failing per day, Gemini
checkpoints every iteration, in under 10 s of wall time per replication on a 2-core machine.
Run: ``.venv/bin/python benchmarks/sim_scaling.py [--days 30]``.
"""

from __future__ import annotations

import argparse
import time

from shared.scenario_loader import load_scenario
from sim import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--nodes", type=int, nargs="*", default=[100, 1000, 10000])
    args = parser.parse_args()
    print(f"{'nodes':>7} {'failures':>9} {'wall s':>8} {'sim days / wall s':>18} {'ETTR':>7}")
    for nodes in args.nodes:
        scenario = load_scenario(
            "scenarios/cluster-1000.yaml",
            [
                f"cluster.nodes={nodes}",
                f"sim.duration_days={args.days}",
                f"cluster.standby_nodes={max(2, nodes // 50)}",
            ],
        )
        start = time.perf_counter()
        summary = simulate(scenario).summary
        wall = time.perf_counter() - start
        print(
            f"{nodes:>7} {len(summary.failures):>9} {wall:>8.2f} {args.days / wall:>18.1f} "
            f"{summary.ettr:>7.4f}"
        )


if __name__ == "__main__":
    main()
