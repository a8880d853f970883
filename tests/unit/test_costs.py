"""Unit tests for shared.costs: each formula at hand-computed values, and its range checks."""

from __future__ import annotations

import math

import pytest
from scipy.optimize import minimize_scalar

from shared.costs import (
    all_gather_s,
    checkpoint_bytes,
    daly_interval_s,
    expected_run_time_s,
    iteration_communication_s,
    iteration_traffic_bytes,
    reduce_scatter_s,
    ring_allreduce_s,
    training_compute_s,
    wasted_time_per_failure_s,
    young_interval_s,
)

# --- Wasted time per failure ---------------------------------------------------------------

# docs/design.md section 7: GPT-2 100B on 16 x p4d.24xlarge, FSx at 20 Gbps aggregate.
PAPER_ITERATION_S = 62.0
PAPER_SERIALISATION_S = 81.0
PAPER_FSX_BYTES_PER_S = 20e9 / 8


def test_wasted_time_is_checkpoint_plus_half_interval_plus_retrieval() -> None:
    assert wasted_time_per_failure_s(10.0, 100.0, 7.0, 20.0) == 10.0 + 50.0 + 7.0


def test_wasted_time_with_the_paper_inputs() -> None:
    # Retrieval from FSx: 1.2 TB at 2.5 GB/s = 480 s, derived from the checkpoint model.
    retrieval_s = checkpoint_bytes(100_000_000_000) / PAPER_FSX_BYTES_PER_S
    assert retrieval_s == 480.0
    # HighFreq: a checkpoint every 9 iterations.
    high_freq_s = wasted_time_per_failure_s(
        PAPER_SERIALISATION_S, 9 * PAPER_ITERATION_S, retrieval_s, PAPER_ITERATION_S
    )
    assert high_freq_s == pytest.approx(81 + 9 * 62 / 2 + 480)  # 840 s
    # Strawman: every 3 hours.
    strawman_s = wasted_time_per_failure_s(
        PAPER_SERIALISATION_S, 3 * 3600.0, retrieval_s, PAPER_ITERATION_S
    )
    assert strawman_s == pytest.approx(81 + 5400 + 480)  # 5961 s, 99.4 min; paper ~98 min
    # Gemini: every iteration into CPU memory, < 3 s to checkpoint and to retrieve.
    gemini_s = wasted_time_per_failure_s(3.0, PAPER_ITERATION_S, 3.0, PAPER_ITERATION_S)
    assert gemini_s == pytest.approx(3 + 31 + 3)
    assert gemini_s < high_freq_s < strawman_s


def test_wasted_time_accepts_the_minimum_interval() -> None:
    assert wasted_time_per_failure_s(5.0, 20.0, 0.0, 20.0) == 15.0
    assert wasted_time_per_failure_s(30.0, 30.0, 0.0, 20.0) == 45.0


