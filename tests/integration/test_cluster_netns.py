"""The emulated cluster in ``netns`` mode (root, Linux): namespaces, bridge, tc limits.

One run with a lost node and a network partition; the final weights must equal the local
mode's failure-free run of the same scenario, and no namespace, process or shared-memory
segment may remain.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_cluster import (  # noqa: F401 - shared session fixtures
    check_tiers_follow_plans,
    leftovers,
    reference,
    runs_dir,
    scenario_file,
)

from real.launcher.netns import netns_available
from real.launcher.run import RealOptions, run_real

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]


def test_netns_hardware_and_partition(runs_dir: Path, reference: dict[str, Any]) -> None:  # noqa: F811
    why = netns_available()
    if why is not None:
        pytest.skip(why)
    path = scenario_file(
        runs_dir,
        "netns",
        [
            {"kind": "hardware", "nodes": [1], "at_iteration": 6},
            {"kind": "network", "nodes": [2], "at_iteration": 14},
        ],
    )
    result = run_real(RealOptions(path, runs_dir / "netns", mode="netns"))
    assert result.summary.extra["mode"] == "netns"
    assert result.summary.iterations_completed == 30
    assert [r.complete for r in result.summary.failures if r.index < 1000] == [True, True]
    assert result.digest == reference["extra"]["final_digest"]
    check_tiers_follow_plans(result)
    pids, shm = leftovers(result)
    assert not pids and not shm
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    short = result.job.split("-")[-1][:5]
    assert short not in namespaces
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"g{short}" not in links
