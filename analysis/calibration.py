"""Calibration: measured figures of a machine, turned into scenario overrides for the simulator.

The simulator predicts recovery from a scenario's numbers (bandwidths, restart cost, iteration
time); on a given machine those numbers are measured, not guessed. ``gemini-ckpt calibrate``
(``real/calibrate.py``, which needs torch) measures them and writes a *calibration file*::

    version: 1
    machine: {hostname: ..., cpus: 2, torch: 2.13.0}
    scenario: quickstart            # whose model and world size were profiled
    scenarios_used: [quickstart]    # scenarios whose measured runs calibrated the file
    measurements:
      memory_copy_gbyte_s: 5.8      # one thread, large buffers
      loopback_tcp_gbit_s: 31.0     # between two processes over TCP on this host
      storage_write_gbit_s: 6.1     # file written and fsync'ed in the run folder's filesystem
      storage_read_gbit_s: 9.4      # read back after dropping it from the page cache
      process_start_s: 2.1          # python + import torch
      process_group_s: 0.4          # gloo init_process_group + barrier
      restart_s: 4.9                # spawn the ranks -> process group ready, end to end
      iteration_time_s: 0.045       # median, the scenario's model on its world size
      iteration_phases: [[compute, 0.02], [communication, 0.01], ...]
      stop_s: 0.1                   # from measured runs (--from-run)
      exit_report_s: 0.05           # software-failure detection, from measured runs
    overrides: [cluster.copy_bandwidth_gbyte_s=5.8, ...]

``calibration_overrides`` is the one rule that maps measurements to ``key=value`` overrides,
which ``gemini-ckpt sim --set`` (or ``--calibration FILE``) applies. ``measurements_from_runs``
takes the recovery costs the simulator models as constants (stop, restart, software detection)
from measured run folders; scenarios calibrated that way must be left out of the validation
median (``analysis.compare.validate(calibration_scenarios=...)``).

Pure functions; no torch. The loader is strict about types and says which key is wrong.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from analysis.results import RunResult

MEASUREMENTS: dict[str, str] = {
    "memory_copy_gbyte_s": "cluster.copy_bandwidth_gbyte_s",
    "loopback_tcp_gbit_s": "cluster.network_bandwidth_gbit_s",
    "stop_s": "recovery.stop_s",
    "exit_report_s": "detection.exit_report_s",
    "iteration_time_s": "training.iteration_time_s",
}
"""Measurements copied one to one into a scenario field."""


def _number(measurements: Mapping[str, Any], key: str) -> float | None:
    value = measurements.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"calibration measurement {key} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"calibration measurement {key} must be >= 0, got {value}")
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def calibration_overrides(calibration: Mapping[str, Any]) -> list[str]:
    """Scenario overrides (``dotted.key=value``) for the simulator from a calibration.

    Accepts the whole calibration document or just its ``measurements`` mapping. Rules:

    - memory copy, loopback TCP, stop, software detection and iteration time map one to one
      (``MEASUREMENTS``);
    - storage bandwidth: the smaller of write and read (the simulator has one aggregate
      bandwidth for both directions);
    - restart: the end-to-end ``restart_s`` when measured, else process start plus process
      group formation;
    - the iteration profile (``iteration_phases``) becomes ``training.phases``, and then
      ``training.iteration_time_s`` is left out (the phases define the iteration).

    Raises:
        ValueError: a measurement that is not a non-negative number, or a bad phase.
    """
    measurements = calibration.get("measurements", calibration)
    if not isinstance(measurements, Mapping):
        raise ValueError(f"calibration measurements must be a mapping, got {measurements!r}")
    overrides: list[str] = []
    phases = measurements.get("iteration_phases")
    for key, field in MEASUREMENTS.items():
        value = _number(measurements, key)
        if value is None or (key == "iteration_time_s" and phases):
            continue
        if value == 0 and field.endswith(("gbyte_s", "gbit_s", "iteration_time_s")):
            continue  # the schema wants these positive; a zero measurement is a failed one
        overrides.append(f"{field}={_fmt(value)}")
    storage = [
        v
        for v in (
            _number(measurements, "storage_write_gbit_s"),
            _number(measurements, "storage_read_gbit_s"),
        )
        if v
    ]
    if storage:
        overrides.append(f"cluster.storage.bandwidth_gbit_s={_fmt(min(storage))}")
    restart = _number(measurements, "restart_s")
    if restart is None:
        start = _number(measurements, "process_start_s")
        group = _number(measurements, "process_group_s")
        if start is not None or group is not None:
            restart = (start or 0.0) + (group or 0.0)
    if restart is not None:
        overrides.append(f"recovery.restart_s={_fmt(restart)}")
    if phases:
        overrides.append(f"training.phases={_phases_yaml(phases)}")
    return overrides


def _phases_yaml(phases: Any) -> str:
    if not isinstance(phases, Sequence) or isinstance(phases, str):
        raise ValueError(f"iteration_phases must be a list of [kind, seconds], got {phases!r}")
    items = []
    for phase in phases:
        if (
            not isinstance(phase, Sequence)
            or isinstance(phase, str)
            or len(phase) != 2
            or phase[0] not in ("compute", "communication")
            or isinstance(phase[1], bool)
            or not isinstance(phase[1], int | float)
            or phase[1] <= 0
        ):
            raise ValueError(
                f"iteration_phases entry {phase!r}: expected [compute|communication, seconds > 0]"
            )
        items.append(f"{{kind: {phase[0]}, duration_s: {_fmt(float(phase[1]))}}}")
    return "[" + ", ".join(items) + "]"


def measurements_from_runs(runs: Sequence[RunResult]) -> dict[str, float]:
    """Recovery costs measured by real runs: medians of stop, restart and software detection.

    Only measured (``real``) runs count; phases never observed are left out.
    """
    measured = [r for r in runs if r.source == "real"]
    stops = [f.stop_s for r in measured for f in r.summary.failures if f.complete]
    restarts = [f.restart_s for r in measured for f in r.summary.failures if f.restart_s > 0]
    exits = [
        f.detection_s
        for r in measured
        for f in r.summary.failures
        if f.kind == "software" and f.complete
    ]
    out: dict[str, float] = {}
    if stops:
        out["stop_s"] = statistics.median(stops)
    if restarts:
        out["restart_s"] = statistics.median(restarts)
    if exits:
        out["exit_report_s"] = statistics.median(exits)
    return out


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read a calibration file; ValueError names the file when it is not one."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{file}: cannot read calibration ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("measurements"), dict):
        raise ValueError(f"{file}: not a calibration file (no `measurements` mapping)")
    try:
        calibration_overrides(data)
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from error
    return data


def write_calibration(path: str | Path, calibration: Mapping[str, Any]) -> Path:
    """Write a calibration document, with its ``overrides`` filled in, as YAML."""
    document = dict(calibration)
    document["overrides"] = calibration_overrides(document)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# gemini-ckpt calibration: measured on this machine; see docs/analysis.md\n"
    out.write_text(header + yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return out


def calibration_scenarios(calibration: Mapping[str, Any]) -> list[str]:
    """Names of the scenarios whose measured runs calibrated the file."""
    used = calibration.get("scenarios_used") or []
    return [str(name) for name in used]
