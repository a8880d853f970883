"""Calibration: measured figures of a machine, turned into scenario overrides for the simulator.

The simulator predicts recovery from a scenario's numbers (bandwidths, restart cost, iteration
time); on a given machine those numbers are measured, not guessed. ``gemini-ckpt calibrate``
(``benchmarks/calibrate.py``, which needs torch) measures them and writes a *calibration file*::

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
(``benchmarks.calibrate.measure_recovery``, a few seconds, never the scenario's own run) and writes
``OUT/calibration.yaml`` with ``source: micro``::

    measurements:
      spare_join_s: 0.38          # a warm rank joins a fresh group and builds the model + DDP
                                  # (the median of the rounds' slowest ranks:)
      spare_join_rounds_s: [0.41, 0.38, 0.36]
      rejoin_s: 0.35              # a survivor leaves its group, joins a fresh one, re-wraps DDP
      engine_rejoin_s: 0.5        # Gemini under DDP: the same right after its engine closed as
                                  # a failure closes it, the next engine's build included
                                  # (recorded, not used by the rules)
      park_s: 0.01                # a survivor tears its broken group down
      collective_failure_s: 0.06  # a peer vanishes -> the survivor's all-reduce raises
      probe_s: 0.0002             # a probe round trip (live and refused)
      exit_notice_s: 0.01         # SIGKILL of a child -> its agent's exit watch sees it
      exit_detection_s: 0.02      # SIGKILL -> the root's verdict, along the harness's chain,
                                  # beside the ranks as they train (benchmarks.exit_chain;
                                  # recorded, not used by the rules)
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
    "stop_parked_s": "recovery.stop_parked_s",
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


def recovery_costs(
    measurements: Mapping[str, Any], strategy: str | None = None
) -> dict[str, float]:
    """The in-process recovery's costs from micro-measurements (``source: micro``), s, for
    ``strategy`` (``persistent``: the baseline, which has no in-memory engine to close or to
    build; else Gemini's).

    The harness's agents poll every ``agent_poll_s`` and its root every ``root_poll_s``; a
    message waits half a period on average at each hop, plus ``hop_work_s`` when measured (the
    CPU a poller waits for and spends once woken; the laws scale it with the host's load), so
    below "agent poll / 2" stands for agent poll / 2 + hop work, "root poll / 2" likewise:

    - ``detection.exit_report_s`` = exit notice (the signal's delivery + half the period of
      the agent's exit watch, ``EXIT_WATCH_S``: the agent learns of it from that watch, not
      from a poll) + hop work + root poll / 2 (until 2026-12-05, when the agents learned of an
      exit only after the process's teardown, agent poll / 2 + root poll / 2, the agent's
      half poll standing in for that teardown). The root has waited on a watch since
      2026-12-05, so no half poll is paid as such: the term stood, unknown to the rule, for
      the probe of every member the root made before it reported a crash (no longer waited
      for since 2026-12-06: ``real.coord.detector``) and now stands for the emulated
      cluster's own load on the chain. ``exit_detection_s`` (a crash timed along the
      harness's chain beside the calibration's ranks, ``benchmarks.exit_chain``; fitted as a
      law) is recorded but not used: tried on 2026-12-06 in place of this rule, it
      under-predicted the whole validation's crash detections by 5-58% (docs/analysis.md,
      "A crash's detection timed along its chain"), so it was withdrawn;
    - ``detection.collective_failure_s`` = collective failure: a lost node's agent (a
      stand-in holding what an agent holds: its modules, torch and a rendezvous store), its
      trainer, its warm spare and (Gemini) its node store, started as the launcher and a
      node agent start them (fresh processes, each owning its pages, in sessions of their
      own, the trainers at their niceness), are killed as an iteration ends, after its save,
      while the survivors go on training, until the first one's all-reduce fails (the median
      of ``collective_failure_rounds_s``; the simulator waits for the later of this and the
      survivors' next collective). Their teardowns compete for the CPUs, the agent's with
      the trainer's: it was left out until 2026-12-07 13:47 UTC, when every probed lost
      node of a repeated validation was under-predicted by 15-50% (changed **after seeing
      those misses**, docs/analysis.md, "The node's agent lost with it"). By the laws
      (``law_costs``) it grows with the CPU share, as the lost trainer's teardown and the
      survivors' wake-ups after it wait for a CPU: a constant until 2026-12-07 15:58 UTC
      (changed after seeing misses too: "A lost node's collective failure in the CPU
      share"). Until 2026-12-07
      a rank forked from the calibration's warm process vanished alone
      (``collective_failure_forked_s``, still recorded): it shares most of its pages with
      that process and dies faster than a harness trainer (44 ms against 71-81 ms side by
      side, 74-123 ms in the harness's traces: changed **after seeing misses**,
      docs/analysis.md);
    - ``detection.probe_detection_s`` = 2 x hop work (the trainer's report to its agent, the
      agent's suspect record to the root) + probe round trip. Until 2026-12-07 it was
      collective failure + agent poll / 2 + root poll / 2 + probe, after the wait for the
      survivors' next collective, whose failure the calibration timed with the survivors
      idle inside their all-reduce: a lost node traced along the
      harness's chain showed the half polls phantom (the agent and the root wake on a socket
      and a watch: 5-9 ms from the trainer's report to the verdict) and the survivors'
      report 104-144 ms after the loss, where the rule gave 85 ms (docs/analysis.md, "A lost
      node's detection traced"); changed after seeing those misses;
    - ``recovery.stop_s`` = agent poll / 2 (the agents see the stop; it stands for a survivor
      still in its step, too) + closing the checkpoint engine (``engine_close_s``, when
      measured; not for the baseline) + park: the root reads the acknowledgements on its
      store watch as they are written (until 2026-12-04 also + agent poll / 2 + root poll /
      2, which no stop measured since in-process recovery has waited: docs/analysis.md,
      "Known inaccuracy");
    - ``recovery.stop_parked_s`` = agent poll / 2: the stop after a lost node that the
      survivors' broken collectives revealed (they parked before the probe found it);
    - ``recovery.restart_s`` = agent poll / 2 (the agents see the new attempt) + the slower of
      a spare's join and a survivor's rejoin (every rank waits for the group) + building the
      checkpoint engine (``engine_build_s``, when measured; not for the baseline, whose
      trainers build no engine; until 2026-12-06 it was added to the baseline's too, a change
      made after seeing the baseline's restarts below their prediction) + what a tc-limited
      link adds to the DDP bucket warm-up's gradient all-reduce (``restart_link_s``, from
      ``law_costs``). ``engine_rejoin_s`` (Gemini under DDP: a survivor's rejoin right after
      its engine was closed as a failure closes it, the next engine's build included) is
      recorded but not used: tried on 2026-12-06 for Gemini's rejoin, after seeing the main
      job's Gemini crashes under-predicted, it brought the main job within 10% in 2 of 3 runs
      but over-predicted the validation's Gemini restarts (0.10 s against 0.03-0.06 s on 4
      nodes, 0.26 s against 0.10-0.14 s on 8), so it was withdrawn;
    - ``recovery.retrieval_overhead_s`` = the in-memory engine's restore from local memory as
      the harness makes one (the root's plan, every rank at once, into the live state, then
      the trainer's load; ``engine_restore_fixed_s``, from the last rank's start to the last
      rank's state, each rank training once it has it) without its copy of
      the bytes, which the simulator adds at the copy bandwidth (under FSDP2 the law's
      ``engine_restore_fixed_zero3_s`` stands in: the restore into a trainer rebuilt around
      the new group, as the harness makes it, ``law_costs``); else (no engine measured)
      loading a copy of the state into model and optimizer (``state_load_s``);
    - ``recovery.peer_retrieval_overhead_s`` = the same restore with the last node fetching
      its shard from a peer's store instead (a lost node's replacement), less its receipt of
      the bytes into place, which the simulator moves over the links
      (``engine_restore_peer_fixed_s``; under FSDP2's laws, shifted by what the rebuilt
      trainer adds to the local restore); set only beside the local one;
    - ``recovery.spare_warmup_s`` = ``spare_warmup_s``, a spare of the scenario's trainer
      started as an agent starts one, from its start until it says it is warm (the machine
      otherwise idle; without a scenario, the built-in trainer's); and
      ``recovery.spare_background_share`` = ``spare_background_share``, the share of a CPU a
      process spinning at the background spares' niceness got while the calibration's ranks
      joined, trained, checkpointed and rejoined (the law calibration: the median over its
      reference shapes): how fast a new spare warms while the job trains;
    - ``recovery.persistent_retrieval_overhead_s`` = a restore from persistent storage as the
      harness's baseline makes one (every rank at once: the agreement on the newest iteration,
      DCP's load into the live state from a folder in the page cache, then the trainer's load;
      ``persistent_restore_fixed_s``, the slowest rank) without a copy of the bytes, which the
      simulator moves at the storage's bandwidth;
    - ``cluster.storage.save_overhead_s`` = the baseline's blocking save to persistent storage
      as its trainers make one (every rank at once: DCP's plans, files, sidecars and the
      index, to a folder in the page cache; ``persistent_save_fixed_s``, the slowest rank)
      without a copy of the bytes, which the simulator moves at the storage's bandwidth
      (a save from memory in the background pays it too);
    - the iteration (``micro_iteration_time_s`` and its phases): measured on
      ``recovery_ranks`` ranks (the world size, up to 8); when the scenario's ranks all share
      this host (``single_host``) and are more, each gets a smaller share of its CPUs, so the
      iteration is scaled by ``max(1, world_size / cpus) / max(1, recovery_ranks / cpus)``
      (returned as ``iteration_scale``; 1 when the benchmark ran the whole world).

    Only what was measured is returned.
    """
    work = _number(measurements, "hop_work_s") or 0.0
    agent = (_number(measurements, "agent_poll_s") or 0.0) + 2 * work
    root = (_number(measurements, "root_poll_s") or 0.0) + 2 * work
    out: dict[str, float] = {}
    notice = _number(measurements, "exit_notice_s")
    if notice is not None:
        out["exit_report_s"] = notice + work + root / 2
    failure = _number(measurements, "collective_failure_s")
    probe = _number(measurements, "probe_s")
    if failure is not None:
        out["collective_failure_s"] = failure
        out["probe_detection_s"] = 2 * work + (probe or 0.0)
    engine = strategy != "persistent"  # the baseline's trainers have no in-memory engine
    park = _number(measurements, "park_s")
    if park is not None:
        close = (_number(measurements, "engine_close_s") or 0.0) if engine else 0.0
        out["stop_s"] = agent / 2 + close + park
        out["stop_parked_s"] = agent / 2
    spare = _number(measurements, "spare_join_s")
    build = (_number(measurements, "engine_build_s") or 0.0) if engine else 0.0
    link = _number(measurements, "restart_link_s") or 0.0
    # ``engine_rejoin_s`` (a survivor's rejoin timed right after its engine closed) is
    # recorded, not used: taken for Gemini's rejoin it over-predicted the validation's
    # restarts (2026-12-06; docs/analysis.md).
    joins = [v for v in (spare, _number(measurements, "rejoin_s")) if v is not None]
    if joins:
        out["restart_s"] = agent / 2 + max(joins) + build + link
    load = _number(measurements, "state_load_s")
    restore = _number(measurements, "engine_restore_fixed_s")
    if restore is not None:
        out["retrieval_overhead_s"] = restore
    elif load is not None:
        out["retrieval_overhead_s"] = load
    fetch = _number(measurements, "engine_restore_peer_fixed_s")
    if fetch is not None and restore is not None:
        out["peer_retrieval_overhead_s"] = fetch
    persistent = _number(measurements, "persistent_restore_fixed_s")
    if persistent is not None:
        out["persistent_retrieval_overhead_s"] = persistent
    save = _number(measurements, "persistent_save_fixed_s")
    if save is not None:
        out["persistent_save_overhead_s"] = save
    warmup = _number(measurements, "spare_warmup_s")
    if warmup is not None:
        out["spare_warmup_s"] = warmup
    share = _number(measurements, "spare_background_share")
    if share is not None:
        out["spare_background_share"] = min(1.0, share)
    cpus = _number(measurements, "cpus")
    world = _number(measurements, "world_size")
    ranks = _number(measurements, "recovery_ranks")
    if cpus and world and ranks and measurements.get("single_host") is True:
        out["iteration_scale"] = max(1.0, world / cpus) / max(1.0, ranks / cpus)
    return out


MICRO_FIELDS = {
    "exit_report_s": "detection.exit_report_s",
    "collective_failure_s": "detection.collective_failure_s",
    "probe_detection_s": "detection.probe_detection_s",
    "stop_s": "recovery.stop_s",
    "stop_parked_s": "recovery.stop_parked_s",
    "restart_s": "recovery.restart_s",
    "retrieval_overhead_s": "recovery.retrieval_overhead_s",
    "peer_retrieval_overhead_s": "recovery.peer_retrieval_overhead_s",
    "persistent_retrieval_overhead_s": "recovery.persistent_retrieval_overhead_s",
    "persistent_save_overhead_s": "cluster.storage.save_overhead_s",
    "spare_warmup_s": "recovery.spare_warmup_s",
    "spare_background_share": "recovery.spare_background_share",
}
"""Costs from ``recovery_costs`` and the scenario fields they set."""


def calibration_overrides(calibration: Mapping[str, Any], strategy: str | None = None) -> list[str]:
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
    what they measure by ``recovery_costs``, unless the same cost was measured by runs. With
    ``strategy`` ``gemini`` the micro-benchmark's iteration with a checkpoint each
    (``engine_iteration_s``) stands for the iteration: its step's phases stretched alike to
    the step timed beside the replication (``engine_step_s``), then the save as a compute
    phase of its own, as the harness's trainers save after their step (the laws' rule;
    until 2026-12-07 all of it stretched alike, the save spread over the step's phases);
    without one, or for the baseline, the iteration without checkpoints.

    Raises:
        ValueError: a measurement that is not a non-negative number, or a bad phase.
    """
    measurements = calibration.get("measurements", calibration)
    if not isinstance(measurements, Mapping):
        raise ValueError(f"calibration measurements must be a mapping, got {measurements!r}")
    micro = recovery_costs(measurements, strategy)
    if micro:
        overrides = _micro_overrides(measurements, micro, strategy)
        return [*overrides, *_plain_overrides(measurements, skip=overrides)]
    return _plain_overrides(measurements)


def _micro_overrides(
    measurements: Mapping[str, Any], micro: Mapping[str, float], strategy: str | None
) -> list[str]:
    overrides = [
        f"{field}={_fmt(micro[key])}"
        for key, field in MICRO_FIELDS.items()
        # A cost that runs measured too (``RUN_MEASUREMENTS``) is theirs.
        if key in micro and (key not in RUN_MEASUREMENTS or _number(measurements, key) is None)
    ]
    iteration = _number(measurements, "micro_iteration_time_s")
    # Runs, or a profile of the scenario's whole world size, say more about the iteration.
    measured = ("run_iteration_time_s", "iteration_time_s", "iteration_phases")
    if iteration and not any(measurements.get(key) for key in measured):
        scale = micro.get("iteration_scale", 1.0)
        engine = _number(measurements, "engine_iteration_s")
        save = 0.0
        if strategy == "gemini" and engine:
            # As the laws do (``law_overrides``): Gemini's trainers checkpoint every iteration,
            # and the benchmark timed that too; on a host without accelerators the replication
            # takes CPU from the step, whose phases stretch alike, and the save follows it.
            plain = min(_number(measurements, "engine_step_s") or iteration, engine)
            overrides.append(f"training.iteration_no_ckpt_s={_fmt(plain * scale)}")
            save = (engine - plain) * scale
            scale *= plain / iteration
        phases = measurements.get("micro_iteration_phases")
        if phases:
            then = [["compute", save]] if save > 0 else []
            overrides.append(f"training.phases={_phases_yaml(phases, iteration * scale, then)}")
        else:
            overrides.append(f"training.iteration_time_s={_fmt(iteration * scale + save)}")
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


def _phases_yaml(
    phases: Any, total_s: float | None = None, then: Sequence[Sequence[Any]] = ()
) -> str:
    """The phases as a YAML flow list; scaled to sum to ``total_s`` when given, then
    followed by ``then`` as they are (Gemini's save after its step)."""
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
    for kind, seconds in then:
        items.append(f"{{kind: {kind}, duration_s: {_fmt(float(seconds))}}}")
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


# --- Laws: costs that transfer to shapes the calibration did not measure ---------------------

GIB = float(1 << 30)

FIXED_LAWS = (
    "engine_build_s",
    "engine_close_s",
    "engine_restore_fixed_s",
    "engine_restore_peer_fixed_s",
    "engine_restore_fixed_zero3_s",
    "fsdp2_first_state_s",
    "fsdp2_first_build_s",
    "persistent_restore_fixed_s",
    "persistent_save_fixed_s",
)
"""The engine's fixed costs and the persistent restore's and save's, each a constant times a
CPU share (``LAW_FORMS``)."""

LAW_FORMS: dict[str, str] = {
    "rejoin_s": "(r0 + r1 * ranks) * share",
    "engine_rejoin_s": "(r0 + r1 * ranks) * share",
    "spare_join_s": "(j0 + j1 * ranks + j2 * parameters_m) * share",
    "state_load_s": "(l0 + bytes / load_bytes_per_s) * share",
    "compute_s": "(c0 + 6 * parameters * tokens_per_rank / flops_per_s) * share",
    "communication_s": "(alpha_s * steps + sent_bytes / bytes_per_s) * share",
    "hop_work_s": "w * share",
    "exit_detection_s": "exit_notice_s + x * share",
    "collective_failure_s": "f0 + f1 * share + held_gib * teardown_s_per_gib * share",
    "engine_build_s": "e * share",
    "engine_close_s": "e * share",
    "engine_restore_fixed_s": "e * share",
    "engine_restore_peer_fixed_s": "e * share",
    "engine_restore_fixed_zero3_s": "e * share",
    "fsdp2_first_state_s": "e * share_one",
    "fsdp2_first_build_s": "e * share_one",
    "persistent_restore_fixed_s": "e * share",
    "persistent_save_fixed_s": "e * share",
    "checkpoint_overhead_s": "(o0 + bytes / bytes_per_s) * share",
}
"""The stated laws ``fit_laws`` fits and ``law_costs`` evaluates. ``ranks`` is the world size,
``parameters_m`` the parameters in millions, ``bytes`` the state one node restores, ``share``
the CPU time a rank waits for per second of its own work when every rank shares this host's
CPUs (``single_host``): ``max(1, (ranks + background) / cpus)``, with ``background`` the
runnable processes of other jobs (``runnable_processes``: when the sample was taken, or when
the prediction is made); 1 on a real cluster. ``share_one`` is the share of one process
that works while the others wait: ``max(1, (1 + background) / cpus)`` (a spare's first FSDP2
state and trainer, which the reference shapes measure on every rank at once). A lost node's
collective failure is fitted to the reference shapes' medians of their lost-node rounds
(``benchmarks.calibrate._lost_node_rounds``): ``held_gib`` is what the lost trainer holds of
its own (GiB; the rounds' trainer for the fit, a run profile's for a scenario), whose
teardown the survivors wait for, ``teardown_s_per_gib`` the teardown's growth in it on an
idle machine (``benchmarks.teardown.seconds_per_gib``, divided by the ``share_one`` of its
moment), and ``f0``, ``f1`` are fitted to what the rounds took beyond that term. A DDP
iteration's
collective is a ring all-reduce of the fp32 gradients (``steps`` = 2 (n - 1) messages,
``sent_bytes`` = 2 (n - 1) / n x 4 P), ZeRO-3/FSDP's two all-gathers and a reduce-scatter
(3 (n - 1) and 3 (n - 1) / n x 4 P)."""

FIRST_FSDP2 = ("fsdp2_first_state_s", "fsdp2_first_build_s")
"""What a new process's first FSDP2 state and trainer cost beyond later ones: only the spare
pays them, so they scale with one process's share (``share_one``); the survivors wait through
the first trainer, and restore beside the first state (``fsdp2_restore_fixed_s``)."""

CONSTANT_LAWS = (
    "park_s",
    "probe_s",
    "exit_notice_s",
    "agent_poll_s",
    "root_poll_s",
)
"""Micro-measurements that do not depend on the shape: their median over the samples.
``collective_failure_s`` was one of them until 2026-12-07 (a calibration of that time holds
it as a number, which ``law_costs`` still reads as a constant)."""


def runnable_processes(seconds: float = 1.0, samples: int = 20) -> float:
    """Other processes running or waiting for a CPU on this host now: the mean of the kernel's
    ``procs_running`` over ``seconds`` (this process, which reads it, left out). Unlike the
    load average it does not remember a job that ended a minute ago. Falls back to the
    1-minute load average where ``/proc/stat`` is absent."""
    import os
    import time

    counts = []
    for index in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                for line in stat:
                    if line.startswith("procs_running"):
                        counts.append(int(line.split()[1]) - 1)
                        break
        except OSError:
            break
        if index + 1 < samples:
            time.sleep(seconds / samples)
    if not counts:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(0.0, statistics.fmean(counts))


def _nonnegative_fit(rows: Sequence[Sequence[float]], values: Sequence[float]) -> list[float]:
    """Least squares with non-negative coefficients (a cost never falls as a shape grows)."""
    import numpy as np
    from scipy.optimize import nnls

    solution, _ = nnls(np.asarray(rows, dtype=float), np.asarray(values, dtype=float))
    return [float(x) for x in solution]


def _share(ranks: float, cpus: float, single_host: bool, background: float = 0.0) -> float:
    return max(1.0, (ranks + background) / cpus) if single_host and cpus > 0 else 1.0


def _ring(parallelism: str, ranks: int, parameters: float) -> tuple[float, float]:
    """(messages, bytes each rank sends) per iteration: fp32 gradients and parameters."""
    phases = 3 if parallelism == "zero3" else 2
    return phases * (ranks - 1), phases * (ranks - 1) / ranks * 4 * parameters


def fit_laws(samples: Sequence[Mapping[str, Any]], cpus: int) -> dict[str, Any]:
    """Fit ``LAW_FORMS`` to micro-measurements of reference shapes (``benchmarks.calibrate``).

    Each sample holds the shape it measured (``ranks``, ``parameters``, ``state_bytes``,
    ``tokens_per_rank``, ``single_host``) and what ``measure_recovery`` measured on it; the
    iteration's compute and communication are the sums of its ``micro_iteration_phases``.
    Coefficients are fitted by non-negative least squares. Raises ValueError with fewer than
    two samples.
    """
    if len(samples) < 2:
        raise ValueError(f"fitting laws needs at least two reference shapes, got {len(samples)}")
    laws: dict[str, Any] = {"cpus": cpus, "forms": dict(LAW_FORMS)}
    ranks = [float(s["ranks"]) for s in samples]
    params = [float(s["parameters"]) for s in samples]
    shares = [
        _share(r, cpus, bool(s.get("single_host", True)), float(s.get("load_average") or 0.0))
        for r, s in zip(ranks, samples, strict=True)
    ]
    r0, r1 = _nonnegative_fit(
        [[1, n] for n in ranks],
        [float(s["rejoin_s"]) / x for s, x in zip(samples, shares, strict=True)],
    )
    laws["rejoin_s"] = {"r0": r0, "r1": r1}
    if all("engine_rejoin_s" in s for s in samples):  # calibrations since 2026-12-06
        r0, r1 = _nonnegative_fit(
            [[1, n] for n in ranks],
            [float(s["engine_rejoin_s"]) / x for s, x in zip(samples, shares, strict=True)],
        )
        laws["engine_rejoin_s"] = {"r0": r0, "r1": r1}
    j0, j1, j2 = _nonnegative_fit(
        [[1, n, p / 1e6] for n, p in zip(ranks, params, strict=True)],
        [float(s["spare_join_s"]) / x for s, x in zip(samples, shares, strict=True)],
    )
    laws["spare_join_s"] = {"j0": j0, "j1": j1, "j2": j2}
    l0, per_byte = _nonnegative_fit(
        [[1, float(s["state_bytes"])] for s in samples],
        [float(s["state_load_s"]) / x for s, x in zip(samples, shares, strict=True)],
    )
    laws["state_load_s"] = {"l0": l0, "load_bytes_per_s": 1 / per_byte if per_byte > 0 else None}
    overheads = [
        (
            float(s["state_bytes"]),
            (float(s["engine_iteration_s"]) - float(s["micro_iteration_time_s"])) / x,
        )
        for s, x in zip(samples, shares, strict=True)
        if isinstance(s.get("engine_iteration_s"), int | float)
    ]
    if len(overheads) >= 2:
        o0, per_byte = _nonnegative_fit(
            [[1, b] for b, _ in overheads], [max(0.0, o) for _, o in overheads]
        )
        laws["checkpoint_overhead_s"] = {
            "o0": o0,
            "bytes_per_s": 1 / per_byte if per_byte > 0 else None,
        }
    for key in FIXED_LAWS:
        values = [
            float(s[key]) / x
            for s, x in zip(samples, shares, strict=True)
            if isinstance(s.get(key), int | float)
        ]
        if values:
            laws[key] = {"e": statistics.median(values)}
    # Measured after the reference ranks had ended: only the background competed with it.
    works = [
        float(s["hop_work_s"]) / _share(0, cpus, True, float(s.get("load_average") or 0.0))
        for s in samples
        if isinstance(s.get("hop_work_s"), int | float)
    ]
    if works:
        laws["hop_work_s"] = {"w": statistics.median(works)}
    # A crash's detection beside the ranks: the exit notice (the signal, half the exit watch's
    # period) is the machine's; the rest is processes woken one after another.
    chains = [
        max(0.0, float(s["exit_detection_s"]) - float(s["exit_notice_s"])) / x
        for s, x in zip(samples, shares, strict=True)
        if isinstance(s.get("exit_detection_s"), int | float)
        and isinstance(s.get("exit_notice_s"), int | float)
    ]
    if chains:
        laws["exit_detection_s"] = {"x": statistics.median(chains)}
    # A lost node's collective failure: the kernel closes the lost trainer's sockets once it
    # has torn its memory down, then the survivors' gloo threads wake, raise and leave their
    # collectives, all of it competing for the CPUs with the survivors still computing.
    # A constant until 2026-12-07; a law in the share since, after seeing the validation's
    # 8-node lost node under-predicted by a third (docs/analysis.md, "A lost node's
    # collective failure in the CPU share").
    # Since 2026-12-07 21:27 UTC (after seeing the lost nodes of larger trainers
    # under-predicted the most: docs/analysis.md, "A lost trainer's teardown in its bytes")
    # the teardown of what the lost trainer holds is a term of its own, its rate timed apart,
    # so that a scenario whose trainer holds more than the reference shapes' waits longer.
    failures = [
        (x, float(s["collective_failure_s"]), s)
        for s, x in zip(samples, shares, strict=True)
        if isinstance(s.get("collective_failure_s"), int | float)
    ]
    rates = [
        float(s["teardown_s_per_gib"])
        / _share(1, cpus, bool(s.get("single_host", True)), float(s.get("load_average") or 0.0))
        for s in samples
        if isinstance(s.get("teardown_s_per_gib"), int | float)
    ]
    held: list[Any] = [s.get("lost_trainer_anon_bytes") for _, _, s in failures]
    teardown = bool(rates) and all(isinstance(h, int | float) for h in held)
    held_gib = [float(h) / GIB for h in held] if teardown else [0.0] * len(failures)
    rate = statistics.median(rates) if teardown else 0.0
    if len(failures) >= 2:
        beyond = [f - g * rate * x for (x, f, _), g in zip(failures, held_gib, strict=True)]
        f0, f1 = _nonnegative_fit([[1, x] for x, _, _ in failures], beyond)
        laws["collective_failure_s"] = {"f0": f0, "f1": f1}
        if teardown:
            laws["collective_failure_s"].update(
                teardown_s_per_gib=rate, held_gib=statistics.median(held_gib)
            )
    compute, communication = [], []
    for s in samples:
        phases = s.get("micro_iteration_phases") or [["compute", s["micro_iteration_time_s"]]]
        compute.append(sum(float(d) for kind, d in phases if kind == "compute"))
        communication.append(sum(float(d) for kind, d in phases if kind == "communication"))
    c0, per_flop = _nonnegative_fit(
        [[1, 6 * p * float(s["tokens_per_rank"])] for p, s in zip(params, samples, strict=True)],
        [c / share for c, share in zip(compute, shares, strict=True)],
    )
    laws["compute_s"] = {"c0": c0, "flops_per_s": 1 / per_flop if per_flop > 0 else None}
    rings = [_ring("ddp", int(n), p) for n, p in zip(ranks, params, strict=True)]
    alpha, per_byte = _nonnegative_fit(
        [[steps, sent] for steps, sent in rings],
        [c / share for c, share in zip(communication, shares, strict=True)],
    )
    laws["communication_s"] = {
        "alpha_s": alpha,
        "bytes_per_s": 1 / per_byte if per_byte > 0 else None,
    }
    for key in CONSTANT_LAWS:
        values = [float(s[key]) for s in samples if isinstance(s.get(key), int | float)]
        if values:
            laws[key] = statistics.median(values)
    laws["shapes"] = [
        {k: s[k] for k in ("ranks", "parameters", "state_bytes", "tokens_per_rank") if k in s}
        for s in samples
    ]
    return laws


def _law(laws: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = laws.get(name)
    if not isinstance(value, Mapping):
        raise ValueError(f"calibration laws: {name} is missing or not a mapping")
    return value


def law_costs(
    laws: Mapping[str, Any],
    scenario: Any,
    background: float = 0.0,
    held_bytes: float | None = None,
) -> dict[str, float]:
    """The scenario's recovery costs and iteration (seconds) by ``LAW_FORMS``.

    Returns ``exit_notice_s``, ``probe_s``, ``park_s`` (constants), ``collective_failure_s``,
    ``spare_join_s``, ``rejoin_s``, ``exit_detection_s`` (where the laws have it),
    ``state_load_s``, ``compute_s`` and ``communication_s``
    for the scenario's world size, parameters, tokens per rank, parallelism and the state one
    node restores (``shared.costs.node_checkpoint_bytes``). With links limited by tc (netns),
    the communication takes at least its bytes over the scenario's link, and under DDP
    ``restart_link_s`` is what that adds to a restart's one gradient all-reduce (the bucket
    warm-up of a rewrapped model). ``background``: the
    other jobs' runnable processes on this host when the scenario will run
    (``runnable_processes``), which lengthens every CPU-bound cost of a ``single_host``
    scenario. ``held_bytes``: what one of the scenario's trainers holds of its own (a run
    profile's ``run_trainer_anon_bytes``), whose teardown a lost node's survivors wait for;
    without it, what the reference shapes' lost trainers held.
    """

    cluster = scenario.cluster
    ranks = cluster.nodes * cluster.accelerators_per_node
    parameters = float(scenario.model.parameter_count)
    tokens = scenario.training.batch_size_per_rank * scenario.model.context
    cpus = float(laws.get("cpus") or 1)
    share = _share(ranks, cpus, bool(cluster.single_host), background)
    state = scenario.checkpoint_bytes_per_node
    alone = _share(1, cpus, bool(cluster.single_host), background)
    out: dict[str, float] = {}
    for key in CONSTANT_LAWS:
        value = laws.get(key)
        if isinstance(value, int | float):
            out[key] = float(value)
    failure = laws.get("collective_failure_s")
    if isinstance(failure, Mapping):
        out["collective_failure_s"] = float(failure["f0"]) + float(failure["f1"]) * share
        if "teardown_s_per_gib" in failure:  # calibrations since 2026-12-07 21:27 UTC
            held = held_bytes / GIB if held_bytes else float(failure["held_gib"])
            out["collective_failure_s"] += held * float(failure["teardown_s_per_gib"]) * share
    elif isinstance(failure, int | float):  # calibrations before 2026-12-07: a constant
        out["collective_failure_s"] = float(failure)
    rejoin = _law(laws, "rejoin_s")
    out["rejoin_s"] = (float(rejoin["r0"]) + float(rejoin["r1"]) * ranks) * share
    chain, notice = laws.get("exit_detection_s"), out.get("exit_notice_s")
    if isinstance(chain, Mapping) and notice is not None:  # calibrations since 2026-12-06
        out["exit_detection_s"] = notice + float(chain["x"]) * share
    engine_rejoin = laws.get("engine_rejoin_s")  # calibrations since 2026-12-06
    if isinstance(engine_rejoin, Mapping) and scenario.training.parallelism == "ddp":
        out["engine_rejoin_s"] = (
            float(engine_rejoin["r0"]) + float(engine_rejoin["r1"]) * ranks
        ) * share
    join = _law(laws, "spare_join_s")
    out["spare_join_s"] = (
        float(join["j0"]) + float(join["j1"]) * ranks + float(join["j2"]) * parameters / 1e6
    ) * share
    for key, letter in (("hop_work_s", "w"), *((k, "e") for k in FIXED_LAWS)):
        fitted = laws.get(key)
        if isinstance(fitted, Mapping):
            out[key] = float(fitted[letter]) * (alone if key in FIRST_FSDP2 else share)
    # FSDP2: the harness restores into a trainer rebuilt around the new group (measured as
    # such on the reference shapes, benchmarks/calibrate.py), not into the trained one, and
    # the recovery waits for its new process (a spare), whose first FSDP2 trainer (beyond
    # the DDP build the join law timed) costs more while the survivors wait: that part
    # competes only with the background (``FIRST_FSDP2``).
    zero3 = out.pop("engine_restore_fixed_zero3_s", None)
    first_state = out.pop("fsdp2_first_state_s", 0.0)
    first_build = out.pop("fsdp2_first_build_s", 0.0)
    if scenario.training.parallelism == "zero3":
        if zero3 is not None:
            local = out.get("engine_restore_fixed_s")
            out["engine_restore_fixed_s"] = fsdp2_restore_fixed_s(
                zero3 / share, first_state / alone, ranks, share, alone
            )
            # A fetch from a peer costs what it cost beyond a local restore (timed under DDP).
            if local is not None and "engine_restore_peer_fixed_s" in out:
                out["engine_restore_peer_fixed_s"] += out["engine_restore_fixed_s"] - local
        out["spare_join_s"] += first_build
    load = _law(laws, "state_load_s")
    rate = load.get("load_bytes_per_s")
    out["state_load_s"] = (float(load["l0"]) + (state / float(rate) if rate else 0.0)) * share
    overhead = laws.get("checkpoint_overhead_s")
    if isinstance(overhead, Mapping):
        rate = overhead.get("bytes_per_s")
        out["checkpoint_overhead_s"] = (
            float(overhead["o0"]) + (state / float(rate) if rate else 0.0)
        ) * share
    compute = _law(laws, "compute_s")
    flops = compute.get("flops_per_s")
    out["compute_s"] = (
        float(compute["c0"]) + (6 * parameters * tokens / float(flops) if flops else 0.0)
    ) * share
    communication = _law(laws, "communication_s")
    steps, sent = _ring(scenario.training.parallelism, ranks, parameters)
    bandwidth = float(communication.get("bytes_per_s") or 0.0)
    out["communication_s"] = (
        float(communication["alpha_s"]) * steps + (sent / bandwidth if bandwidth else 0.0)
    ) * share
    if scenario.real.mode == "netns":  # the tc-limited link, if it is the slower
        link = cluster.network_bandwidth_gbit_s * 1e9 / 8
        machine = out["communication_s"]
        out["communication_s"] = max(machine, sent / link)
        if scenario.training.parallelism == "ddp":
            # A restart wraps the model in DDP and settles its buckets with one gradient
            # all-reduce (real.trainer.workload.trainer); the join and rejoin laws timed it
            # over loopback, so the link adds only its excess.
            out["restart_link_s"] = out["communication_s"] - machine
    return out


def fsdp2_restore_fixed_s(
    restore_e: float, first_state_e: float, ranks: int, share: float, alone: float
) -> float:
    """An FSDP2 recovery's restore without its copy, s: every rank's restore (``restore_e``
    of CPU each, ``engine_restore_fixed_zero3_s``'s law) and the spare's first FSDP2 state
    (``first_state_e``, ``fsdp2_first_state_s``'s), which it asks for inside its restore.

    The survivors restore while the spare pays its first state; they wait for it only at
    the restore's closing all-reduce. So the restore takes the longer of all that work spread
    over the CPUs with the background (``share``, per rank) and the spare's own chain, its
    restore then its first state, competing only with the background (``alone``). Until
    2026-12-05 the two were added (the spare's first state as if the survivors waited
    through it), which over-predicted v06's retrieval by 60% (0.13 s, measured 0.08 s; the
    change was made after seeing that miss, docs/analysis.md)."""
    spread = restore_e * share + first_state_e * share / max(1, ranks)
    chain = (restore_e + first_state_e) * alone
    return max(spread, chain)


def limited_overrides(overrides: Sequence[str], scenario: Any) -> list[str]:
    """Drop or clamp the overrides that would replace what the scenario deliberately limits.

    - netns mode: tc limits every node link to ``cluster.network_bandwidth_gbit_s``, so a
      measured (loopback) rate applies only below it: the smaller of the two;
    - storage emulated in the application (``cluster.storage.emulate_bandwidth``): the
      scenario's bandwidth is what the harness enforces, so no measured storage bandwidth
      replaces it.
    """
    out: list[str] = []
    network = "cluster.network_bandwidth_gbit_s="
    for setting in overrides:
        if setting.startswith(network) and scenario.real.mode == "netns":
            measured = float(setting[len(network) :])
            limit = scenario.cluster.network_bandwidth_gbit_s
            setting = network + _fmt(min(measured, limit))
        if setting.startswith("cluster.storage.bandwidth_gbit_s=") and (
            scenario.cluster.storage.emulate_bandwidth
        ):
            continue
        out.append(setting)
    return out


def law_overrides(
    calibration: Mapping[str, Any], scenario: Any, background: float = 0.0
) -> list[str]:
    """Scenario overrides from a calibration with ``laws`` (``gemini-ckpt calibrate``).

    The recovery costs are ``recovery_costs``'s rules applied to the laws' values for this
    scenario's shape (``law_costs``); the iteration is the laws' compute then communication
    (DDP), or ZeRO-3's three collectives around forward and backward; the bandwidths are the
    measured ones, within the scenario's limits (``limited_overrides``); ``background`` as for
    ``law_costs``.
    """
    measurements = calibration.get("measurements", calibration)
    laws = measurements.get("laws") if isinstance(measurements, Mapping) else None
    if not isinstance(laws, Mapping):
        raise ValueError("calibration has no `laws` (measure them with `gemini-ckpt calibrate`)")
    profile = calibration.get("profile")
    profiled = isinstance(profile, Mapping) and profile.get("configuration") == configuration(
        scenario
    )
    # What a trainer of this very configuration held, where a run profile measured it.
    held = (
        _number(profile, "run_trainer_anon_bytes")
        if isinstance(profile, Mapping)
        and profiled
        and profile.get("strategy") == scenario.checkpoint.strategy
        else None
    )
    costs = law_costs(laws, scenario, background, held)
    profiled_run = None  # the run profile's iteration, at the prediction's background
    # Gemini's iteration without its checkpoint, where the phases below carry it: the step
    # without its save where one was measured (as the harness reports a run's), else the
    # iteration measured or predicted without the engine.
    no_ckpt: float | None = None
    save = 0.0  # Gemini's save after its step, where measured: a phase of its own
    if isinstance(profile, Mapping) and profiled:
        # A failure-free profile of this very configuration says more than the laws: a run of
        # the harness (its iteration with the strategy's checkpoint, the laws' split between
        # compute and communication), else the micro-benchmark's phases.
        run = _number(profile, "run_iteration_time_s")
        if run and profile.get("strategy") == scenario.checkpoint.strategy:
            # Measured under the background of its moment: rescaled to the prediction's.
            cluster = scenario.cluster
            ranks = cluster.nodes * cluster.accelerators_per_node
            cpus = float(laws.get("cpus") or 1)
            then = _share(ranks, cpus, bool(cluster.single_host), profile.get("background", 0.0))
            now = _share(ranks, cpus, bool(cluster.single_host), background)
            profiled_run = run * now / then
            step = _number(profile, "run_step_s")
            no_ckpt = step * now / then if step else costs["compute_s"] + costs["communication_s"]
            stepped = profiled_run
            if step and scenario.checkpoint.strategy == "gemini":
                stepped = min(no_ckpt, profiled_run)
                save = profiled_run - stepped
            scale = stepped / max(costs["compute_s"] + costs["communication_s"], 1e-12)
            costs["compute_s"] *= scale
            costs["communication_s"] *= scale
        elif profile.get("micro_iteration_phases") or profile.get("micro_iteration_time_s"):
            phases = profile.get("micro_iteration_phases") or []
            compute = sum(float(d) for kind, d in phases if kind == "compute")
            communication = sum(float(d) for kind, d in phases if kind == "communication")
            total = _number(profile, "micro_iteration_time_s") or compute + communication
            engine = _number(profile, "engine_iteration_s")
            if engine and scenario.checkpoint.strategy == "gemini" and total:
                # Profiled with a checkpoint every iteration, as Gemini's trainers run: the
                # replication's CPU time stretches the step's phases alike (to the step timed
                # beside it), and the save follows the step.
                no_ckpt = min(_number(profile, "engine_step_s") or total, engine)
                compute, communication = compute * no_ckpt / total, communication * no_ckpt / total
                save = engine - no_ckpt
                total = no_ckpt
            if communication > 0:
                costs["compute_s"], costs["communication_s"] = compute, communication
            else:  # not profiled (FSDP2): the laws' split of the measured iteration
                scale = total / max(costs["compute_s"] + costs["communication_s"], 1e-12)
                costs["compute_s"] *= scale
                costs["communication_s"] *= scale
    if not profiled and scenario.checkpoint.strategy == "gemini":
        # Gemini checkpoints every iteration: on a host without accelerators its capture and
        # replication take CPU from training (the simulator's network model does not see it).
        extra = costs.get("checkpoint_overhead_s", 0.0)
        total = costs["compute_s"] + costs["communication_s"]
        if total > 0 and extra > 0:
            no_ckpt = total
        if total > 0:
            costs["compute_s"] *= (total + extra) / total
            costs["communication_s"] *= (total + extra) / total
    shaped = {
        **{k: v for k, v in measurements.items() if k != "laws"},
        **{k: round(v, 6) for k, v in costs.items()},
    }
    micro = recovery_costs(shaped, scenario.checkpoint.strategy)
    overrides = [
        f"{field}={_fmt(micro[key])}" for key, field in MICRO_FIELDS.items() if key in micro
    ]
    compute, communication = costs["compute_s"], costs["communication_s"]
    if compute + communication > 0:
        if scenario.training.parallelism == "zero3":
            third = communication / 3
            phases = [
                ["communication", third],
                ["compute", compute / 3],
                ["communication", third],
                ["compute", 2 * compute / 3],
                ["communication", third],
            ]
        else:
            phases = [["compute", compute], ["communication", communication]]
        phases.append(["compute", save])
        kept = [p for p in phases if float(p[1]) > 0]
        overrides.append(f"training.phases={_phases_yaml(kept)}")
    plain = {
        k: measurements[k]
        for k in ("memory_copy_gbyte_s", "loopback_tcp_gbit_s")
        if k in measurements
    }
    start = _number(measurements, "process_start_s")
    if start is not None:  # a cold node: a fresh Python importing torch
        overrides.append(f"recovery.node_start_s={_fmt(start)}")
    plain.update({k: measurements[k] for k in RUN_MEASUREMENTS if k in measurements})
    overrides += _plain_overrides(plain)
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
    if profiled_run is not None and scenario.checkpoint.strategy == "gemini":
        # The run's iteration carries its checkpoint, whose traffic the simulator adds itself:
        # it scales the phases so as to count that traffic once (sim.model.net_of_checkpoint).
        overrides.append("training.phases_with_checkpoint=true")
    if no_ckpt and scenario.checkpoint.strategy == "gemini":
        # Never above the iteration with the checkpoint: a law's prediction beside a measured
        # run, or noise, would read as a negative overhead.
        with_ckpt = costs["compute_s"] + costs["communication_s"] + save
        overrides.append(f"training.iteration_no_ckpt_s={_fmt(min(no_ckpt, with_ckpt))}")
    return limited_overrides(overrides, scenario)


RUN_MEASUREMENTS = (
    "stop_s",
    "restart_s",
    "exit_report_s",
    "node_start_s",
    "retrieval_overhead_s",
    "run_iteration_time_s",
    "save_time_s",
)
"""What ``measurements_from_runs`` adds (``calibrate --from-run``): measured by runs, these win
over the laws (and the scenarios those runs ran are left out of the validation median)."""


def configuration(scenario: Any) -> dict[str, Any]:
    """What fixes a failure-free iteration: the model, the parallelism, the batch and the
    cluster's shape. A profile applies to a scenario only when these are equal."""
    model = scenario.model
    cluster = scenario.cluster
    return {
        "model": [model.layers, model.hidden, model.heads, model.context, model.vocab_size],
        "parameters": float(model.parameter_count),
        "parallelism": scenario.training.parallelism,
        "batch_size_per_rank": scenario.training.batch_size_per_rank,
        "nodes": cluster.nodes,
        "accelerators_per_node": cluster.accelerators_per_node,
        "single_host": bool(cluster.single_host),
    }


def scenario_overrides(
    calibration: Mapping[str, Any],
    scenario: Any,
    background: float = 0.0,
    strategy: str | None = None,
) -> list[str]:
    """The overrides a calibration makes to one scenario: by its laws when it has them
    (``law_overrides``), else ``calibration_overrides``; either way within the scenario's
    limits (``limited_overrides``). ``strategy``: simulate that one rather than the
    scenario's (its costs differ: Gemini's iteration carries its checkpoints)."""
    if strategy is not None and strategy != scenario.checkpoint.strategy:
        checkpoint = scenario.checkpoint.model_copy(update={"strategy": strategy})
        scenario = scenario.model_copy(update={"checkpoint": checkpoint})
    measurements = calibration.get("measurements", calibration)
    if isinstance(measurements, Mapping) and isinstance(measurements.get("laws"), Mapping):
        return law_overrides(calibration, scenario, background)
    return limited_overrides(
        calibration_overrides(calibration, scenario.checkpoint.strategy), scenario
    )
