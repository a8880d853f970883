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
      node_start_s: 1.3             # a replacement node's agent and store, from runs
      retrieval_overhead_s: 0.05    # fixed cost of a restore from memory, from runs
      run_iteration_time_s: 0.04    # iteration time in the runs (the phases are scaled to it)
      save_time_s: 0.1              # the baseline's blocking save, from its runs
    overrides: [cluster.copy_bandwidth_gbyte_s=5.8, ...]

``gemini-ckpt run`` calibrates first with micro-measurements of an in-process recovery
(``real.calibrate.measure_recovery``, a few seconds, never the scenario's own run) and writes
``OUT/calibration.yaml`` with ``source: micro``::

    measurements:
      spare_join_s: 0.38          # a warm rank joins a fresh group and builds the model + DDP
      rejoin_s: 0.35              # a survivor leaves its group, joins a fresh one, re-wraps DDP
      park_s: 0.01                # a survivor tears its broken group down
      collective_failure_s: 0.06  # a peer vanishes -> the survivor's all-reduce raises
      probe_s: 0.0002             # a probe round trip (live and refused)
      exit_notice_s: 0.01         # SIGKILL of a child -> its parent reaps it
      state_load_s: 0.05          # loading a copy of the state into model and optimizer
      agent_poll_s: 0.02          # the harness's polling periods (its constants)
      root_poll_s: 0.05
      micro_iteration_time_s: 0.2 # the scenario's model on recovery_ranks ranks (its world)
      micro_iteration_phases: [...]

``recovery_costs`` turns them into the scenario's recovery costs (the rules are in its
docstring).