@pytest.mark.parametrize(
    ("checkpoint_time_s", "interval_s", "iteration_s", "minimum"),
    [(5.0, 19.0, 20.0, "20.0"), (30.0, 29.0, 20.0, "30.0")],
)
def test_wasted_time_rejects_an_interval_below_the_minimum(
    checkpoint_time_s: float, interval_s: float, iteration_s: float, minimum: str
) -> None:
    with pytest.raises(ValueError, match=rf"checkpoint_interval_s must be >= .*{minimum}"):
        wasted_time_per_failure_s(checkpoint_time_s, interval_s, 1.0, iteration_s)


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ((-1.0, 100.0, 1.0, 10.0), "checkpoint_time_s"),
        ((1.0, 100.0, -1.0, 10.0), "retrieval_s"),
        ((1.0, 100.0, 1.0, 0.0), "iteration_s"),
        ((1.0, math.nan, 1.0, 10.0), "checkpoint_interval_s"),
        ((1.0, math.inf, 1.0, 10.0), "checkpoint_interval_s"),
    ],
)
def test_wasted_time_rejects_out_of_range_arguments(
    arguments: tuple[float, float, float, float], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        wasted_time_per_failure_s(*arguments)


# --- Checkpoint intervals ------------------------------------------------------------------


def test_young_interval_known_value() -> None:
    assert young_interval_s(50.0, 10_000.0) == pytest.approx(1000.0)


def test_daly_interval_known_value() -> None:
    # C/(2M) = 0.0025: 1000 * (1 + 0.05/3 + 0.0025/9) - 50
    assert daly_interval_s(50.0, 10_000.0) == pytest.approx(966.944444, rel=1e-7)


def test_daly_is_young_minus_two_thirds_of_the_cost_when_the_cost_is_small() -> None:
    checkpoint_cost_s, mtbf_s = 1.0, 1e6
    difference_s = young_interval_s(checkpoint_cost_s, mtbf_s) - daly_interval_s(
        checkpoint_cost_s, mtbf_s
    )
    assert difference_s == pytest.approx(2 / 3, abs=1e-3)


def test_daly_interval_is_the_mtbf_once_the_cost_reaches_twice_the_mtbf() -> None:
    assert daly_interval_s(200.0, 100.0) == 100.0
    assert daly_interval_s(500.0, 100.0) == 100.0


@pytest.mark.parametrize("cost_over_mtbf", [1e-4, 1e-2, 0.1, 0.5])
def test_daly_is_nearer_the_true_optimum_than_young(cost_over_mtbf: float) -> None:
    mtbf_s = 3600.0
    checkpoint_cost_s = cost_over_mtbf * mtbf_s
    result = minimize_scalar(
        lambda interval_s: expected_run_time_s(1e6, interval_s, checkpoint_cost_s, mtbf_s),
        bounds=(1e-3, 10 * mtbf_s),
        method="bounded",
        options={"xatol": 1e-6},
    )
    optimum_s = float(result.x)
    daly_error = abs(daly_interval_s(checkpoint_cost_s, mtbf_s) - optimum_s)
    young_error = abs(young_interval_s(checkpoint_cost_s, mtbf_s) - optimum_s)
    assert daly_error < young_error
    assert daly_error < 0.02 * optimum_s


def test_expected_run_time_known_values() -> None:
    # Without failures (huge M) the run takes T_s (1 + C/tau).
    assert expected_run_time_s(1000.0, 100.0, 10.0, 1e12) == pytest.approx(1100.0)
    # M = tau + C = 1: M (e - 1) T_s / tau.
    assert expected_run_time_s(2.0, 0.5, 0.5, 1.0) == pytest.approx((math.e - 1) * 4)
    # The restart time scales the whole run by exp(R/M).
    assert expected_run_time_s(2.0, 0.5, 0.5, 1.0, restart_s=1.0) == pytest.approx(
        math.e * (math.e - 1) * 4
    )


@pytest.mark.parametrize("function", [young_interval_s, daly_interval_s])
@pytest.mark.parametrize(
    ("checkpoint_cost_s", "mtbf_s", "name"),
    [(0.0, 1.0, "checkpoint_cost_s"), (1.0, -1.0, "mtbf_s"), (math.nan, 1.0, "checkpoint")],
)
def test_intervals_reject_out_of_range_arguments(
    function: object, checkpoint_cost_s: float, mtbf_s: float, name: str
) -> None:
    assert callable(function)
    with pytest.raises(ValueError, match=name):
        function(checkpoint_cost_s, mtbf_s)


# --- Collectives ---------------------------------------------------------------------------


def test_ring_allreduce_four_ranks() -> None:
    # 2*3 messages of 1 ms, and 2*3/4 of 1 GB at 1 GB/s.
    assert ring_allreduce_s(4, 1e9, 1e-3, 1e9) == pytest.approx(0.006 + 1.5)


def test_reduce_scatter_and_all_gather_four_ranks() -> None:
    assert reduce_scatter_s(4, 1e9, 1e-3, 1e9) == pytest.approx(0.003 + 0.75)
    assert all_gather_s(4, 1e9, 1e-3, 1e9) == pytest.approx(0.003 + 0.75)


@pytest.mark.parametrize("ranks", [2, 3, 8, 1000])
def test_allreduce_is_a_reduce_scatter_then_an_all_gather(ranks: int) -> None:
    arguments = (ranks, 123_456_789.0, 2e-5, 12.5e9)
    assert ring_allreduce_s(*arguments) == pytest.approx(
        reduce_scatter_s(*arguments) + all_gather_s(*arguments)
    )


@pytest.mark.parametrize("collective", [ring_allreduce_s, reduce_scatter_s, all_gather_s])
def test_one_rank_costs_nothing(collective: object) -> None:
    assert callable(collective)
    assert collective(1, 1e9, 1e-3, 1e9) == 0.0


@pytest.mark.parametrize("collective", [ring_allreduce_s, reduce_scatter_s, all_gather_s])
@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ((0, 1.0, 0.0, 1.0), "ranks"),
        ((2, -1.0, 0.0, 1.0), "message_bytes"),
        ((2, 1.0, -1.0, 1.0), "alpha_s"),
        ((2, 1.0, 0.0, 0.0), "bandwidth_bytes_per_s"),
    ],
)
def test_collectives_reject_out_of_range_arguments(
    collective: object, arguments: tuple[int, float, float, float], name: str
) -> None:
    assert callable(collective)
    with pytest.raises(ValueError, match=name):
        collective(*arguments)


def test_iteration_traffic_known_values() -> None:
    # 1000 parameters in bf16 = 2000 bytes; 4 ranks.
    assert iteration_traffic_bytes(1000, parallelism="ddp", ranks=4) == pytest.approx(3000.0)
    assert iteration_traffic_bytes(1000, parallelism="zero3", ranks=4) == pytest.approx(4500.0)
    assert iteration_traffic_bytes(
        1000, parallelism="ddp", ranks=4, bytes_per_element=4
    ) == pytest.approx(6000.0)
    assert iteration_traffic_bytes(1000, parallelism="zero3", ranks=1) == 0.0


