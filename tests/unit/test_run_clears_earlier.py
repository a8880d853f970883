"""``gemini-ckpt run`` into a folder of an earlier run removes what it will not write again:
its report reads every run folder there, and paired this run's simulations with the earlier
run's measurements (after ``--no-real``) and a calibration they were not made for."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from gemini_ckpt.commands.run import _clear_earlier

EARLIER = [
    "sim-gemini/summary.json",
    "sim-baseline/summary.json",
    "real-gemini/summary.json",
    "real-baseline/summary.json",
    "sweep/mtbf-1h-gemini/summary.json",
    "calibration.yaml",
    "demo.mp4",
    "notes.txt",  # not the run's: left alone
]


def earlier_run(out: Path) -> None:
    for name in EARLIER:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("earlier")


def left(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_what_this_run_does_not_write_again_is_removed(tmp_path: Path) -> None:
    earlier_run(tmp_path)
    said = Console(file=open(tmp_path / "said.log", "w"), width=200)  # noqa: SIM115
    _clear_earlier(
        tmp_path,
        {"sim-gemini", "sim-baseline"},  # --no-real --no-sweep
        keep=[],
        calibrating=False,  # --no-calibrate
        video=False,  # --no-video
        console=said,
    )
    said.file.close()
    assert left(tmp_path) == [
        "notes.txt",
        "said.log",
        "sim-baseline/summary.json",
        "sim-gemini/summary.json",
    ]
    assert "removing" in (tmp_path / "said.log").read_text()


def test_what_this_run_writes_again_and_a_given_calibration_stay(tmp_path: Path) -> None:
    earlier_run(tmp_path)
    names = {"sim-gemini", "sim-baseline", "real-gemini", "real-baseline"}
    _clear_earlier(
        tmp_path,
        names,
        keep=[tmp_path / "calibration.yaml"],  # --calibration OUT/calibration.yaml
        calibrating=False,
        video=True,
        console=Console(quiet=True),
    )
    assert left(tmp_path) == sorted(set(EARLIER) - {"sweep/mtbf-1h-gemini/summary.json"})
