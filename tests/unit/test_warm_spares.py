"""``recovery.warm_spares``: a node agent keeps that many warm spares per local rank, so a rank
that fails again before the spare started after its first failure is warm still finds a warm
one; the spare replacing one taken starts once the node's trainers train again, not during the
recovery (``real.agent.trainer_processes.TrainerPool``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from running import SERVE_ATTEMPTS, stand_in_pool, wait_for

from real.agent import trainer_processes
from real.agent.trainer_processes import TrainerPool

QUICKSTART = Path(__file__).parents[2] / "scenarios" / "quickstart.yaml"

# A stand-in trainer that counts the trainers started before it (a file each, claimed
# atomically): the first ``warm`` are warm at once, the later ones stay "starting" until the
# file ``go`` exists, as a spare still importing torch beside a busy job. Assigned an attempt,
# it says it trains again there once the file ``restored`` exists (its restore).
COUNTED_TRAINER = (
    """
import json, os, socket, sys, time
sock = socket.socket(fileno=int(os.environ["GEMINI_AGENT_FD"]))
folder, go, warm, restored = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
index = 0
while True:
    try:
        os.close(os.open(os.path.join(folder, f"started-{index}"), os.O_CREAT | os.O_EXCL))
        break
    except FileExistsError:
        index += 1
while index >= warm and not os.path.exists(go):
    time.sleep(0.01)
sock.sendall(json.dumps({"op": "ready"}).encode() + b"\\n")
"""
    + SERVE_ATTEMPTS
)


def counted_pool(folder: Path, warm_spares: int) -> TrainerPool:
    """A node's pool of one rank whose trainers of the node's start (the active one and its
    spares) are warm at once; every spare started after a crash warms until the test ends."""
    counted = folder / "started"
    counted.mkdir()
    return stand_in_pool(
        folder,
        COUNTED_TRAINER,
        str(counted),
        str(folder / "go"),
        str(1 + warm_spares),
        str(folder / "restored"),
        spares="now",
        warm_spares=warm_spares,
    )


def live_spares(trainers: TrainerPool) -> int:
    return len([w for w in trainers.spares[0] if w.exitcode() is None])


def crash_the_active_trainer(trainers: TrainerPool) -> None:
    worker = trainers.active[0]
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20.0
    while worker.exitcode() is None:
        assert time.monotonic() < deadline, "the killed trainer never exited"
        time.sleep(0.01)


@pytest.mark.parametrize("warm_spares", [1, 2])
def test_a_second_crash_before_the_new_spare_is_warm_finds_a_warm_one_with_two(
    tmp_path: Path, warm_spares: int
) -> None:
    (tmp_path / "restored").touch()  # every assigned trainer resumes at once
    trainers = counted_pool(tmp_path, warm_spares)
    try:
        assert trainers.wait_ready(20.0)
        assert len(trainers.spares[0]) == warm_spares
        trainers.take_slot(0)
        assert trainers.assign(1, {}) == {0: False}
        states = []
        for attempt in (2, 3):  # the rank crashes twice in a row
            crash_the_active_trainer(trainers)
            assert trainers.assign(attempt, {}) == {0: True}  # a spare took the rank
            states.append(trainers.active[0].state)
            if attempt == 2:  # it trains again: a new spare per one taken, still warming
                wait_for(lambda: trainers.active[0].resumed == 2)
                trainers.poll()
                assert live_spares(trainers) == warm_spares
        # The first crash finds a warm spare either way; the second finds the one started
        # after the first still warming, unless the rank kept a second warm spare.
        assert states == (["ready", "ready"] if warm_spares == 2 else ["ready", "starting"])
    finally:
        trainers.stop(grace_s=1.0)


def test_the_spare_replacing_one_taken_starts_once_the_trainers_train_again(
    tmp_path: Path,
) -> None:
    trainers = counted_pool(tmp_path, warm_spares=1)
    try:
        assert trainers.wait_ready(20.0)
        trainers.take_slot(0)
        (tmp_path / "restored").touch()
        trainers.assign(1, {})
        wait_for(lambda: trainers.active[0].resumed == 1)
        (tmp_path / "restored").unlink()  # the next restore lasts until the file is back
        crash_the_active_trainer(trainers)
        assert trainers.assign(2, {}) == {0: True}
        for _ in range(20):  # recovering: no new process takes CPU from it
            trainers.poll()
            assert live_spares(trainers) == 0
            time.sleep(0.01)
        assert len(os.listdir(tmp_path / "started")) == 2
        (tmp_path / "restored").touch()  # restored: the rank trains again
        wait_for(lambda: trainers.active[0].resumed == 2)
        trainers.poll()
        assert live_spares(trainers) == 1
    finally:
        trainers.stop(grace_s=1.0)


def test_a_spare_taken_is_replaced_after_a_bound_when_the_trainers_never_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer of the user's own that never says it resumed: the node starts the new spare
    ``SPARE_RAISE_BOUND_S`` after the assignment anyway."""
    monkeypatch.setattr(trainer_processes, "SPARE_RAISE_BOUND_S", 0.3)
    trainers = counted_pool(tmp_path, warm_spares=1)  # no "restored" file: never resumes
    try:
        assert trainers.wait_ready(20.0)
        trainers.take_slot(0)
        trainers.assign(1, {})
        crash_the_active_trainer(trainers)
        assert trainers.assign(2, {}) == {0: True}
        started = trainers.processes_started
        trainers.poll()
        assert live_spares(trainers) == 0
        time.sleep(0.4)
        trainers.poll()
        assert live_spares(trainers) == 1 and trainers.processes_started == started + 1
    finally:
        trainers.stop(grace_s=1.0)


