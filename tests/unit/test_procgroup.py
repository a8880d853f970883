"""Leaving a process group: modules in reference cycles are collected before the groups go."""

from __future__ import annotations

import datetime
import weakref

import torch
import torch.distributed as dist

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