@pytest.mark.parametrize("ranks", [2, 16, 128])
def test_zero3_moves_one_and_a_half_times_ddp(ranks: int) -> None:
    parameters = 100_000_000_000
    ddp = iteration_traffic_bytes(parameters, parallelism="ddp", ranks=ranks)
    zero3 = iteration_traffic_bytes(parameters, parallelism="zero3", ranks=ranks)
    assert zero3 / ddp == pytest.approx(1.5)
    ddp_s = iteration_communication_s(
        parameters, parallelism="ddp", ranks=ranks, alpha_s=1e-5, bandwidth_bytes_per_s=50e9
    )
    zero3_s = iteration_communication_s(
        parameters, parallelism="zero3", ranks=ranks, alpha_s=1e-5, bandwidth_bytes_per_s=50e9
    )
    assert zero3_s / ddp_s == pytest.approx(1.5)


@pytest.mark.parametrize("parallelism", ["ddp", "zero3"])
def test_communication_time_without_latency_is_traffic_over_bandwidth(parallelism: str) -> None:
    traffic = iteration_traffic_bytes(10_000, parallelism=parallelism, ranks=8)  # type: ignore[arg-type]
    seconds = iteration_communication_s(
        10_000,
        parallelism=parallelism,  # type: ignore[arg-type]
        ranks=8,
        alpha_s=0.0,
        bandwidth_bytes_per_s=1e6,
    )
    assert seconds == pytest.approx(traffic / 1e6)


def test_communication_time_counts_latency_per_ring_step() -> None:
    # ZeRO-3: three ring phases of n-1 = 3 steps, 1 ms each; no bytes term worth noting.
    seconds = iteration_communication_s(
        1, parallelism="zero3", ranks=4, alpha_s=1e-3, bandwidth_bytes_per_s=1e30
    )
    assert seconds == pytest.approx(9e-3)


@pytest.mark.parametrize(
    ("keywords", "name"),
    [
        ({"parallelism": "tp", "ranks": 2}, "parallelism"),
        ({"parallelism": "ddp", "ranks": 0}, "ranks"),
        ({"parallelism": "ddp", "ranks": 2, "bytes_per_element": 0}, "bytes_per_element"),
    ],
)
def test_iteration_traffic_rejects_out_of_range_arguments(
    keywords: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        iteration_traffic_bytes(1000, **keywords)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        iteration_communication_s(
            1000,
            alpha_s=0.0,
            bandwidth_bytes_per_s=1.0,
            **keywords,  # type: ignore[arg-type]
        )


# --- Checkpoint size and compute -----------------------------------------------------------


def test_checkpoint_of_a_100b_adam_model_is_1_2_tb() -> None:
    assert checkpoint_bytes(100_000_000_000) == 1_200_000_000_000


@pytest.mark.parametrize(
    ("keywords", "bytes_per_parameter"),
    [
        ({"optimizer": "adam"}, 12),
        ({"optimizer": "sgd"}, 8),
        ({"optimizer": "none"}, 4),
        ({"optimizer": "adam", "mixed_precision": False}, 12),
        ({"optimizer": "adam", "save_half_precision_weights": True}, 14),
        ({"optimizer": "none", "save_half_precision_weights": True}, 6),
        # Without mixed precision there is no 16-bit copy to save.
        ({"optimizer": "adam", "mixed_precision": False, "save_half_precision_weights": True}, 12),
    ],
)
def test_checkpoint_bytes_per_parameter(
    keywords: dict[str, object], bytes_per_parameter: int
) -> None:
    assert checkpoint_bytes(1000, **keywords) == 1000 * bytes_per_parameter  # type: ignore[arg-type]


def test_checkpoint_bytes_rejects_out_of_range_arguments() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        checkpoint_bytes(1000, optimizer="adagrad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parameters"):
        checkpoint_bytes(0)
    with pytest.raises(ValueError, match="parameters"):
        checkpoint_bytes(1.5e9)  # type: ignore[arg-type]


def test_training_compute_known_value() -> None:
    # 6 * 1e9 * 1e6 FLOP over 4 accelerators at 1 PFLOP/s and 50% efficiency.
    assert training_compute_s(
        1_000_000_000, 1_000_000, flops_per_s=1e15, efficiency=0.5, accelerators=4
    ) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("keywords", "name"),
    [
        ({"flops_per_s": 0.0, "efficiency": 0.5}, "flops_per_s"),
        ({"flops_per_s": 1e15, "efficiency": 0.0}, "efficiency"),
        ({"flops_per_s": 1e15, "efficiency": 1.5}, "efficiency"),
        ({"flops_per_s": 1e15, "efficiency": 0.5, "accelerators": 0}, "accelerators"),
    ],
)
def test_training_compute_rejects_out_of_range_arguments(
    keywords: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        training_compute_s(1000, 1000, **keywords)  # type: ignore[arg-type]


def test_highfreq_interval_is_the_ceiling_of_save_over_iteration() -> None:
    from shared.costs import highfreq_interval_iterations

    assert highfreq_interval_iterations(81.0 + 480.0, 62.0) == 10  # the paper's inputs
    assert highfreq_interval_iterations(2.16, 0.335) == 7
    assert highfreq_interval_iterations(0.0, 1.0) == 1
    with pytest.raises(ValueError, match="iteration_s"):
        highfreq_interval_iterations(1.0, 0.0)
