"""The confidence intervals over seeds that `gemini-ckpt sim --seeds N` prints stay within what
each metric can be: two seeds gave [-10.06, 244.1] failures and a fraction from memory of up
to 1.0007."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sim.replicate import BOUNDS, mean_ci
from sim.replicate import _run_one as _REAL_RUN_ONE


def test_an_interval_is_cut_to_the_metrics_range() -> None:
    wide = mean_ci([3.0, 230.0], bounds=BOUNDS["failures"])
    assert wide["ci_low"] == 0.0 and wide["ci_high"] is not None and wide["ci_high"] > 230.0
    fraction = mean_ci([0.99, 1.0, 1.0], bounds=BOUNDS["fraction_from_memory"])
    assert fraction["ci_high"] == 1.0 and fraction["mean"] == pytest.approx(0.99667, abs=1e-4)
    free = mean_ci([3.0, 230.0])  # no bounds: the plain t interval
    assert free["ci_low"] is not None and free["ci_low"] < 0
    assert all(low >= 0 and (high == 1 or math.isinf(high)) for low, high in BOUNDS.values())


def test_a_rerun_into_the_same_folder_leaves_no_earlier_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three seeds, then one, into one folder: the earlier seed folders and replications.json
    stayed beside the new summary. Other files there are left alone."""
    from gemini_ckpt.cli import main

    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: s\ncluster: {nodes: 4}\ntraining: {iteration_time_s: 1}\n"
        "failures: {schedule: [{kind: software, nodes: [1], at_iteration: 3}]}\n"
        "sim: {duration_days: 0.001}\n"
    )
    out = tmp_path / "out"
    assert main(["sim", str(scenario), "--out", str(out), "--seeds", "3", "--workers", "1"]) == 0
    assert sorted(p.name for p in out.glob("seed-*")) == ["seed-0", "seed-1", "seed-2"]
    (out / "notes.txt").write_text("mine")
    assert main(["sim", str(scenario), "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["events.jsonl", "notes.txt", "summary.json"]


def _dying_run_one(data: Any, seed: int, folder: str | None) -> Any:
    """A seed's run whose worker dies at seed 1 (module level: the pool pickles it by name)."""
    import os

    if seed == 1:
        os._exit(9)
    return _REAL_RUN_ONE(data, seed, folder)


def test_a_seed_whose_worker_dies_fails_the_run_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed (the OOM killer, a segfault) must not leave the parent waiting for its
    seed for ever, as multiprocessing's Pool would."""
    import importlib
    from concurrent.futures.process import BrokenProcessPool

    from shared.scenario_loader import load_scenario

    replicating = importlib.import_module("sim.replicate")  # sim.replicate is the function
    root = Path(__file__).resolve().parents[2]
    scenario = load_scenario(root / "scenarios" / "quickstart.yaml", ["sim.duration_days=0.01"])
    monkeypatch.setattr(replicating, "_run_one", _dying_run_one)
    with pytest.raises(BrokenProcessPool):
        replicating.replicate(scenario, 3, workers=2)
