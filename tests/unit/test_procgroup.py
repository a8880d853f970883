"""Leaving a process group: modules in reference cycles are collected before the groups go;
background groups connect beside the program's own and are dropped without waiting."""

from __future__ import annotations

import datetime
import weakref
from typing import Any

import torch
import torch.distributed as dist
from running import rank_outputs, rank_scripts

from real.runtime.processes import free_port
from real.runtime.procgroup import leave_process_group, new_gloo_group


def test_leaving_collects_cyclic_modules_then_destroys_every_group() -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=30),
    )
    extra = dist.new_group(backend="gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    model.loop = model  # type: ignore[assignment]  # a cycle: only the collector frees it
    model(torch.ones(2, 4)).sum().backward()
    alive = weakref.ref(model)
    del model
    assert alive() is not None  # refcounting alone does not free it
    leave_process_group(together=True)
    assert alive() is None
    assert not dist.is_initialized()
    assert extra not in dist.distributed_c10d._world.pg_map
    leave_process_group(together=True)  # nothing left: a no-op


def test_a_new_gloo_group_keeps_the_jobs_collective_timeout() -> None:
    """torch's new_group would wait 30 minutes: a background collective stuck on a hung peer
    would then block the failed attempt's teardown long after the job's own timeout."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=7),
    )
    try:
        group = new_gloo_group()
        backend = group._get_backend(torch.device("cpu"))
        assert backend.options._timeout == datetime.timedelta(seconds=7)
        assert dist.new_group(backend="gloo")._get_backend(
            torch.device("cpu")
        ).options._timeout > datetime.timedelta(seconds=7)  # what the helper avoids
    finally:
        leave_process_group(together=True)


BACKGROUND_RANK = """
import datetime, sys, threading, time, torch, torch.distributed as dist
from real.runtime import procgroup
from real.runtime.procgroup import BackgroundGlooGroup, leave_process_group, new_gloo_group
rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
first = BackgroundGlooGroup("test")
# The program builds a registered group meanwhile, on its own thread and its own store client:
# over a shared client the two connections waited for each other's keys across ranks.
registered = new_gloo_group()
second = BackgroundGlooGroup("test")
values = []
for group in (first.wait(), registered, second.wait()):
    tensor = torch.tensor([10 * (rank + 1)])
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=group)
    values.append(int(tensor.item()))
print("names", first.name, second.name, flush=True)
print("values", *values, flush=True)
leave_process_group(together=True)
alive = [t.name for t in threading.enumerate() if t.name.startswith(("connect-", "release-"))]
print("left", len(procgroup._BACKGROUND_GROUPS), len(alive), flush=True)
"""


def test_background_groups_connect_beside_the_programs_own_and_reduce_over_every_rank(
    tmp_path: Any,
) -> None:
    """Two background groups of one name and a registered group built between them: each
    reduces over all three ranks, the two have names of their own, and a clean leave drops
    them and their threads."""
    for output in rank_outputs(rank_scripts(tmp_path, BACKGROUND_RANK, 3)):
        lines = dict(line.split(" ", 1) for line in output.strip().splitlines())
        assert lines["names"] == "test-1 test-2"
        assert lines["values"] == "10 10 10"
        assert lines["left"] == "0 0"


ABANDONING_RANK = """
import datetime, sys, time, torch, torch.distributed as dist
from real.runtime.procgroup import BackgroundGlooGroup, abandon_process_groups
rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
background = BackgroundGlooGroup("test")
group = background.wait()
dist.barrier()
if rank == 0:
    time.sleep(60)  # alive, never joins the reduction: rank 1's worker thread waits on it
work = dist.all_reduce(torch.ones(4), group=group, async_op=True)
del group
time.sleep(0.3)
began = time.monotonic()
abandon_process_groups()
try:
    background.wait(1.0)
except ConnectionError as error:
    print("wait", error, flush=True)
print(f"left {time.monotonic() - began:.3f}", flush=True)
time.sleep(30)
"""


def test_abandoning_a_background_group_does_not_wait_for_its_hung_reduction(
    tmp_path: Any,
) -> None:
    """A failed attempt's survivor drops its background group while a reduction on it waits
    for a peer that is alive but never comes: dropping it joins that wait, on a thread of its
    own, and the group is gone for every later caller."""
    ranks = rank_scripts(tmp_path, ABANDONING_RANK, 2)
    try:
        assert ranks[1].stdout is not None
        said = ranks[1].stdout.readline()
        left = ranks[1].stdout.readline()
        assert ranks[0].poll() is None, "rank 0 ended before rank 1 left"
        assert said.startswith("wait process group test-1 released"), said
        assert left.startswith("left ") and float(left.split()[1]) < 5.0, left
    finally:
        for process in ranks:
            process.kill()
            process.wait()


UNCONNECTED_RANK = """
import datetime, sys, threading, time, torch.distributed as dist
from real.runtime.procgroup import BackgroundGlooGroup
rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
if rank == 0:
    time.sleep(60)  # alive, never builds the group: rank 1's connection waits for it
background = BackgroundGlooGroup("test")
said = []
def waiter():
    try:
        background.wait()
    except ConnectionError as error:
        said.append(str(error))
thread = threading.Thread(target=waiter)
thread.start()
time.sleep(0.3)
began = time.monotonic()
background.release()
thread.join(10)
print(f"waited {time.monotonic() - began:.3f} {said}", flush=True)
time.sleep(30)
"""


def test_releasing_a_background_group_that_never_connected_frees_its_waiter(
    tmp_path: Any,
) -> None:
    """A peer that never built the group: a background thread waiting for the connection (the
    engine's sender, on a failed attempt) returns when the group is released, not after the
    collective timeout."""
    ranks = rank_scripts(tmp_path, UNCONNECTED_RANK, 2)
    try:
        assert ranks[1].stdout is not None
        line = ranks[1].stdout.readline()
        assert ranks[0].poll() is None, "rank 0 ended before rank 1 released"
        assert line.startswith("waited "), line
        assert float(line.split()[1]) < 5.0, line
        assert "process group test-1 released" in line, line
    finally:
        for process in ranks:
            process.kill()
            process.wait()


LAZY_RANK = """
import datetime, os, sys, torch, torch.distributed as dist
from real.runtime.procgroup import LAZY_INIT_ENV, leave_process_group, new_gloo_group
rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=30))
store = dist.distributed_c10d._get_default_store()
if rank == world - 1:  # the late rank builds its group only once the others have theirs
    store.wait([f"built-{peer}" for peer in range(world - 1)], datetime.timedelta(seconds=20))
group = new_gloo_group(lazy=True)
store.set(f"built-{rank}", "1")
print("env", LAZY_INIT_ENV in os.environ, flush=True)
eager = new_gloo_group()  # the next group connects at once again
for each in (group, eager):
    tensor = torch.tensor([rank + 1])
    dist.all_reduce(tensor, group=each)
    print("sum", int(tensor.item()), flush=True)
leave_process_group(together=True)
"""


def test_a_lazy_group_is_built_without_waiting_for_the_other_ranks(tmp_path: Any) -> None:
    """The persister's group connects at its first collective: ranks build it before the last
    rank has even started to (an eager group would wait for it, and the late rank waits for
    theirs: a deadlock the store's 20 s wait ends), it reduces over every rank, and the
    variable that made it lazy is gone, so the next group is eager."""
    for output in rank_outputs(rank_scripts(tmp_path, LAZY_RANK, 3)):
        assert output.split() == ["env", "False", "sum", "6", "sum", "6"], output
