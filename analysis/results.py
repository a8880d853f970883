"""Result folders: what a simulated or measured run left behind, loaded for analysis.

A *run folder* is what ``gemini-ckpt sim`` and ``gemini-ckpt real`` write: ``events.jsonl``
(one ``shared.events.Event`` per line) and ``summary.json`` (a ``shared.summary.RunSummary``).
A simulator run with several seeds writes ``summary.json`` at the top and one ``seed-<n>/``
folder per seed; its events are read from the first seed's folder.

Everything in ``analysis/`` starts from a ``RunResult``: the folder, its summary, its events,
and a short label (``sim-gemini``, ``real-persistent`` ...) used in tables and legends. Runs
are *paired* for validation when they share scenario and strategy and differ in source.

``gemini-ckpt run`` writes one folder per (source, strategy) under its output folder;
``find_run_folders`` finds them again, so ``gemini-ckpt report DIR`` accepts either run
folders or a folder of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.errors import RunFolderError
from shared.events import Event, read_events
from shared.summary import RunSummary, read_summary

SUMMARY = "summary.json"
EVENTS = "events.jsonl"


@dataclass(frozen=True)
class RunResult:
    """One loaded run folder.

    Attributes:
        path: the folder.
        summary: its ``summary.json``.
        events: its events, ordered by time (empty when the folder has no event log).
    """

    path: Path
    summary: RunSummary
    events: tuple[Event, ...]

    @property
    def source(self) -> str:
        """``sim`` or ``real``."""
        return self.summary.source

    @property
    def strategy(self) -> str:
        """``gemini`` or ``persistent``."""
        return self.summary.strategy

    @property
    def scenario(self) -> str:
        return self.summary.scenario

    @property
    def label(self) -> str:
        """Short name for legends: ``<source>-<strategy>``, e.g. ``sim-gemini``."""
        return f"{self.source}-{self.strategy}"

    @property
    def long_label(self) -> str:
        """Label with the scenario and folder name, unique across a report."""
        return f"{self.scenario} {self.label} ({self.path.name})"


def load_run(path: str | Path) -> RunResult:
    """Load one run folder.

    Raises:
        RunFolderError: when the folder or its ``summary.json`` is missing or invalid, or the
            event log has a bad line (the message names the file and line).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: no such run folder (expected a folder with {SUMMARY})")
    summary_path = folder / SUMMARY
    if not summary_path.is_file():
        raise RunFolderError(
            f"{folder}: no {SUMMARY}; run `gemini-ckpt sim` or `gemini-ckpt real` with "
            f"--out {folder} first"
        )
    try:
        summary = read_summary(summary_path)
    except (ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"{summary_path}: not a run summary ({error})") from error
    events_path = _events_path(folder)
    events: list[Event] = []
    if events_path is not None:
        try:
            events = read_events(events_path)
        except ValueError as error:
            raise RunFolderError(str(error)) from error
    events.sort(key=lambda e: e.time_s)
    return RunResult(folder, summary, tuple(events))


def _events_path(folder: Path) -> Path | None:
    direct = folder / EVENTS
    if direct.is_file():
        return direct
    seeds = sorted(
        (p for p in folder.glob("seed-*") if (p / EVENTS).is_file()),
        key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0,
    )
    return seeds[0] / EVENTS if seeds else None


def find_run_folders(path: str | Path, *, skip_unfinished: bool = False) -> list[Path]:
    """The run folders at or under ``path``: the folder itself if it holds a summary, else
    its sub-folders (recursively) that do, skipping the per-seed folders of a multi-seed run.

    With ``skip_unfinished``, a folder holding only runs stopped before they ended
    (``unfinished_run_folders``) gives none: a report skips those, with a warning.

    Raises:
        RunFolderError: when ``path`` does not exist or holds no run folder, finished or not.
    """
    root = Path(path)
    if not root.exists():
        raise RunFolderError(f"{root}: no such folder")
    if (root / SUMMARY).is_file():
        return [root]
    found: list[Path] = []
    for summary in sorted(root.rglob(SUMMARY)):
        folder = summary.parent
        if folder.name.startswith("seed-") and (folder.parent / SUMMARY).is_file():
            continue
        found.append(folder)
    if not found and not (skip_unfinished and unfinished_run_folders(root)):
        raise RunFolderError(f"{root}: holds no run folder (no {SUMMARY} in it or below)")
    return found


