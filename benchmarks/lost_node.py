"""A lost node's processes for the calibration's collective-failure timing (``python -m
benchmarks.lost_node``): started as the harness starts a node's agent, a trainer and its warm
spare, each a fresh interpreter, so each owns every page it uses (torch's own included).

Why fresh processes: the kernel unmaps a killed process's memory before it closes its files,
so its peers' sockets see the close only once its address space is torn down, and that takes
longer the more pages the process owns. A rank forked from the calibration's warm process
shares most of its pages with that process and vanishes faster than a harness trainer: 44 ms
against 71-81 ms for this node's processes in one calibration of the quickstart, where the
harness's survivors saw their collectives fail 74-123 ms after a loss (docs/analysis.md, "A
lost node's collective failure timed with its processes"). Every killed process's teardown
counts, not only the trainer's: they are torn down at once, beside the survivors, on the same
CPUs (``benchmarks/teardown.py``: about 70 ms per GiB resident on an idle 2-core machine, 3x
that beside 4 busy processes), so the node's agent is lost with them (since 2026-12-07).

``--role agent`` stands for the node's agent: a fresh interpreter with the agent's modules and
torch imported, serving a rendezvous ``TCPStore`` as every agent does
(``real.agent.node_agent._rendezvous_store``), at the default niceness, as the launcher starts
an agent: about 235 MB resident, where a harness agent holds 251 MB. It builds no model.
``--role trainer`` warms as a spare does (``benchmarks.calibrate._warm_rank``), joins the
round's group (``LOST_NODE_GROUP``) of the rendezvous store on ``--port`` as the last of
``--world`` ranks, trains two iterations with the survivors, each checkpointed by the
scenario's strategy (under Gemini with an engine and a node store of its own, whose slot
files are named by ``--prefix``: ``benchmarks.calibrate._trained_before_loss``), passes a
barrier with them and waits to be killed. ``--role spare`` warms and waits. Each writes one
line to stdout per stage (``warm``, then for the trainer ``trained``). None outlives its
parent or ``WAIT_S``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from real.runtime.processes import end_with_parent

WAIT_S = 300.0
"""How long each process waits to be killed before it ends on its own."""


def _say(stage: str) -> None:
    sys.stdout.write(f"{stage}\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("agent", "trainer", "spare"), required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True, help="the calibration's PID")
    parser.add_argument("--prefix", required=True, help="its node store's slot files' prefix")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the calibration stops it (see its _reap)
    end_with_parent(signal.SIGKILL, args.parent)

    if args.role == "agent":
        from real.agent.node_agent import _rendezvous_store

        store = _rendezvous_store("127.0.0.1")  # what every node's agent serves
        _say("warm")
        time.sleep(WAIT_S)
        del store
        os._exit(0)

    from benchmarks.calibrate import (
        LOST_NODE_GROUP,
        _spare_join,
        _trained_before_loss,
        _warm_rank,
        _warm_up_torch,
    )

    _warm_up_torch()  # what ``real.trainer.inprocess.prewarm`` pays in a harness spare
    loaded, config, prepared = _warm_rank(args.scenario, args.overrides)
    _say("warm")
    if args.role == "trainer":
        import torch.distributed as dist

        rank = args.world - 1
        _, trainer = _spare_join(config, rank, args.world, args.port, LOST_NODE_GROUP, prepared)
        with _trained_before_loss(loaded, rank, args.world, trainer, args.prefix):
            dist.barrier()
            _say("trained")
            time.sleep(WAIT_S)
    else:
        time.sleep(WAIT_S)
    os._exit(0)  # no destructors: its group is broken by now (see _exit_without_destructors)


if __name__ == "__main__":
    main()
