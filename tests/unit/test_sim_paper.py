"""The paper's figures, reproduced from the paper's setup (docs/design.md section 7).

Inputs are the paper's hardware, model sizes, intervals and failure rates; the figures must
emerge. The paper scenarios take the paper's commit accounting (``commit: next_iteration_end``);
what the engine's own rule (``on_arrival``) predicts is pinned too, as docs/simulator.md explains.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared import costs
from shared.placement import plan_placement
from shared.probability import recovery_probability
from shared.scenario_loader import load_scenario, parse_scenario
from sim import simulate

P4D = "scenarios/paper/gpt2-100b-p4d.yaml"
P3DN = "scenarios/paper/gpt2-40b-p3dn.yaml"
PERSISTENT = ["checkpoint.strategy=persistent"]
STRAWMAN = [*PERSISTENT, "checkpoint.baseline_interval=strawman"]
HIGHFREQ = [
    *PERSISTENT,
    "checkpoint.baseline_interval=fixed",
    "checkpoint.baseline_every_iterations=9",
]  # the paper's HighFreq interval
YEAR = ["sim.duration_days=365"]


def _wasted_min(overrides: list[str]) -> float:
    return simulate(load_scenario(P4D, [*overrides, *YEAR])).summary.mean_wasted_s / 60


def test_wasted_time_per_failure_strawman_highfreq_gemini() -> None:
    strawman, highfreq, gemini = _wasted_min(STRAWMAN), _wasted_min(HIGHFREQ), _wasted_min([])
    assert strawman == pytest.approx(98, rel=0.15)
    assert highfreq == pytest.approx(23, rel=0.15)
    assert gemini == pytest.approx(1.6, rel=0.15)
    # The paper's 13x counts a HighFreq checkpoint's own time as lost (t_ckpt + 1/(2f) +
    # t_rtvl: training goes on while it saves). Our baseline blocks while it saves, and a
    # save that returned made its iteration durable, so its time is not lost progress
    # (shared.summary.failure_records): 12.4x for this seed, 12.1x over the 4 seeds of
    # benchmarks/sim_paper.py. Until 2026-12-06 every lost iteration was charged the saves
    # spread over all iterations, 13.5x here (13.1x over 4 seeds), which counted saves never
    # lost; this assertion was "> 13" then.
    assert highfreq / gemini == pytest.approx(12.4, rel=0.03)
    # The scenario takes the paper's accounting (commit: next_iteration_end, t_ckpt = T_iter):
    # the analytic t_ckpt + 1/(2f) + t_rtvl with 62 s, 62 s and the 3 s from peers' memory.
    assert gemini == pytest.approx(costs.wasted_time_per_failure_s(62, 62, 3.0, 62) / 60, rel=0.1)


def test_gemini_committing_on_arrival_wastes_what_the_analytic_model_predicts() -> None:
    # Committing when the last replica lands (the engine's default) the checkpoint counts
    # 5.3 s into the next iteration, not 62 s: a lost node (its shard's replica needed) wastes
    # the same formula with that t_ckpt. A crash restores the iteration captured as it ended,
    # from the node's own memory: t_ckpt 0. Half the failures are crashes.
    on_arrival = ["checkpoint.commit=on_arrival"]
    extra = simulate(load_scenario(P4D, [*on_arrival, "sim.duration_days=1"])).summary.extra
    assert extra["commit_rule"] == "on_arrival"
    delay_s = extra["commit_delay_s"]
    assert delay_s == pytest.approx(5.3, abs=0.1)
    failures = simulate(load_scenario(P4D, [*on_arrival, *YEAR])).summary.failures
    for kind, checkpoint_s in (("software", 0.0), ("hardware", delay_s)):
        wasted = [f.wasted_s for f in failures if f.kind == kind]
        analytic = costs.wasted_time_per_failure_s(checkpoint_s, 62, 3.0, 62)
        assert len(wasted) > 300
        assert sum(wasted) / len(wasted) == pytest.approx(analytic, rel=0.05), kind
    analytic = costs.wasted_time_per_failure_s(delay_s / 2, 62, 3.0, 62) / 60
    assert _wasted_min(on_arrival) == pytest.approx(analytic, rel=0.1)


def test_blocking_adds_about_ten_percent_interleaving_nothing() -> None:
    blocking = simulate(load_scenario(P3DN, ["checkpoint.traffic=blocking"])).summary
    interleaved = simulate(load_scenario(P3DN)).summary
    assert blocking.checkpoint_overhead == pytest.approx(0.10, abs=0.015)
    assert interleaved.checkpoint_overhead == pytest.approx(0.0, abs=1e-9)


def test_ettr_points_of_figure_15() -> None:
    no_failures = ["failures.process=null", "sim.duration_days=1"]
    highfreq = simulate(load_scenario(P4D, [*HIGHFREQ, *no_failures])).summary
    assert highfreq.checkpoint_overhead == pytest.approx(0.145, abs=0.005)
    gemini = simulate(load_scenario(P4D, ["failures.process.failures_per_day=8"])).summary
    assert gemini.ettr > 0.95
    large = simulate(load_scenario("scenarios/cluster-1000.yaml")).summary
    assert large.ettr == pytest.approx(0.91, abs=0.02)


def test_multi_node_failures_recover_from_memory_as_often_as_shared_predicts() -> None:
    nodes, k, trials = 16, 3, 400
    rng = np.random.default_rng(11)
    schedule = ", ".join(
        f"{{kind: hardware, nodes: {sorted(rng.choice(nodes, k, replace=False).tolist())}, "
        f"at_time_s: {600.0 * (i + 1)}}}"
        for i in range(trials)
    )
    text = f"""
name: multi
cluster: {{nodes: {nodes}, standby_nodes: {trials * k}, replacement_s: 1}}
model: {{parameters: 1.0e+6}}
training: {{phases: [{{kind: compute, duration_s: 0.6}}, {{kind: communication, duration_s: 0.4}}]}}
checkpoint: {{replicas: 2, placement: group, persist_every_iterations: 50}}
failures: {{schedule: [{schedule}]}}
recovery: {{restart_s: 5}}
sim: {{duration_days: {600.0 * (trials + 1) / 86400}}}
"""
    summary = simulate(parse_scenario(text)).summary
    multi = [f for f in summary.failures if len(f.nodes) == k]
    assert len(multi) == trials
    observed = sum(f.tier in ("local", "peer") for f in multi) / trials
    exact = recovery_probability(plan_placement(nodes, 2, "group"), k).probability
    assert exact == pytest.approx(0.8)
    sigma = math.sqrt(exact * (1 - exact) / trials)
    assert abs(observed - exact) < 3 * sigma
