"""The engine's small agreements (``real.engine.restore.all_reduce_int``): every rank gets the
group's minimum or maximum, whichever rank holds it and whenever it arrives."""

from __future__ import annotations

import ast
from pathlib import Path

from running import rank_outputs, rank_scripts

from real.engine.restore import all_reduce_int

RANK = """
import sys, time
import torch.distributed as dist
from real.engine.restore import all_reduce_int

rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
values = [7, -3, 12]
agreed = []
for turn in range(3):  # a different rank arrives last each turn
    if rank == turn:
        time.sleep(0.2)
    agreed.append(all_reduce_int(values[(rank + turn) % world], "min", dist.group.WORLD))
    agreed.append(all_reduce_int(values[(rank + turn) % world], "max", dist.group.WORLD))
print(repr(agreed))
dist.destroy_process_group()
"""


def test_every_rank_agrees_on_the_groups_minimum_and_maximum(tmp_path: Path) -> None:
    outputs = rank_outputs(rank_scripts(tmp_path, RANK, 3))
    for output in outputs:
        assert ast.literal_eval(output.strip().splitlines()[-1]) == [-3, 12] * 3


def test_without_a_group_a_value_is_its_own_agreement() -> None:
    assert all_reduce_int(5, "min", None) == 5
    assert all_reduce_int(-1, "max", None) == -1
