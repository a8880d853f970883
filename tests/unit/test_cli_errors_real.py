"""``gemini-ckpt real --mode netns`` where network namespaces cannot be made: refused as a
usage error (exit 2) before anything starts; a failing ip or tc step is a one-line error
naming the command and what it said (exit 1), not an internal error; the final weights' line
says why a run has no digest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from gemini_ckpt.cli import cli
from real.launcher import netns, run

QUICKSTART = str(Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml")


def invoke(tmp_path: Path) -> tuple[int, str]:
    args = ["real", QUICKSTART, "--mode", "netns", "--force", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_netns_unavailable_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "netns_available", lambda: "netns mode needs root")

    def started(*args: object) -> None:
        raise AssertionError("run_real started although netns mode cannot run")

    monkeypatch.setattr(run, "run_real", started)
    code, output = invoke(tmp_path)
    assert code == 2
    assert "netns mode needs root" in output and "--mode local" in output
    assert "Traceback" not in output
    assert not (tmp_path / "run").exists()


def test_failed_netns_step_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "netns_available", lambda: None)

    def failing(*args: object) -> None:
        raise subprocess.CalledProcessError(
            2, ["ip", "netns", "add", "gkab12-n0"], stderr="RTNETLINK answers: File exists\n"
        )

    monkeypatch.setattr(run, "run_real", failing)
    code, output = invoke(tmp_path)
    assert code == 1
    assert "ip netns add gkab12-n0 exited with 2: RTNETLINK answers: File exists" in output
    assert "Traceback" not in output


def test_the_final_weights_line_says_why_there_is_no_digest() -> None:
    from gemini_ckpt.commands.real import final_weights

    assert final_weights({"final_digest": "f1800480", "final_digests": {"0": "f1800480"}}) == (
        "f1800480"
    )
    # A script of the user's own writes no final/rank*.bin.json: nothing to compare, no alarm.
    assert final_weights({"final_digest": None, "final_digests": {}}).startswith("not reported")
    assert final_weights({"final_digest": None, "final_digests": {"0": "a", "1": "b"}}) == (
        "DIFFER between ranks"
    )
