"""``gemini-ckpt run`` into a folder of an earlier run removes what it will not write again:
its report reads every run folder there, and paired this run's simulations with the earlier
run's measurements (after ``--no-real``). Only the names the command writes are touched."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from gemini_ckpt.commands.run import _clear_earlier

OURS = [
    "sim-gemini/summary.json",
    "sim-baseline/summary.json",
    "real-gemini/summary.json",
    "real-baseline/summary.json",
    "sweep/mtbf-1h-gemini/summary.json",
]
THEIRS = [  # not written by `gemini-ckpt run`: never removed
    "notes.txt",
    "calibration.yaml",  # a calibration made by hand, say
    "sim-quickstart/summary.json",  # `gemini-ckpt sim`'s default folder name
    "real-gemini-before-the-fix/summary.json",
]


def earlier_run(out: Path) -> None:
    for name in OURS + THEIRS:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("earlier")


def left(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_what_this_run_does_not_write_again_is_removed(tmp_path: Path) -> None:
    earlier_run(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sweep" / "linked").symlink_to(tmp_path / "elsewhere")  # a link: left alone
    said = Console(file=open(tmp_path / "said.log", "w"), width=200)  # noqa: SIM115
    # --no-real --no-sweep
    _clear_earlier(tmp_path, {"sim-gemini", "sim-baseline"}, console=said)
    said.file.close()
    assert left(tmp_path) == sorted(
        [*THEIRS, "said.log", "sim-baseline/summary.json", "sim-gemini/summary.json"]
    )
    assert (tmp_path / "sweep" / "linked").is_symlink()
    assert "removing" in (tmp_path / "said.log").read_text()


def test_what_this_run_writes_again_stays(tmp_path: Path) -> None:
    earlier_run(tmp_path)
    names = {"sim-gemini", "sim-baseline", "real-gemini", "real-baseline", "sweep/mtbf-1h-gemini"}
    _clear_earlier(tmp_path, names, console=Console(quiet=True))
    assert left(tmp_path) == sorted(OURS + THEIRS)
