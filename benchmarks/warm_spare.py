"""What a warm spare trainer costs: resident memory and the time to become warm.

A node agent keeps, per local rank, an active trainer and a warm spare, both started ahead of
need: interpreter up, torch imported, an optimizer step taken once
(``real.trainer.inprocess.prewarm``).
This starts one of each kind the agents run, the built-in GPT trainer and a user's script
through the public ``Checkpointer`` (``examples/ddp_train.py``), exactly as an agent does
(``real.agent.trainer_processes.Worker``), waits until each says it is ready, and prints its
resident
memory (VmRSS) and how long it took. Run: ``.venv/bin/python benchmarks/warm_spare.py``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from real.agent.trainer_processes import TrainerSpec, Worker
from real.runtime.env import GEMINI_RUN_DIR, GEMINI_TOKEN

MB = 1 << 20


def measure(spec: TrainerSpec, repeats: int) -> tuple[float, float]:
    """Median (seconds to ready, resident MB) over ``repeats`` spares started one by one."""
    seconds, resident = [], []
    for _ in range(repeats):
        env = {GEMINI_TOKEN: secrets.token_hex(16), GEMINI_RUN_DIR: str(spec.run_dir)}
        started = time.monotonic()
        worker = Worker(spec, "bench", 0, env)
        try:
            if not worker.wait_until(lambda w=worker: w.state == "ready", 300.0):
                raise RuntimeError(f"the spare did not get warm; see {worker.log_path}")
            seconds.append(time.monotonic() - started)
            resident.append((worker.rss_bytes() or 0) / MB)
        finally:
            worker.stop(5.0)
    return statistics.median(seconds), statistics.median(resident)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gemini-spare-") as folder:
        run_dir = Path(folder)
        common = {
            "scenario": Path("scenarios/quickstart.yaml").resolve(),
            "overrides": (),
            "run_dir": run_dir,
            "checkpointer": "gemini",
            "world_size": 4,
            "per_node": 1,
        }
        kinds = {
            "built-in GPT trainer": TrainerSpec(**common),  # type: ignore[arg-type]
            "user script (examples/ddp_train.py)": TrainerSpec(
                **common,  # type: ignore[arg-type]
                entrypoint=("examples/ddp_train.py", "--out", str(run_dir / "out")),
            ),
        }
        print(f"{'warm spare':<38} {'to ready, s':>12} {'resident, MB':>13}")
        for name, spec in kinds.items():
            seconds, resident = measure(spec, args.repeats)
            print(f"{name:<38} {seconds:>12.2f} {resident:>13.0f}")


if __name__ == "__main__":
    main()
