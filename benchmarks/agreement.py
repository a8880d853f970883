"""How long the engine's small agreements take when one rank arrives last: gloo's ring
``all_reduce`` against the direct exchange the engine uses (``real.engine.restore.all_reduce_int``).

A restore ends with such an agreement (did every rank read its shard?), and the retrieval ends
when the last rank has its state. Here n gloo ranks on this host agree on one integer, the last
rank arriving ``--late-ms`` after the others; once agreed, each computes for ``--train-ms``, as
a resumed trainer does, on the CPUs the others still need. Per method it prints the median and
the 90th percentile, over ``--rounds`` rounds (the two methods alternate), of the time from the
last arrival until the first and until the last rank has agreed.

Run: ``.venv/bin/python benchmarks/agreement.py`` (about 30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from typing import Any

METHODS = ("all_reduce (ring)", "all_to_all (engine)")


def _rank(rank: int, world: int, address: str, args: argparse.Namespace, out: Any) -> None:
    import torch
    import torch.distributed as dist

    from real.engine.restore import all_reduce_int

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    work = torch.randn(256, 256)

    def ring(value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    agree = (ring, lambda value: all_reduce_int(value, "max", dist.group.WORLD))
    spans: dict[str, list[tuple[float, float]]] = {name: [] for name in METHODS}
    for number in range(2 * args.rounds):
        name = METHODS[number % 2]
        dist.barrier()
        if rank == world - 1:
            time.sleep(args.late_ms / 1e3)
        arrived = time.perf_counter()
        if agree[number % 2](rank) != world - 1:
            raise AssertionError("the agreement gave a wrong maximum")
        agreed = time.perf_counter()
        end = agreed + args.train_ms / 1e3
        while time.perf_counter() < end:  # a resumed trainer's step
            work @ work
        # One host, one monotonic clock: every rank's agreement against the last arrival.
        mine = torch.tensor([arrived if rank == world - 1 else 0.0, agreed], dtype=torch.float64)
        every = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(every, mine)
        last = every[world - 1][0].item()
        delays = [t[1].item() - last for t in every]
        spans[name].append((min(delays), max(delays)))
    if rank == 0:
        out.put(spans)
    dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    from real.runtime.processes import free_port

    context = mp.get_context("spawn")
    out = context.Queue()
    address = f"tcp://127.0.0.1:{free_port()}"
    ranks = [
        context.Process(target=_rank, args=(rank, world, address, args, out))
        for rank in range(world)
    ]
    for process in ranks:
        process.start()
    try:
        spans: dict[str, list[tuple[float, float]]] = out.get(timeout=300)
    finally:
        for process in ranks:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    if any(process.exitcode != 0 for process in ranks):
        raise RuntimeError(f"a rank of {world} failed (exit codes {[p.exitcode for p in ranks]})")
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=20, help="per method")
    parser.add_argument("--late-ms", type=float, default=50.0)
    parser.add_argument("--train-ms", type=float, default=80.0)
    args = parser.parse_args()
    print("| ranks | method | first agreed, ms (median) | last agreed, ms (median) | last, p90 |")
    print("|---|---|---|---|---|")
    for world in args.ranks:
        for name, spans in measure(world, args).items():
            first = statistics.median(s[0] for s in spans) * 1e3
            lasts = sorted(s[1] * 1e3 for s in spans)
            p90 = lasts[min(len(lasts) - 1, int(0.9 * len(lasts)))]
            print(
                f"| {world} | {name} | {first:.1f} | {statistics.median(lasts):.1f} | {p90:.1f} |"
            )


if __name__ == "__main__":
    main()
