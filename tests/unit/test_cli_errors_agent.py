"""``gemini-ckpt agent --kv URL``: a URL that is no store URL is a usage error (exit 2) naming
--kv and the parser's reason, before the agent starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gemini_ckpt.cli import cli, main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml")


def test_bad_kv_scheme_is_a_usage_error(tmp_path: Path) -> None:
    args = ["agent", QUICKSTART, "--kv", "foo://h:1", "--node-id", "0", "--slot", "0"]
    args += ["--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args, env={"GEMINI_TOKEN": "secret"})
    assert result.exit_code == 2
    assert "--kv" in result.output and "scheme must be etcd://" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_strategy_and_a_contrary_set_are_a_usage_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    args = ["agent", QUICKSTART, "--kv", "etcd://127.0.0.1:9", "--node-id", "0", "--slot", "0"]
    args += ["--run-dir", str(tmp_path / "run"), "--strategy", "persistent"]
    args += ["--set", "checkpoint.strategy=gemini"]
    done = subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "GEMINI_TOKEN": "secret"},
    )
    assert done.returncode == 2, done.stderr
    assert "--strategy sets checkpoint.strategy=persistent" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("root_logging")  # main configures the root logger
def test_a_trainer_that_cannot_start_is_the_users_error_said_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong ``training.entrypoint`` ends the agent with the trainer's last words, whole,
    as an error of the input (exit 1), not as an internal error cut at 200 characters."""
    from real.agent import node_agent
    from shared.errors import TrainerStartError

    said = (
        "node 0: trainer for local rank 0 (pid 5227) exited with status 2 before it was warm; "
        f"its log {tmp_path}/run/logs/trainer-node0-l0-1.log ends: /usr/bin/python: can't open "
        "file '/tmp/job/mytrain.py': [Errno 2] No such file or directory"
    )

    def run_agent(config: object) -> int:
        raise TrainerStartError(said)

    monkeypatch.setattr(node_agent, "run_agent", run_agent)
    monkeypatch.setenv("GEMINI_TOKEN", "secret")
    args = ["agent", QUICKSTART, "--kv", "tcpstore://127.0.0.1:9/job", "--node-id", "0"]
    code = main([*args, "--slot", "0", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"error: {said}" in err
    assert "internal error" not in err


@pytest.mark.usefixtures("root_logging")  # main configures the root logger
def test_an_agent_with_another_secret_than_its_store_is_a_setting_to_correct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong ``GEMINI_TOKEN`` is bad input (exit 2, the store's refusal said), not a failure
    while running (exit 1)."""
    # The agent imports it in a background thread as it starts; imported here, no import is
    # left half-done when the agent's refusal returns.
    import torch.distributed  # noqa: F401

    from real.coord.kvserver import StoreServer
    from real.engine import protocol

    with StoreServer(token=protocol.make_token()) as server:
        monkeypatch.setenv("GEMINI_TOKEN", protocol.make_token())
        args = ["agent", QUICKSTART, "--kv", f"{server.url}/job", "--node-id", "0", "--slot", "0"]
        code = main([*args, "--run-dir", str(tmp_path / "run"), "--job", "wrongtoken"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "do not share the job's secret" in err and "wrong GEMINI_TOKEN?" in err
    assert "Traceback" not in err
