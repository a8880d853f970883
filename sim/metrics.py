"""What a simulated run reports: ``summary.json``, derived from its events like the real harness.

The per-failure records come from ``shared.summary.failure_records`` on the run's event log,
exactly as for a real run, so the phases (detection, stop, replacement, restart, retrieval,
lost progress, wasted time, downtime) mean the same in both. The simulator adds, in
``extra``: the effective training time ratio (ETTR), the fraction of failures (and of
multi-node failures) recovered from CPU memory, the iteration time with and without
checkpointing, the checkpoint interval and commit delay, memory used, rollbacks and failures
that struck during a recovery, and the inputs the model derived (iteration profile, traffic
plan spill).
"""

from __future__ import annotations

from typing import Any

from shared.summary import RunSummary, failure_records
from sim.model import SimModel
from sim.simulation import RunState


def build_summary(model: SimModel, state: RunState, seed: int, duration_s: float) -> RunSummary:
    """The run's ``RunSummary`` (module docstring)."""
    strategy = model.strategy
    state.events.sort(key=lambda e: e.time_s)
    # A lost iteration costs its cycle; a blocking save is lost only while in flight (the
    # failure's partial iteration), never spread over the iterations it follows.
    records = failure_records(
        state.events, strategy.cycle_s, strategy.pause_s if strategy.pause_every else 0.0
    )
    multi = [r for r in records if len(r.nodes) > 1]
    hours = duration_s / 3600.0
    checkpoints = state.commits if strategy.in_memory else state.persists
    extra: dict[str, Any] = {
        "ettr": None,  # filled below from the summary's own definition
        "fraction_from_memory": None,
        "multi_node_failures": len(multi),
        "multi_node_from_memory": sum(1 for r in multi if r.tier in ("local", "peer")),
        "rollbacks": state.rollbacks,
        "interrupted_recoveries": state.interrupted_recoveries,
        "persistent_checkpoints": state.persists,
        "in_memory_checkpoints": state.commits,
        "checkpoint_interval_iterations": (
            strategy.checkpoint_every if strategy.in_memory else strategy.pause_every
        ),
        "compressed_replication": strategy.compressed,
        "checkpoint_interval_rule": strategy.interval_rule,
        "persist_every_iterations": strategy.persist_every,
        "commit_delay_s": strategy.commit_delay_s,
        "last_replica_delay_s": strategy.last_replica_delay_s if strategy.in_memory else None,
        "commit_rule": model.scenario.checkpoint.commit if strategy.in_memory else None,
        "blocking_save_s": strategy.pause_s,
        "persistent_upload_s": strategy.upload_s,
        "mean_iteration_s": strategy.mean_iteration_s,
        "iteration_profile": [[p.kind, p.duration_s] for p in model.profile.phases],
        "iteration_profile_source": model.profile.source,
        "spill_bytes": model.steady.spill_bytes if model.steady else 0,
        "placement": model.placement.strategy,
        "replicas": model.placement.replicas,
        "nodes": model.placement.nodes,
        "mean_replacement_wait_s": (
            sum(state.replacement_waits_s) / len(state.replacement_waits_s)
            if state.replacement_waits_s
            else None
        ),
    }
    summary = RunSummary(
        source="sim",
        scenario=model.scenario.name,
        strategy=strategy.name,
        seed=seed,
        duration_s=duration_s,
        iterations_completed=state.final_iteration,
        iteration_time_s=strategy.mean_iteration_s,
        iteration_time_no_ckpt_s=strategy.iteration_no_ckpt_s,
        failures=records,
        checkpoints_per_hour=checkpoints / hours if hours > 0 else 0.0,
        checkpoint_memory_bytes=strategy.memory_bytes,
        extra=extra,
    )
    extra["ettr"] = summary.ettr
    extra["fraction_from_memory"] = summary.fraction_from_memory
    return summary
