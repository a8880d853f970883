"""The gemini-ckpt command line: placement and validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gemini_ckpt.cli import main

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_placement_json_has_holders_probability_method(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["placement", "-n", "16", "-m", "2", "-k", "2", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["holders"]["0"] == [0, 1] and data["holders"]["15"] == [15, 14]
    assert round(data["probability"], 4) == 0.9333
    assert data["method"].startswith("exact")


def test_placement_ring_and_mixed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["placement", "-n", "16", "-m", "2", "-k", "3", "--strategy", "ring", "--json"], capsys
    )
    assert code == 0 and round(json.loads(out)["probability"], 4) == 0.6286
    code, out, _ = run(["placement", "-n", "5", "-m", "2", "--json"], capsys)
    data = json.loads(out)
    assert data["strategy"] == "mixed" and data["groups"][0] == [0, 1]


def test_placement_large_cluster_uses_counting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["placement", "-n", "1000", "-m", "2", "-k", "5", "--json"], capsys)
    assert code == 0 and json.loads(out)["method"] == "exact-counting"


def test_placement_domain_failures_use_monte_carlo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        [
            "placement",
            "-n",
            "40",
            "-m",
            "2",
            "-k",
            "2",
            "--domains",
            "10",
            "--domain-failures",
            "1",
            "--trials",
            "20000",
            "--json",
        ],
        capsys,
    )
    data = json.loads(out)
    assert code == 0 and data["method"] == "monte-carlo"
    assert data["ci_low"] <= data["probability"] <= data["ci_high"]


def test_placement_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["placement", "-n", "4", "-m", "2", "-k", "2"], capsys)
    assert code == 0 and "0.6667" in out and "group placement" in out
    # the result on one line, also when piped (rich wrapped it at 80 columns)
    (line,) = [line for line in out.splitlines() if "P(every checkpoint" in line]
    assert "0.6667" in line and line.rstrip().endswith(")")


@pytest.mark.parametrize(
    "args",
    [
        ["placement", "-n", "4", "-m", "5"],
        ["placement", "-n", "4", "-m", "3", "--strategy", "group"],
        ["placement", "-n", "4", "-m", "2", "-k", "9"],
        ["placement", "-n", "4"],
        ["placement", "-n", "4", "-m", "2", "--domains", "a,b"],
        ["placement", "-n", "8", "-m", "2", "--domains", "4", "--domain-failures", "5"],
        ["no-such-command"],
    ],
)
def test_bad_input_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(args, capsys)
    assert code == 2 and err


def test_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(REPO / "scenarios" / "quickstart.yaml")
    code, out, _ = run(["validate", good], capsys)
    assert code == 0 and "ok" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\ncluster: {nodes: -2}\n")
    code, _, err = run(["validate", good, str(bad)], capsys)
    assert code == 2 and "cluster.nodes" in err and str(bad) in err


def test_console_script_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "placement" in done.stdout


@pytest.mark.parametrize(
    ("command", "flag"),
    [("sim", ["--strategy", "strawman"]), ("real", ["--strategy", "persistent"])],
)
def test_strategy_flag_and_a_contrary_set_are_refused_alike(
    command: str, flag: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = str(REPO / "scenarios" / "quickstart.yaml")
    contrary = ["--set", "checkpoint.strategy=gemini"]
    code, _, err = run([command, scenario, *flag, *contrary, "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "--strategy sets checkpoint.strategy=" in err and "give one" in err
    assert not (tmp_path / "r").exists()


def test_strategy_flag_with_an_agreeing_set_simulates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = str(REPO / "scenarios" / "quickstart.yaml")
    out = tmp_path / "sim"
    args = ["sim", scenario, "--strategy", "highfreq", "--set", "checkpoint.strategy=persistent"]
    code, _, err = run([*args, "--out", str(out)], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "persistent"


def test_sigterm_is_a_ctrl_c_in_a_command_but_not_in_its_forked_children() -> None:
    import multiprocessing
    import signal

    from gemini_ckpt import cli as cli_module

    restore = cli_module._interrupt_on_sigterm()
    try:
        assert signal.getsignal(signal.SIGTERM) is cli_module._sigterm_interrupts
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(
            target=lambda: results.put(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        )
        child.start()
        assert results.get(timeout=30) is True  # a worker its parent stops ends at once
        child.join(30)
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is not cli_module._sigterm_interrupts
