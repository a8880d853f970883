"""The trainer processes of one node, started with torchrun's environment.

A node agent starts one trainer per accelerator (``python -m real.trainer_main``) through
torch.distributed.elastic's ``SubprocessHandler`` (the piece torchrun itself uses: a new
session per trainer, output redirected to files, the whole process group signalled on close).
Every attempt gets the rendezvous address the root chose for it: a fresh ``MASTER_PORT`` per
attempt, and ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, so a restart never reads a previous
attempt's stale addresses (pytorch#135712).

Environment of each trainer: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``GROUP_RANK`` and ``GEMINI_NODE`` (the node's slot), ``MASTER_ADDR``, ``MASTER_PORT``,
``GEMINI_STORE_ADDRS``, ``GEMINI_TOKEN``, ``GEMINI_RESTORE_PLAN`` (the root's plan),
``GEMINI_RUN_DIR``, ``GEMINI_RUN_T0``, ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.subprocess_handler import SubprocessHandler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerSpec:
    """What every trainer of the job runs (the same on every node).

    Attributes:
        scenario: the scenario file.
        overrides: ``key=value`` overrides of the scenario.
        run_dir: the run's folder.
        checkpointer: gemini or persistent.
        world_size: ranks in the job.
        per_node: ranks per node.
        timeout_s: collective timeout of the trainers, s.
    """

    scenario: Path
    overrides: tuple[str, ...]
    run_dir: Path
    checkpointer: str
    world_size: int
    per_node: int
    timeout_s: float = 120.0

    def command(self) -> list[str]:
        arguments = [
            "-m",
            "real.trainer_main",
            str(self.scenario),
            "--out",
            str(self.run_dir),
            "--checkpointer",
            self.checkpointer,
            "--timeout-s",
            str(self.timeout_s),
        ]
        for override in self.overrides:
            arguments += ["--set", override]
        return arguments


class TrainerGroup:
    """The trainers of one node for one attempt; owned by the node agent.

    Args:
        spec: the job's trainer settings.
        slot: the node's place in the job.
        attempt: the attempt number (logs are per attempt).
        env: variables common to every trainer of the attempt (rendezvous, stores, plan...).
    """

    def __init__(self, spec: TrainerSpec, slot: int, attempt: int, env: Mapping[str, str]):
        self.spec, self.slot, self.attempt = spec, slot, attempt
        self.handlers: dict[int, SubprocessHandler] = {}
        self.exitcodes: dict[int, int] = {}
        self.started_at = 0.0
        logs = spec.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        for local_rank in range(spec.per_node):
            rank = slot * spec.per_node + local_rank
            trainer_env = {
                **env,
                "RANK": str(rank),
                "WORLD_SIZE": str(spec.world_size),
                "LOCAL_RANK": str(local_rank),
                "LOCAL_WORLD_SIZE": str(spec.per_node),
                "GROUP_RANK": str(slot),
                "GEMINI_NODE": str(slot),
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
                "OMP_NUM_THREADS": "1",
                "PYTHONFAULTHANDLER": "1",  # a crash in native code leaves its stack in the log
            }
            output = logs / f"trainer-rank{rank}-attempt{attempt}.log"
            self.handlers[rank] = SubprocessHandler(
                entrypoint=sys.executable,
                args=tuple(spec.command()),
                env=trainer_env,
                stdout=str(output),
                stderr=str(output.with_suffix(".err")),
                local_rank_id=local_rank,
                numa_options=None,
            )
            log.info("node slot %d: trainer rank %d started (pid %d)", slot, rank, self.pid(rank))

    def pid(self, rank: int) -> int:
        return int(self.handlers[rank].proc.pid)

    def pids(self) -> list[int]:
        return [self.pid(rank) for rank in self.handlers]

    def poll(self) -> dict[int, int]:
        """Trainers that exited since the last call: ``{rank: exit code}`` (negative: signal)."""
        new = {}
        for rank, handler in self.handlers.items():
            if rank in self.exitcodes:
                continue
            code = handler.proc.poll()
            if code is not None:
                self.exitcodes[rank] = code
                new[rank] = code
        return new

    @property
    def running(self) -> bool:
        return any(h.proc.poll() is None for h in self.handlers.values())

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM every trainer's process group, wait ``grace_s``, then SIGKILL; reap all."""
        for handler in self.handlers.values():
            if handler.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(handler.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for handler in self.handlers.values():
            with contextlib.suppress(Exception):
                handler.proc.wait(max(0.0, deadline - time.monotonic()))
        for handler in self.handlers.values():
            # The group too: a trainer's own children (gloo helpers) must not outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handler.proc.pid, signal.SIGKILL)
            handler.proc.wait()
            for stream in (handler._stdout, handler._stderr):
                if stream is not None:
                    stream.close()
        for rank, handler in self.handlers.items():
            self.exitcodes.setdefault(rank, handler.proc.returncode)


def trainer_env(record: Mapping[str, Any], token: str, run_dir: Path, t0: float) -> dict[str, str]:
    """The variables an attempt record gives every trainer of the attempt."""
    env = {
        "MASTER_ADDR": str(record["master_addr"]),
        "MASTER_PORT": str(record["master_port"]),
        "GEMINI_STORE_ADDRS": ",".join(record["stores"]),
        "GEMINI_TOKEN": token,
        "GEMINI_RUN_DIR": str(run_dir),
        "GEMINI_RUN_T0": repr(t0),
    }
    plan = record.get("plan")
    if plan is not None:
        env["GEMINI_RESTORE_PLAN"] = json.dumps(plan, separators=(",", ":"))
    return env


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL each pid's process group (trainers lead their own), then the pid itself."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
