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

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

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


Process = tuple[int, int]
"""(pid, start time in clock ticks since boot): a process, even once its pid is reused."""


def _descendants(root: int) -> dict[Process, tuple[bytes, bytes]]:
    """{(pid, start): (cmdline, environ)} of every live process below ``root``."""
    parents: dict[Process, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[(int(entry.name), int(fields[19]))] = int(fields[1])
            except (OSError, ValueError, IndexError):
                continue
    found: dict[Process, tuple[bytes, bytes]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for process, ppid in parents.items():
            pid = process[0]
            if ppid == parent and process not in found:
                try:
                    found[process] = (
                        Path(f"/proc/{pid}/cmdline").read_bytes(),
                        Path(f"/proc/{pid}/environ").read_bytes(),
                    )
                except OSError:
                    continue
                frontier.append(pid)
    return found


def test_no_secret_on_the_command_line_of_any_process_of_a_run(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    seen: dict[Process, tuple[bytes, bytes]] = {}
    done = threading.Event()
    earlier = set(_descendants(os.getpid()))

    def watch() -> None:
        while not done.wait(0.1):
            found = _descendants(os.getpid())
            seen.update((process, found[process]) for process in found.keys() - earlier)

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

    holders: dict[bytes, list[str]] = {}
    for (pid, _), (cmdline, environ) in sorted(seen.items()):
        if b"GEMINI_TOKEN=" in environ:
            token = environ.split(b"GEMINI_TOKEN=", 1)[1].split(b"\0", 1)[0]
            readable = cmdline.replace(b"\0", b" ").decode(errors="replace")[:160]
            holders.setdefault(token, []).append(f"pid {pid}: {readable}")
    tokens = set(holders)
    assert len(tokens) == 1, "one job secret expected, saw these holders of each:\n" + "\n".join(
        f"{token[:6]!r}...: " + "; ".join(pids) for token, pids in holders.items()
    )
    token = tokens.pop()
    secrets = [
        token,
        token[:16],
        derived_password(token.decode()).encode(),
        storage_secret(token.decode()).encode(),
    ]
    kinds = {
        kind
        for cmdline, _ in seen.values()
        for kind in (b"real.coord.kvserver", b"real.agent", b"real.engine.store", b"trainer")
        if kind in cmdline
    }
    # Every kind of process the run starts was seen, and it had the secret in its environment.
    assert kinds == {b"real.coord.kvserver", b"real.agent", b"real.engine.store", b"trainer"}
    for (pid, _), (cmdline, environ) in seen.items():
        readable = cmdline.replace(b"\0", b" ").decode(errors="replace")
        for secret in secrets:
            assert secret not in cmdline, f"pid {pid} has a secret on its command line: {readable}"
        if any(kind in cmdline for kind in kinds):
            assert b"GEMINI_TOKEN=" + token in environ, f"pid {pid} lacks the job secret"
    # The persistent tier's metadata is vouched for by the job's secret.
    tier = tmp_path / "run" / "persistent"
    sidecars = list(tier.glob("iter_*/.metadata.hmac"))
    assert sidecars and all(json.loads(p.read_text())["key"] == "GEMINI_TOKEN" for p in sidecars)