``calibration_overrides`` is the one rule that maps measurements to ``key=value`` overrides,
which ``gemini-ckpt sim --set`` (or ``--calibration FILE``) applies. ``measurements_from_runs``
takes the recovery costs the simulator models as constants (stop, restart, software detection,
a replacement node's start, the fixed part of a restore, the iteration time) from measured run
folders; scenarios calibrated that way must be left out of the validation
median (``analysis.compare.validate(calibration_scenarios=...)``).

Pure functions; no torch. The loader is strict about types and says which key is wrong.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from analysis.results import RunResult

MEASUREMENTS: dict[str, str] = {
    "memory_copy_gbyte_s": "cluster.copy_bandwidth_gbyte_s",
    "loopback_tcp_gbit_s": "cluster.network_bandwidth_gbit_s",
    "stop_s": "recovery.stop_s",
    "exit_report_s": "detection.exit_report_s",
    "retrieval_overhead_s": "recovery.retrieval_overhead_s",
    "save_time_s": "cluster.storage.save_time_s",
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


def recovery_costs(measurements: Mapping[str, Any]) -> dict[str, float]:
    """The in-process recovery's costs from micro-measurements (``source: micro``), s.

    The harness's agents poll every ``agent_poll_s`` and its root every ``root_poll_s``; a
    message waits half a period on average at each hop:

    - ``detection.exit_report_s`` = exit notice + agent poll / 2 + root poll / 2;
    - ``detection.probe_detection_s`` = collective failure + agent poll / 2 (the trainer's
      report) + root poll / 2 + probe round trip;
    - ``recovery.stop_s`` = agent poll / 2 (the agents see the stop) + park + agent poll / 2
      (the abort settles) + root poll / 2 (the root reads the acknowledgements);
    - ``recovery.restart_s`` = agent poll / 2 (the agents see the new attempt) + the slower of
      a spare's join and a survivor's rejoin (every rank waits for the group);
    - ``recovery.retrieval_overhead_s`` = loading the state into model and optimizer;
    - the iteration (``micro_iteration_time_s`` and its phases): measured on
      ``recovery_ranks`` ranks (the world size, up to 8); when the scenario's ranks all share
      this host (``single_host``) and are more, each gets a smaller share of its CPUs, so the
      iteration is scaled by ``max(1, world_size / cpus) / max(1, recovery_ranks / cpus)``
      (returned as ``iteration_scale``; 1 when the benchmark ran the whole world).

    Only what was measured is returned.
    """
    agent = _number(measurements, "agent_poll_s") or 0.0
    root = _number(measurements, "root_poll_s") or 0.0
    hop = agent / 2 + root / 2
    out: dict[str, float] = {}
    notice = _number(measurements, "exit_notice_s")
    if notice is not None:
        out["exit_report_s"] = notice + hop
    failure = _number(measurements, "collective_failure_s")
    probe = _number(measurements, "probe_s")
    if failure is not None:
        out["probe_detection_s"] = failure + hop + (probe or 0.0)
    park = _number(measurements, "park_s")
    if park is not None:
        out["stop_s"] = agent / 2 + park + hop
    joins = [
        v
        for v in (_number(measurements, "spare_join_s"), _number(measurements, "rejoin_s"))
        if v is not None
    ]
    if joins:
        out["restart_s"] = agent / 2 + max(joins)
    load = _number(measurements, "state_load_s")
    if load is not None:
        out["retrieval_overhead_s"] = load
    cpus = _number(measurements, "cpus")
    world = _number(measurements, "world_size")
    ranks = _number(measurements, "recovery_ranks")
    if cpus and world and ranks and measurements.get("single_host") is True:
        out["iteration_scale"] = max(1.0, world / cpus) / max(1.0, ranks / cpus)
    return out


MICRO_FIELDS = {
    "exit_report_s": "detection.exit_report_s",
    "probe_detection_s": "detection.probe_detection_s",
    "stop_s": "recovery.stop_s",
    "restart_s": "recovery.restart_s",
    "retrieval_overhead_s": "recovery.retrieval_overhead_s",
}
"""Costs from ``recovery_costs`` and the scenario fields they set."""


def calibration_overrides(calibration: Mapping[str, Any]) -> list[str]:
    """Scenario overrides (``dotted.key=value``) for the simulator from a calibration.

    Accepts the whole calibration document or just its ``measurements`` mapping. Rules:

    - memory copy, loopback TCP, stop, software detection and iteration time map one to one
      (``MEASUREMENTS``);
    - storage bandwidth: the smaller of write and read (the simulator has one aggregate
      bandwidth for both directions);
    - restart: the end-to-end ``restart_s`` when measured, else process start plus process
      group formation;
    - a replacement node's start: ``node_start_s`` from runs, else ``process_start_s`` (its
      agent is a fresh Python importing torch);
    - the iteration profile (``iteration_phases``) becomes ``training.phases``, and then
      ``training.iteration_time_s`` is left out (the phases define the iteration); the phases
      are scaled to ``run_iteration_time_s`` when runs measured it (which otherwise replaces
      ``iteration_time_s``).

    Micro-measurements of an in-process recovery (``gemini-ckpt run``'s own calibration) set
    what they measure by ``recovery_costs``, unless the same cost was measured by runs.

    Raises:
        ValueError: a measurement that is not a non-negative number, or a bad phase.
    """
    measurements = calibration.get("measurements", calibration)
    if not isinstance(measurements, Mapping):
        raise ValueError(f"calibration measurements must be a mapping, got {measurements!r}")
    micro = recovery_costs(measurements)
    if micro:
        overrides = _micro_overrides(measurements, micro)
        return [*overrides, *_plain_overrides(measurements, skip=overrides)]
    return _plain_overrides(measurements)


def _micro_overrides(measurements: Mapping[str, Any], micro: Mapping[str, float]) -> list[str]:
    overrides = [
        f"{field}={_fmt(micro[key])}"
        for key, field in MICRO_FIELDS.items()
        if key in micro and _number(measurements, key) is None  # runs measured it: theirs
    ]
    iteration = _number(measurements, "micro_iteration_time_s")
    # Runs, or a profile of the scenario's whole world size, say more about the iteration.
    measured = ("run_iteration_time_s", "iteration_time_s", "iteration_phases")
    if iteration and not any(measurements.get(key) for key in measured):
        scale = micro.get("iteration_scale", 1.0)
        phases = measurements.get("micro_iteration_phases")
        if phases:
            overrides.append(f"training.phases={_phases_yaml(phases, iteration * scale)}")
        else:
            overrides.append(f"training.iteration_time_s={_fmt(iteration * scale)}")
    return overrides


def _plain_overrides(measurements: Mapping[str, Any], skip: Collection[str] = ()) -> list[str]:
    """The rules above for everything but the micro-measurements; ``skip``: overrides
    already made (their fields are left alone)."""
    fields = {o.split("=", 1)[0] for o in skip}
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
    node_start = _number(measurements, "node_start_s")
    if node_start is None:
        node_start = _number(measurements, "process_start_s")
    if node_start is not None:
        overrides.append(f"recovery.node_start_s={_fmt(node_start)}")
    run_iteration = _number(measurements, "run_iteration_time_s")
    if phases:
        overrides.append(f"training.phases={_phases_yaml(phases, run_iteration)}")
    elif run_iteration:
        overrides = [o for o in overrides if not o.startswith("training.iteration_time_s=")]
        overrides.append(f"training.iteration_time_s={_fmt(run_iteration)}")
    if any(f.startswith("training.") for f in fields):
        overrides = [o for o in overrides if not o.startswith("training.")]
    return [o for o in overrides if o.split("=", 1)[0] not in fields]


def _phases_yaml(phases: Any, total_s: float | None = None) -> str:
    """The phases as a YAML flow list; scaled to sum to ``total_s`` when given."""
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
    scale = 1.0
    if total_s:
        scale = total_s / sum(float(phase[1]) for phase in phases)
    for phase in phases:
        items.append(f"{{kind: {phase[0]}, duration_s: {_fmt(float(phase[1]) * scale)}}}")
    return "[" + ", ".join(items) + "]"


def measurements_from_runs(
    runs: Sequence[RunResult], *, replacement_s: float = 0.0, transfer_s: float = 0.0
) -> dict[str, float]:
    """Recovery costs measured by real runs (medians over their complete failures).

    - ``stop_s``: the stop phase of trainer crashes (a lost node's peers stop while it is
      being detected, so their stop says little about the cost of stopping);
    - ``restart_s``: restart begins -> process group ready;
    - ``exit_report_s``: detection of trainer crashes;
    - ``node_start_s``: the replacement phase minus the scenario's ``replacement_s`` (what
      starting the new node's agent and store took);
    - ``retrieval_overhead_s``: retrieval from memory (local or peer) minus ``transfer_s``,
      the time its bytes take (the fixed part of a restore);
    - ``run_iteration_time_s``: the median iteration time of the runs (without checkpointing
      when they measured it), to which the profiled phases are scaled;
    - ``save_time_s``: the blocking save of the persistent baseline (``persist_done`` events
      with ``blocking`` and ``seconds``), which sets its HighFreq interval.

    Only measured (``real``) runs count; phases never observed are left out. The recovery
    phases come from the Gemini runs when there are any: a restart builds the strategy's
    checkpoint engine, and the simulator's subject is Gemini's recovery (on our 2-core machine
    the persistent baseline's restarts in the quickstart took ~2 s longer).
    """
    measured = [r for r in runs if r.source == "real"]
    recovering = [r for r in measured if r.strategy == "gemini"] or measured
    complete = [f for r in recovering for f in r.summary.failures if f.complete]
    software = [f for f in complete if f.kind == "software"]
    stops = [f.stop_s for f in software] or [f.stop_s for f in complete]
    restarts = [f.restart_s for f in complete if f.restart_s > 0]
    exits = [f.detection_s for f in software]
    replacements = [f.replacement_s for f in complete if f.replacement_s > 0]
    retrievals = [f.retrieval_s for f in complete if f.tier in ("local", "peer")]
    iterations = [
        r.summary.iteration_time_no_ckpt_s or r.summary.iteration_time_s
        for r in measured
        if (r.summary.iteration_time_no_ckpt_s or r.summary.iteration_time_s) > 0
    ]
    out: dict[str, float] = {}
    if stops:
        out["stop_s"] = statistics.median(stops)
    if restarts:
        out["restart_s"] = statistics.median(restarts)
    if exits:
        out["exit_report_s"] = statistics.median(exits)
    if replacements:
        out["node_start_s"] = max(0.0, statistics.median(replacements) - replacement_s)
    if retrievals:
        out["retrieval_overhead_s"] = max(0.0, statistics.median(retrievals) - transfer_s)
    if iterations:
        out["run_iteration_time_s"] = statistics.median(iterations)
    saves = [
        float(seconds)
        for r in measured
        if r.strategy == "persistent"
        for e in r.events
        if e.kind == "persist_done"
        and e.details.get("blocking") is True
        and isinstance(seconds := e.details.get("seconds"), int | float)
    ]
    if saves:
        out["save_time_s"] = statistics.median(saves)
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
