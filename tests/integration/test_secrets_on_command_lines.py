"""No process of a local cluster run carries the job's secret on its command line.

A short run (2 nodes x 1 rank, embedded coordination store, persistence on) is watched while it
trains: every process descending from the test (the coordination store, the agents, their
node stores and trainers) is read from ``/proc/<pid>/cmdline`` and ``/proc/<pid>/environ``.
A process that was already there when the run started is not the run's: in a whole test session
an earlier test's process, with a secret of its own, may still be there (a leak, which that
test's own checks must catch, not this one).
The secret must reach them (it is in their environment) and must appear on no command line,
nor any secret derived from it. The launcher's own environment is restored after the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from running import live_descendants

from real.coord.etcd_kv import derived_password
from real.launcher.netns import storage_secret
from real.launcher.run import RealOptions, run_real

pytestmark = pytest.mark.timeout(600)

SCENARIO: dict[str, Any] = {
    "name": "secrets-test",
    "targets": ["real"],
    "seed": 0,
    "cluster": {"nodes": 2, "accelerators_per_node": 1, "standby_nodes": 0},
    "model": {"layers": 1, "hidden": 16, "heads": 2, "context": 16},
    "training": {"iterations": 8, "batch_size_per_rank": 2},
    "checkpoint": {"strategy": "gemini", "replicas": 2, "persist_every_iterations": 4},
    "failures": {"schedule": []},
    "real": {"timeout_s": 240, "store": "embedded"},
}


def test_no_secret_on_the_command_line_of_any_process_of_a_run(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    # {(pid, start time): (command line, environment)}, read again at every look: a child seen
    # between its fork and its exec still shows its parent's.
    seen: dict[tuple[int, float], tuple[str, dict[str, str]]] = {}
    done = threading.Event()
    earlier = live_descendants().keys()

    def watch() -> None:
        while not done.wait(0.1):
            for key, process in live_descendants().items():
                if key not in earlier:
                    with contextlib.suppress(psutil.Error):
                        seen[key] = (" ".join(process.cmdline()), process.environ())

    watcher = threading.Thread(target=watch, daemon=True)
    outer = os.environ.get("GEMINI_TOKEN")
    watcher.start()
    try:
        result = run_real(RealOptions(path, tmp_path / "run"))
    finally:
        done.set()
        watcher.join(10)
    assert os.environ.get("GEMINI_TOKEN") == outer
    assert result.summary.extra.get("final_digest")

    holders: dict[str, list[str]] = {}
    for (pid, _), (cmdline, environ) in sorted(seen.items()):
        if "GEMINI_TOKEN" in environ:
            holders.setdefault(environ["GEMINI_TOKEN"], []).append(f"pid {pid}: {cmdline[:160]}")
    assert len(holders) == 1, "one job secret expected, saw these holders of each:\n" + "\n".join(
        f"{token[:6]}...: " + "; ".join(pids) for token, pids in holders.items()
    )
    (token,) = holders
    secrets = [token, token[:16], derived_password(token), storage_secret(token)]
    names = ("real.coord.kvserver", "real.agent", "real.engine.store", "trainer")
    kinds = {kind for cmdline, _ in seen.values() for kind in names if kind in cmdline}
    # Every kind of process the run starts was seen, and it had the secret in its environment.
    assert kinds == set(names)
    for (pid, _), (cmdline, environ) in seen.items():
        for secret in secrets:
            assert secret not in cmdline, f"pid {pid} has a secret on its command line: {cmdline}"
        if any(kind in cmdline for kind in kinds):
            assert environ.get("GEMINI_TOKEN") == token, f"pid {pid} lacks the job secret"
    # The persistent tier's metadata is vouched for by the job's secret.
    tier = tmp_path / "run" / "persistent"
    sidecars = list(tier.glob("iter_*/.metadata.hmac"))
    assert sidecars and all(json.loads(p.read_text())["key"] == "GEMINI_TOKEN" for p in sidecars)
