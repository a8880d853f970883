"""From a scenario to the simulator's per-configuration constants.

Everything that does not change from one iteration to the next is computed here once: the
placement (``shared.placement``), the iteration profile and its idle spans, the traffic plan
(``shared.scheduling``), the steady-state iteration with checkpoint traffic, the persistent
interval, and the checkpoint memory per node. The scenario is checked first with the rules of
``shared.scenario_rules`` (the memory per node among them), and again with what the model
derived (its iteration time), so a scenario this module accepts is one the simulation can run.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ScenarioError
from shared.placement import Placement, plan_placement
from shared.scenario import Scenario
from shared.scenario_rules import (
    Face,
    Finding,
    SimFacts,
    check_scenario,
    errors,
    simulated_run_rules,
)
from sim.cadence import checkpoint_cadence, persist_every
from sim.strategies import StrategyModel, baseline_interval, persistent_save_times
from sim.training import (
    IterationProfile,
    SteadyIteration,
    iteration_profile,
    node_shard_bytes,
    steady_iteration,
    traffic_plan,
)


@dataclass(frozen=True)
class SimModel:
    """A scenario prepared for simulation."""

    scenario: Scenario
    placement: Placement
    profile: IterationProfile
    steady: SteadyIteration | None
    strategy: StrategyModel

    @property
    def shard_bytes(self) -> float:
        """Bytes one node checkpoints (``node_shard_bytes``)."""
        return node_shard_bytes(self.scenario)

    @property
    def facts(self) -> SimFacts:
        """What the scenario rules need from the model."""
        return SimFacts(self.strategy.mean_iteration_s, self.strategy.persist_every)

    def findings(self) -> tuple[Finding, ...]:
        """Every finding of the scenario for the simulator, warnings included."""
        return check_scenario(self.scenario, _SIM, sim=self.facts)


_SIM: tuple[Face, ...] = ("sim",)


def _require(source: str, findings: list[Finding] | tuple[Finding, ...]) -> None:
    problems = errors(findings)
    if problems:
        raise ScenarioError(source, problems)


def build_model(scenario: Scenario) -> SimModel:
    """Prepare a scenario; raises ScenarioError when it breaks a rule of the simulator."""
    _require(scenario.name, check_scenario(scenario, _SIM))
    ckpt = scenario.checkpoint
    cluster = scenario.cluster
    placement = plan_placement(
        cluster.nodes,
        ckpt.replicas,
        ckpt.placement,
        domains=cluster.domain_names() if ckpt.placement != "explicit" else None,
        explicit=ckpt.explicit_placement,
    )
    profile = iteration_profile(scenario)
    base_s = profile.iteration_s
    shard = node_shard_bytes(scenario)
    blocking, upload = persistent_save_times(scenario)
    if ckpt.strategy == "gemini":
        cadence = checkpoint_cadence(scenario, profile, placement.peers_of(0))
        if cadence.interval == 1 and not cadence.compression.enabled:
            steady = steady_iteration(
                scenario, profile, traffic_plan(scenario, profile, placement.peers_of(0))
            )
            per_iteration = 1
        else:  # one checkpoint's traffic over its k iterations, run as one (sim.cadence)
            steady = steady_iteration(scenario, cadence.profile, cadence.plan)
            per_iteration = cadence.interval
        # Two slots (last committed, in progress) for the node's own shard and per replica held.
        memory = 2 * ckpt.replicas * shard
        strategy = StrategyModel(
            name="gemini",
            progress_s=steady.progress_s / per_iteration,
            cycle_s=steady.cycle_s / per_iteration,
            last_replica_delay_s=steady.last_replica_delay_s,
            commit=ckpt.commit,
            pause_every=None,
            pause_s=0.0,
            persist_every=persist_every(
                scenario, blocking + upload, steady.cycle_s / per_iteration, 0, 0.0
            ),
            upload_s=blocking + upload,  # from CPU memory: serialise and upload, off the path
            iteration_no_ckpt_s=base_s,
            memory_bytes=memory,
            interval_rule=_interval_rule(cadence.interval, cadence.decision.reason),
            checkpoint_every=cadence.interval,
            compressed=cadence.compression.enabled,
        )
    else:
        steady = None
        every, rule = baseline_interval(scenario, base_s)
        # A serialised copy waits in host memory while it uploads.
        memory = shard if upload > 0 else 0.0
        strategy = StrategyModel(
            name="persistent",
            progress_s=base_s,
            cycle_s=base_s,
            last_replica_delay_s=0.0,
            commit="on_arrival",
            pause_every=every,
            pause_s=blocking,
            persist_every=every,
            upload_s=upload,
            iteration_no_ckpt_s=base_s,
            memory_bytes=memory,
            interval_rule=rule,
        )
    model = SimModel(scenario, placement, profile, steady, strategy)
    _require(scenario.name, simulated_run_rules(scenario, model.facts))
    return model


def _interval_rule(interval: int, reason: str) -> str:
    if interval == 1:
        return "every iteration"
    return f"every {interval} iterations ({reason})"
