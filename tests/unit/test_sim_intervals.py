"""The confidence intervals over seeds that `gemini-ckpt sim --seeds N` prints stay within what
each metric can be: two seeds gave [-10.06, 244.1] failures and a fraction from memory of up
to 1.0007."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sim.replicate import BOUNDS, mean_ci


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
