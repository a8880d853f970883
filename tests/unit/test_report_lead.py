"""The report's lead: Gemini against the baseline per failure kind, the simulator beside it."""

from __future__ import annotations

from pathlib import Path

from synthetic import SyntheticFailure, SyntheticRun, write_synthetic_run

from analysis.render import markdown_table
from analysis.report import lead_table
from analysis.results import load_run


def _run(tmp_path: Path, source: str, strategy: str, retrieval: float, detection: float):
    failures = (
        SyntheticFailure(4, "software", (1,), detection, 0.1, 0.0, 0.5, retrieval),
        SyntheticFailure(9, "hardware", (2,), 2 * detection, 0.1, 0.5, 0.5, 2 * retrieval, "peer"),
    )
    run = SyntheticRun(source, strategy, failures=failures)
    return load_run(write_synthetic_run(tmp_path / f"{source}-{strategy}", run))


def test_lead_rows_put_the_prediction_beside_each_measured_figure(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path, "real", "gemini", 0.1, 0.2),
        _run(tmp_path, "real", "persistent", 2.0, 0.2),
        _run(tmp_path, "sim", "gemini", 0.125, 0.25),
        _run(tmp_path, "sim", "persistent", 1.5, 0.25),
    ]
    table = lead_table(runs)
    assert [row[1] for row in table.rows] == ["trainer crash (x1)", "lost node (x1)"]
    crash, lost = table.rows
    # Nothing is lost (restored = reached), so wasted = retrieval; downtime = the phases.
    assert crash[2:5] == ["0.1 s (sim 0.125 s)", "2 s (sim 1.5 s)", "20.0x (sim 12.0x)"]
    # Downtime: detection + stop + restart + retrieval (0.2 + 0.1 + 0.5 + 0.1), sim beside it.
    assert crash[5:] == ["0.9 s (sim 0.975 s)", "2.8 s (sim 2.35 s)", "3.1x (sim 2.4x)"]
    assert lost[2:5] == ["0.2 s (sim 0.25 s)", "4 s (sim 3 s)", "20.0x (sim 12.0x)"]
    assert lost[5] == "1.7 s (sim 1.85 s)"  # with the replacement, 0.5
    assert "the simulator's prediction" in table.note
    assert markdown_table(table).startswith("## Gemini vs the persistent-storage baseline")


def test_without_measured_runs_the_lead_shows_the_simulator(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path, "sim", "gemini", 0.1, 0.2),
        _run(tmp_path, "sim", "persistent", 2.0, 0.2),
    ]
    crash, _ = lead_table(runs).rows
    assert crash[2:5] == ["0.1 s", "2 s", "20.0x"]


def test_sizes_and_lengths_read_without_exponents() -> None:
    from analysis.render import _bytes, _duration

    assert _bytes(3e11) == "300.0 GB" and _bytes(2.5e12) == "2.5 TB"
    assert _bytes(11_428_784) == "11.4 MB" and _bytes(0) == "0.0 MB"
    assert _duration(36.6) == "36.6 s" and _duration(864.0) == "14.4 min"
    assert _duration(86400 * 30) == "30 d" and _duration(7200) == "2 h"


def test_a_run_of_several_seeds_says_which_seed_its_figures_are() -> None:
    from types import SimpleNamespace

    from analysis.report import _seed_note

    several = SimpleNamespace(seed=3, extra={"replications": {"seeds": [3, 4, 5]}})
    assert _seed_note(several) == " (seed 3 of 3; means over seeds in replications.json)"  # type: ignore[arg-type]
    assert _seed_note(SimpleNamespace(seed=0, extra={})) == ""  # type: ignore[arg-type]


def test_a_kind_seen_a_different_number_of_times_says_both_counts(tmp_path: Path) -> None:
    """A failure scheduled at an iteration the slower strategy never reaches strikes only the
    other: the row's means are then over different failures, and it says so."""
    crash = SyntheticFailure(4, "software", (1,), 0.2, 0.1, 0.0, 0.5, 0.1)
    again = SyntheticFailure(12, "software", (1,), 0.2, 0.1, 0.0, 0.5, 0.1)
    gemini = SyntheticRun("sim", "gemini", failures=(crash, again))
    baseline = SyntheticRun("sim", "persistent", failures=(crash,))
    runs = [
        load_run(write_synthetic_run(tmp_path / "sim-gemini", gemini)),
        load_run(write_synthetic_run(tmp_path / "sim-persistent", baseline)),
    ]
    (row,) = lead_table(runs).rows
    assert row[1] == "trainer crash (Gemini x2, baseline x1)"


def test_a_ratio_below_one_keeps_its_digits() -> None:
    """Gemini slower than the baseline for some failure kind (0.04x) read "0.0x"."""
    from analysis.render import ratio_text

    assert [ratio_text(v) for v in (0.0416, 0.5, 0.999, 4e-05, 1.0, 25.13, 0.0, None)] == [
        "0.042x",
        "0.50x",
        "1.0x",
        "0.000040x",
        "1.0x",
        "25.1x",
        "0.0x",
        "-",
    ]
