"""The root's last line says how the job ended: a job that failed before its first attempt
(no agent on a slot, a persistent tier it may not resume from) says it never started, with
its reason, where it used to say "0 failures, summary in ..." as a finished job would; a job
that failed later says so with its reason."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from real.agent import jobkeys
from real.agent.root import summarize_ended_job
from real.coord import keys
from real.launcher import results


class RecordKV:
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def get(self, key: str) -> bytes | None:
        return keys.encode(self.record) if key == jobkeys.ATTEMPT_KEY else None


def ended(
    record: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> tuple[list[logging.LogRecord], list[Any]]:
    calls: list[Any] = []

    def summarize_run(*args: Any) -> tuple[Any, None]:
        calls.append(args)
        return SimpleNamespace(failures=[object()] * 2), None

    monkeypatch.setattr(results, "summarize_run", summarize_run)
    scenario: Any = SimpleNamespace(name="job", seed=0)
    with caplog.at_level(logging.INFO, logger="real.agent.root"):
        summarize_ended_job(RecordKV(record), Path("run"), scenario, "gemini", 3)  # type: ignore[arg-type]
    return [r for r in caplog.records if "summary in" in r.getMessage()], calls


def test_a_job_that_never_started_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reason = "the job did not start: no live agent on slot(s) [2]"
    record = {"attempt": 0, "members": {}, "state": "failed", "reason": reason}
    (line,), calls = ended(record, monkeypatch, caplog)
    assert line.levelno == logging.ERROR
    assert f"the job never started ({reason})" in line.getMessage()
    assert "failures" not in line.getMessage()
    assert calls[0][-1] == reason  # the summary carries the reason too


def test_a_failed_job_and_a_finished_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failed = {"attempt": 4, "state": "failed", "reason": "crash loop"}
    (line,), _ = ended(failed, monkeypatch, caplog)
    assert line.levelno == logging.ERROR
    assert "the job failed after 2 failures (crash loop)" in line.getMessage()
    caplog.clear()
    (line,), calls = ended({"attempt": 4, "state": "finished"}, monkeypatch, caplog)
    assert line.levelno == logging.INFO
    assert "2 failures, summary in" in line.getMessage()
    assert calls[0][-1] is None
