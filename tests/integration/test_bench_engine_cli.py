"""``gemini-ckpt bench engine`` measures the engine and, with ``--training``, training with
checkpoints (its workload from ``benchmarks.engine_training``: once a wrong import made the
command print "training and model memory: skipped" on every run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", "bench", "engine", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow  # 17-32 s; its refusals below stay in the default run
def test_bench_engine_measures_training_and_the_model_memory() -> None:
    small = ["--size-mb", "4", "--repeats", "1", "--models", "tiny", "--iterations", "8"]
    done = bench(*small, "--training-repeats", "1", "--nodes", "2", "--ranks-per-node", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped" not in done.stdout
    assert "demo model (19.5M parameters" in done.stdout  # --memory-model's default
    assert "training     tiny model (0.8M parameters" in done.stdout
    assert "interleaved" in done.stdout and "blocking" in done.stdout


def test_too_few_iterations_to_time_are_refused() -> None:
    done = bench("--iterations", "7")
    assert done.returncode == 2
    assert "--iterations" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--repeats", "0"], "--repeats"),  # was a StatisticsError
        (["--size-mb", "0"], "--size-mb"),  # was "2624.00 bytes per state byte"
        (["--models", "tiny,mediun"], "--models"),  # was refused after the micro-benchmarks
        (["--memory-model", "huge"], "--memory-model"),
    ],
)
def test_bad_arguments_are_refused_before_any_benchmark(args: list[str], named: str) -> None:
    done = bench(*args)
    assert done.returncode == 2, done.stdout[-2000:]
    assert named in done.stderr and "Traceback" not in done.stderr
    assert "state:" not in done.stdout  # no micro-benchmark ran