@pytest.mark.usefixtures("root_logging")  # the command configures the root logger
def test_the_agent_keeps_the_scenarios_warm_spares_per_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from real.agent import command, node_agent

    configs: list[node_agent.AgentConfig] = []
    monkeypatch.setattr(node_agent, "run_agent", lambda config: configs.append(config) or 0)
    monkeypatch.setenv("GEMINI_TOKEN", "secret")
    arguments = ["--kv", "tcpstore://127.0.0.1:1", "--node-id", "0", "--slot", "0"]
    arguments += ["--run-dir", str(tmp_path), str(QUICKSTART)]
    for extra in ([], ["--set", "recovery.warm_spares=2"]):
        result = CliRunner().invoke(command.command, arguments + extra)
        assert result.exit_code == 0, result.output
    assert [config.spec.spares for config in configs] == [1, 2]


@pytest.mark.usefixtures("root_logging")  # the command configures the root logger
def test_the_agents_strategy_is_the_scenarios_for_a_users_own_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--strategy persistent`` reached the built-in trainer alone: a script given as the
    entrypoint read the scenario's strategy and ran Gemini under a run labelled the baseline."""
    from click.testing import CliRunner

    from real.agent import command, node_agent

    configs: list[node_agent.AgentConfig] = []
    monkeypatch.setattr(node_agent, "run_agent", lambda config: configs.append(config) or 0)
    monkeypatch.setenv("GEMINI_TOKEN", "secret")
    arguments = ["--kv", "tcpstore://127.0.0.1:1", "--node-id", "0", "--slot", "0"]
    arguments += ["--run-dir", str(tmp_path), str(QUICKSTART), "--strategy", "persistent"]
    arguments += ["--set", "training.entrypoint=[my_train.py]"]
    arguments += ["--set", "checkpoint.baseline_every_iterations=10"]
    result = CliRunner().invoke(command.command, arguments)
    assert result.exit_code == 0, result.output
    (config,) = configs
    assert config.scenario.checkpoint.strategy == "persistent"  # the root's and the digest's
    assert config.spec.checkpointer == "persistent"
    assert "checkpoint.strategy=persistent" in config.spec.overrides  # the script's scenario
