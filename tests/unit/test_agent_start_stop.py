"""A node agent told to stop while its node comes up (a Ctrl-C during the cluster's start)
leaves at once: no node store and no warm trainers started only to be stopped, and no wait
for torch's import (seconds on a busy host). It used to go on through every stage of its start,
so a Ctrl-C a few seconds into `gemini-ckpt real` took 6-10 s to end."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from real.agent import node_agent
from real.agent.node_agent import AgentConfig, NodeAgent
from real.agent.trainer_processes import TrainerSpec
from real.coord.kvserver import StoreServer
from real.engine.process import StoreProcess
from shared.scenario_loader import load_scenario

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


def never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("started by an agent told to stop")


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An agent of slot 0 against a store of its own; what it must not start raises."""
    token = os.urandom(16).hex()
    monkeypatch.setenv("GEMINI_TOKEN", token)
    monkeypatch.setattr(node_agent, "TrainerPool", never)
    monkeypatch.setattr(node_agent, "_rendezvous_store", never)
    # torch is not imported here in the background: a test process's other users of torch
    # would see it half imported.
    imported = threading.Event()
    imported.set()
    monkeypatch.setattr(node_agent, "_import_in_background", lambda name: imported)
    spec = TrainerSpec(
        scenario=QUICKSTART,
        overrides=(),
        run_dir=tmp_path,
        checkpointer="gemini",
        world_size=4,
        per_node=1,
        entrypoint=(sys.executable, "-c", "pass"),
    )
    with StoreServer() as server:
        yield NodeAgent(
            AgentConfig(
                kv_url=f"{server.url}/job",
                node_id=0,
                slot=0,
                scenario=load_scenario(QUICKSTART),
                spec=spec,
                token=token,
                job=f"stopjob{os.getpid()}",
            )
        )


def test_an_agent_stopped_before_its_start_starts_nothing(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StoreProcess, "start", never)
    agent.stop()
    assert agent.run() == 0


def test_an_agent_stopped_while_torch_imports_does_not_wait_for_it(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    importing = threading.Event()

    def import_that_never_ends(name: str) -> threading.Event:
        importing.set()
        return threading.Event()  # never set

    monkeypatch.setattr(node_agent, "_import_in_background", import_that_never_ends)
    timer = threading.Timer(0.5, agent.stop)
    timer.start()
    began = time.monotonic()
    try:
        assert agent.run() == 0
    finally:
        timer.cancel()
    assert importing.is_set()
    assert time.monotonic() - began < 10  # the 0.5 s until the stop, and the store's stop