def unfinished_run_folders(path: str | Path) -> list[Path]:
    """Folders at or under ``path`` that hold a run's event files but no summary: runs
    stopped before they ended (a Ctrl-C, a crash of the launcher), which a report skips."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(
        events.parent
        for events in root.rglob("events")
        if events.is_dir() and not (events.parent / SUMMARY).is_file()
    )


def failed_reason(summary: RunSummary) -> str | None:
    """Why the run's job failed (the root gave it up, the launcher's timeout), or None: the
    summary of a failed run says so (``extra["failed"]``) and tells what happened until then,
    not what the scenario measures."""
    value = summary.extra.get("failed")
    return str(value) if value else None


def failed_run_folders(path: str | Path) -> list[tuple[Path, str]]:
    """Run folders at or under ``path`` whose job failed, with the reason (``load_runs``
    leaves them out)."""
    try:
        folders = find_run_folders(path)
    except RunFolderError:
        return []
    found = []
    for folder in folders:
        try:
            reason = failed_reason(read_summary(folder / SUMMARY))
        except (OSError, ValueError, KeyError, TypeError):  # load_runs says what is wrong
            continue
        if reason is not None:
            found.append((folder, reason))
    return found


def load_runs(paths: Iterable[str | Path], *, skip_unfinished: bool = False) -> list[RunResult]:
    """Load every run folder at or under each path, in order, without duplicates, leaving out
    runs whose job failed (``failed_run_folders``); ``skip_unfinished``: as
    ``find_run_folders``."""
    seen: set[Path] = set()
    runs: list[RunResult] = []
    for path in paths:
        for folder in find_run_folders(path, skip_unfinished=skip_unfinished):
            key = folder.resolve()
            if key not in seen:
                seen.add(key)
                run = load_run(folder)
                if failed_reason(run.summary) is None:
                    runs.append(run)
    return runs


def pair_runs(runs: Sequence[RunResult]) -> list[tuple[RunResult, RunResult]]:
    """(simulated, measured) pairs of runs with the same scenario and strategy.

    When several runs of one kind exist for a key, the first of each is paired.
    """
    sims: dict[tuple[str, str], RunResult] = {}
    reals: dict[tuple[str, str], RunResult] = {}
    for run in runs:
        table = sims if run.source == "sim" else reals if run.source == "real" else None
        if table is not None:
            table.setdefault((run.scenario, run.strategy), run)
    return [(sims[key], reals[key]) for key in sims if key in reals]


def shadowed_runs(runs: Sequence[RunResult]) -> list[tuple[RunResult, list[RunResult]]]:
    """For each (source, scenario, strategy) given more than once: the run ``pair_runs``
    compares (the first given) and the runs it leaves out of the comparison."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.source, run.scenario, run.strategy), []).append(run)
    return [(group[0], group[1:]) for group in groups.values() if len(group) > 1]


def select(
    runs: Sequence[RunResult], *, source: str | None = None, strategy: str | None = None
) -> list[RunResult]:
    """The runs of one source and/or strategy, in order."""
    return [
        r
        for r in runs
        if (source is None or r.source == source) and (strategy is None or r.strategy == strategy)
    ]


def split_sweep(runs: Sequence[RunResult]) -> tuple[list[RunResult], list[RunResult]]:
    """(main runs, sweep runs): sweep runs lie in a folder named ``sweep`` (``gemini-ckpt
    run`` puts its ETTR sweep there) and feed only the ETTR figure."""
    main = [r for r in runs if "sweep" not in r.path.parts]
    sweep = [r for r in runs if "sweep" in r.path.parts]
    return main, sweep
