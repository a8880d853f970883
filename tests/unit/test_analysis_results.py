"""Loading run folders: single runs, multi-seed runs, folders of runs, errors that name files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run

from analysis.results import find_run_folders, load_run, load_runs, pair_runs, select, split_sweep
from shared.errors import RunFolderError

FAILURE = SyntheticFailure(3)


def test_load_run_reads_summary_and_sorted_events(tmp_path: Path) -> None:
    folder = write_synthetic_run(tmp_path / "r", SyntheticRun(failures=(FAILURE,)))
    run = load_run(folder)
    assert run.label == "sim-gemini"
    assert run.scenario == "synthetic"
    assert len(run.summary.failures) == 1
    times = [e.time_s for e in run.events]
    assert times == sorted(times) and run.events[0].kind == "run_started"


def test_missing_folder_summary_or_bad_line_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="no such run folder"):
        load_run(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match=r"no summary\.json"):
        load_run(tmp_path / "empty")
    folder = write_synthetic_run(tmp_path / "bad", SyntheticRun())
    with open(folder / "events.jsonl", "a") as handle:
        handle.write('{"time_s": 1, "kind": "no_such_kind"}\n')
    with pytest.raises(RunFolderError, match=r"events.jsonl:\d+: unknown event kind"):
        load_run(folder)
    (folder / "summary.json").write_text(json.dumps({"source": "sim"}))
    with pytest.raises(RunFolderError, match="not a run summary"):
        load_run(folder)


def test_multi_seed_folder_reads_the_first_seeds_events(tmp_path: Path) -> None:
    top = tmp_path / "seeds"
    for seed in (0, 1, 10):
        write_synthetic_run(top / f"seed-{seed}", SyntheticRun(failures=(FAILURE,) * (seed == 0)))
    shutil.copy(top / "seed-0" / "summary.json", top / "summary.json")
    assert find_run_folders(tmp_path) == [top]
    run = load_run(top)
    assert any(e.kind == "failure_injected" for e in run.events)  # seed-0's events


def test_folders_of_runs_pairs_and_sweeps(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "sim-gemini", SyntheticRun())
    write_synthetic_run(tmp_path / "real-gemini", SyntheticRun(source="real"))
    write_synthetic_run(tmp_path / "sim-baseline", SyntheticRun(strategy="persistent"))
    write_synthetic_run(tmp_path / "sweep" / "nodes-8", SyntheticRun(nodes=8))
    runs = load_runs([tmp_path, tmp_path / "sim-gemini"])  # duplicates are dropped
    assert len(runs) == 4
    main, sweep = split_sweep(runs)
    assert [r.path.name for r in sweep] == ["nodes-8"]
    ((sim, real),) = pair_runs(main)
    assert (sim.source, real.source, sim.strategy) == ("sim", "real", "gemini")
    assert [r.path.name for r in select(main, strategy="persistent")] == ["sim-baseline"]
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(RunFolderError, match="holds no run folder"):
        find_run_folders(tmp_path / "nothing-here")
