"""What a warm spare trainer costs: resident memory and the time to become warm.

A node agent keeps, per local rank, an active trainer and ``recovery.warm_spares`` warm spares
(one by default), all started ahead of need: interpreter up, torch imported, an optimizer step
taken once (``real.trainer.inprocess.prewarm``).
This starts one of each kind the agents run, the built-in GPT trainer and a user's script
through the public ``Checkpointer`` (``examples/ddp_train.py``), exactly as an agent does
(``real.agent.trainer_processes.Worker``), waits until it says it is ready, and prints how long
that took and its resident memory (VmRSS). Then it starts a second one beside it and prints
the second's private memory (``/proc/PID/smaps_rollup``: what it maps that no other process
shares), the memory one more spare per rank adds to a node where a trainer of its kind already
runs: torch's libraries are shared between them through the page cache. Run:
``.venv/bin/python benchmarks/warm_spare.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from real.agent.trainer_processes import TrainerSpec, Worker
from real.runtime.env import GEMINI_RUN_DIR, GEMINI_TOKEN
from shared.scenario_loader import load_scenario

MB = 1 << 20


def private_bytes(pid: int) -> int | None:
    """Memory of ``pid`` that no other process maps (Linux: ``Private_Clean`` +
    ``Private_Dirty`` of ``/proc/PID/smaps_rollup``), or None."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in rollup if ":" in line)
    try:
        return sum(int(fields[key].split()[0]) * 1024 for key in ("Private_Clean", "Private_Dirty"))
    except (KeyError, ValueError, IndexError):
        return None


def _warm(spec: TrainerSpec) -> Worker:
    env = {GEMINI_TOKEN: secrets.token_hex(16), GEMINI_RUN_DIR: str(spec.run_dir)}
    worker = Worker(spec, "bench", 0, env)
    if not worker.wait_until(lambda w=worker: w.state == "ready", 300.0):
        worker.stop(5.0)
        raise RuntimeError(f"the spare did not get warm; see {worker.log_path}")
    return worker


def measure(spec: TrainerSpec, repeats: int) -> tuple[float, float, float]:
    """Medians over ``repeats`` of: seconds to ready and resident MB of a spare started alone,
    and private MB of a second started beside it."""
    seconds, resident, private = [], [], []
    for _ in range(repeats):
        started = time.monotonic()
        first = _warm(spec)
        try:
            seconds.append(time.monotonic() - started)
            resident.append((first.rss_bytes() or 0) / MB)
            second = _warm(spec)
            try:
                private.append((private_bytes(second.pid) or 0) / MB)
            finally:
                second.stop(5.0)
        finally:
            first.stop(5.0)
    return statistics.median(seconds), statistics.median(resident), statistics.median(private)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gemini-spare-") as folder:
        run_dir = Path(folder)
        quickstart = Path("scenarios/quickstart.yaml")
        spec = TrainerSpec.of_scenario(quickstart, (), load_scenario(quickstart), run_dir)
        kinds = {
            "built-in GPT trainer": spec,
            "user script (examples/ddp_train.py)": dataclasses.replace(
                spec, entrypoint=("examples/ddp_train.py", "--out", str(run_dir / "out"))
            ),
        }
        print(
            f"{'warm spare':<38} {'to ready, s':>12} {'resident, MB':>13} "
            f"{'a second one beside it, private MB':>35}"
        )
        for name, spec in kinds.items():
            seconds, resident, private = measure(spec, args.repeats)
            print(f"{name:<38} {seconds:>12.2f} {resident:>13.0f} {private:>35.0f}")


if __name__ == "__main__":
    main()
