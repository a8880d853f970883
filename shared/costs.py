"""Cost models: wasted time per failure, checkpoint intervals, communication and compute.

Everything here is a closed-form estimate, a pure function of its arguments, in seconds and
bytes. The simulator and the analysis use these to size scenarios and to check measurements;
none of it is fitted to a result.

Wasted time per failure (Gemini, SOSP 2023, section 2). A job checkpoints with frequency f
(one checkpoint every 1/f seconds) and each checkpoint takes t_ckpt to complete. A failure
lands, on average, halfway through an interval, so it loses the checkpoint that was in flight
(t_ckpt) plus half an interval of progress (1/(2f)), and then pays t_rtvl to read the state
back::

    T_wasted = t_ckpt + 1/(2f) + t_rtvl,   with 1/f >= max(t_ckpt, T_iter)

A checkpoint cannot start before the previous one finished, nor more often than once per
iteration, hence the lower bound on the interval.

Checkpoint intervals. Young (1974) and Daly (2006) give the interval between checkpoints that
minimises the expected total run time, from the cost of one checkpoint C and the mean time
between failures M of the whole job (not of one node: see ``shared.failures.cluster_mtbf_s``).

Collectives (alpha-beta model). Sending a message costs alpha (a per-message latency) plus
size / B. A ring all-reduce over n ranks is a reduce-scatter followed by an all-gather, each
n-1 steps in which every rank sends 1/n of the message; so every rank sends 2(n-1)/n of the
message bytes. ZeRO-3/FSDP all-gathers the parameters twice per iteration (forward and
backward) and reduce-scatters the gradients once: 3(n-1)/n of the model bytes, 1.5 times the
2(n-1)/n of DDP's single gradient all-reduce.

Checkpoint size and compute time are per-parameter rules of thumb, documented where defined.
"""

from __future__ import annotations

import math
from typing import Literal

from shared.checks import require_finite_non_negative, require_finite_positive, require_int_at_least

Optimizer = Literal["adam", "sgd", "none"]
"""Optimizer whose state is checkpointed: Adam (m and v), SGD with momentum, or none."""

Parallelism = Literal["ddp", "zero3"]
"""Data parallelism flavour: DDP (replicated model) or ZeRO-3/FSDP (fully sharded)."""

# Bytes per parameter of the state that must be checkpointed to resume training exactly.
# Weights are kept in fp32 (the "master" copy under mixed precision); Adam keeps two fp32
# moments, SGD with momentum one fp32 buffer.
_FP32_BYTES = 4
_OPTIMIZER_STATE_BYTES_PER_PARAMETER: dict[str, int] = {"adam": 8, "sgd": 4, "none": 0}
_HALF_PRECISION_BYTES = 2

# 6 floating-point operations per parameter per token: 2 in the forward pass (one multiply,
# one add), 4 in the backward pass (gradients with respect to activations and to weights).
# Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1.
_TRAINING_FLOPS_PER_PARAMETER_PER_TOKEN = 6


# --- Wasted time and checkpoint intervals ---------------------------------------------------


def highfreq_interval_iterations(save_s: float, iteration_s: float) -> int:
    """The paper's HighFreq baseline: checkpoint every ceil(t_save / T_iter) iterations.

    The most frequent persistent checkpointing whose saves never overlap: one save (the time
    it blocks or occupies storage, ``save_s``) per ``ceil(save_s / iteration_s)`` iterations,
    at least 1.

    Raises:
        ValueError: ``save_s`` negative or ``iteration_s`` not positive.
    """
    require_finite_non_negative("save_s", save_s)
    require_finite_positive("iteration_s", iteration_s)
    return max(1, math.ceil(save_s / iteration_s))


def wasted_time_per_failure_s(
    checkpoint_time_s: float,
    checkpoint_interval_s: float,
    retrieval_s: float,
    iteration_s: float,
) -> float:
    """Average training time wasted by one failure: t_ckpt + 1/(2f) + t_rtvl.

    Args:
        checkpoint_time_s: Time to complete one checkpoint (t_ckpt), seconds, >= 0.
        checkpoint_interval_s: Time between the starts of two checkpoints (1/f), seconds;
            at least max(checkpoint_time_s, iteration_s).
        retrieval_s: Time to read the checkpoint back after a failure (t_rtvl), seconds, >= 0.
        iteration_s: Time of one training iteration (T_iter), seconds, > 0.

    Returns:
        Expected wasted time per failure, seconds.

    Raises:
        ValueError: If an argument is out of range, or the interval is shorter than one
            checkpoint or one iteration.
    """
    require_finite_non_negative("checkpoint_time_s", checkpoint_time_s)
    require_finite_non_negative("retrieval_s", retrieval_s)
    require_finite_positive("iteration_s", iteration_s)
    require_finite_positive("checkpoint_interval_s", checkpoint_interval_s)
    minimum_interval_s = max(checkpoint_time_s, iteration_s)
    if checkpoint_interval_s < minimum_interval_s:
        raise ValueError(
            f"checkpoint_interval_s must be >= max(checkpoint_time_s, iteration_s) = "
            f"{minimum_interval_s!r} s, got {checkpoint_interval_s!r}"
        )
    return checkpoint_time_s + checkpoint_interval_s / 2 + retrieval_s


def young_interval_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Young's first-order optimal checkpoint interval, sqrt(2 C M).

    Young 1974, "A first order approximation to the optimum checkpoint interval", CACM 17(9).
    The interval is compute time between the end of one checkpoint and the start of the next.

    Args:
        checkpoint_cost_s: Time one checkpoint stalls training (C), seconds, > 0.
        mtbf_s: Mean time between failures of the whole job (M), seconds, > 0.

    Returns:
        Checkpoint interval, seconds.

    Raises:
        ValueError: If an argument is not a finite positive number.
    """
    require_finite_positive("checkpoint_cost_s", checkpoint_cost_s)
    require_finite_positive("mtbf_s", mtbf_s)
    return math.sqrt(2 * checkpoint_cost_s * mtbf_s)


def daly_interval_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimal checkpoint interval.

    Daly's optimum does not depend on the restart time R: R multiplies the expected run time
    by the constant factor exp(R/M) (see ``expected_run_time_s``), so it takes no restart
    argument.

    Args:
        checkpoint_cost_s: Time one checkpoint stalls training (C, Daly's delta), seconds, > 0.
        mtbf_s: Mean time between failures of the whole job (M), seconds, > 0.

    Returns:
        Compute time between checkpoints, seconds. Shorter than Young's by about 2C/3 when
        C << M; equal to M once C >= 2M.

    Raises:
        ValueError: If an argument is not a finite positive number.
    """
    require_finite_positive("checkpoint_cost_s", checkpoint_cost_s)
    require_finite_positive("mtbf_s", mtbf_s)
    # Daly 2006, "A higher order estimate of the optimum checkpoint interval for restart
    # dumps", Future Generation Computer Systems 22(3), 2006:
    #   tau_opt = sqrt(2 C M) * [1 + (1/3) sqrt(C / (2M)) + (1/9) (C / (2M))] - C   if C < 2M
    #   tau_opt = M                                                                  if C >= 2M
    ratio = checkpoint_cost_s / (2 * mtbf_s)
    if ratio >= 1:
        return mtbf_s
    return (
        math.sqrt(2 * checkpoint_cost_s * mtbf_s) * (1 + math.sqrt(ratio) / 3 + ratio / 9)
        - checkpoint_cost_s
    )


def expected_run_time_s(
    solve_time_s: float,
    interval_s: float,
    checkpoint_cost_s: float,
    mtbf_s: float,
    restart_s: float = 0.0,
) -> float:
    """Expected wall-clock time of a job under exponential failures with periodic checkpoints.

    Daly 2006 (cited in ``daly_interval_s``): T_w = M exp(R/M) (exp((tau + C)/M) - 1) T_s / tau.
    Failures may strike during computation, checkpoints and restarts alike; this is the
    function whose minimum over tau ``daly_interval_s`` approximates.

    Args:
        solve_time_s: Failure-free compute time of the job (T_s), seconds, > 0.
        interval_s: Compute time between checkpoints (tau), seconds, > 0.
        checkpoint_cost_s: Time one checkpoint stalls training (C), seconds, >= 0.
        mtbf_s: Mean time between failures of the whole job (M), seconds, > 0.
        restart_s: Time to restart from a checkpoint after a failure (R), seconds, >= 0.

    Returns:
        Expected total wall-clock time, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    require_finite_positive("solve_time_s", solve_time_s)
    require_finite_positive("interval_s", interval_s)
    require_finite_non_negative("checkpoint_cost_s", checkpoint_cost_s)
    require_finite_positive("mtbf_s", mtbf_s)
    require_finite_non_negative("restart_s", restart_s)
    return (
        mtbf_s
        * math.exp(restart_s / mtbf_s)
        * math.expm1((interval_s + checkpoint_cost_s) / mtbf_s)
        * solve_time_s
        / interval_s
    )


# --- Collectives (alpha-beta model) ---------------------------------------------------------


def _ring_collective_s(
    phases: int,
    ranks: int,
    message_bytes: float,
    alpha_s: float,
    bandwidth_bytes_per_s: float,
) -> float:
    require_int_at_least("ranks", ranks, 1)
    require_finite_non_negative("message_bytes", message_bytes)
    require_finite_non_negative("alpha_s", alpha_s)
    require_finite_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    # Each phase is n-1 ring steps; in each step every rank sends S/n bytes as one message.
    steps = phases * (ranks - 1)
    return steps * alpha_s + steps / ranks * message_bytes / bandwidth_bytes_per_s


def ring_allreduce_s(
    ranks: int, message_bytes: float, alpha_s: float, bandwidth_bytes_per_s: float
) -> float:
    """Time of a ring all-reduce: 2(n-1) alpha + 2(n-1)/n S/B.

    Args:
        ranks: Number of participating ranks (n), >= 1; one rank costs nothing.
        message_bytes: Size of the buffer every rank contributes (S), bytes, >= 0.
        alpha_s: Latency of one message (alpha), seconds, >= 0.
        bandwidth_bytes_per_s: Per-rank send bandwidth (B), bytes per second, > 0.

    Returns:
        Time of the collective, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    return _ring_collective_s(2, ranks, message_bytes, alpha_s, bandwidth_bytes_per_s)


def reduce_scatter_s(
    ranks: int, message_bytes: float, alpha_s: float, bandwidth_bytes_per_s: float
) -> float:
    """Time of a ring reduce-scatter: (n-1) alpha + (n-1)/n S/B.

    Args:
        ranks: Number of participating ranks (n), >= 1; one rank costs nothing.
        message_bytes: Size of the full (unscattered) buffer on every rank (S), bytes, >= 0.
        alpha_s: Latency of one message (alpha), seconds, >= 0.
        bandwidth_bytes_per_s: Per-rank send bandwidth (B), bytes per second, > 0.

    Returns:
        Time of the collective, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    return _ring_collective_s(1, ranks, message_bytes, alpha_s, bandwidth_bytes_per_s)


def all_gather_s(
    ranks: int, message_bytes: float, alpha_s: float, bandwidth_bytes_per_s: float
) -> float:
    """Time of a ring all-gather: (n-1) alpha + (n-1)/n S/B.

    Args:
        ranks: Number of participating ranks (n), >= 1; one rank costs nothing.
        message_bytes: Size of the full (gathered) buffer (S), bytes, >= 0; each rank
            contributes S/n.
        alpha_s: Latency of one message (alpha), seconds, >= 0.
        bandwidth_bytes_per_s: Per-rank send bandwidth (B), bytes per second, > 0.

    Returns:
        Time of the collective, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    return _ring_collective_s(1, ranks, message_bytes, alpha_s, bandwidth_bytes_per_s)


# Per iteration, the ring collectives each parallelism runs over the full model-sized buffer,
# counted in ring phases of n-1 steps (an all-reduce is two phases).
_RING_PHASES_PER_ITERATION: dict[str, int] = {
    "ddp": 2,  # one all-reduce of the gradients
    "zero3": 3,  # all-gather params in forward and in backward, reduce-scatter gradients
}


def _require_parallelism(parallelism: str) -> None:
    if parallelism not in _RING_PHASES_PER_ITERATION:
        raise ValueError(
            f"parallelism must be one of {sorted(_RING_PHASES_PER_ITERATION)}, got {parallelism!r}"
        )


def iteration_traffic_bytes(
    parameters: int,
    *,
    parallelism: Parallelism,
    ranks: int,
    bytes_per_element: int = 2,
) -> float:
    """Bytes each rank sends per training iteration for data-parallel synchronisation.

    DDP all-reduces the gradients once: 2(n-1)/n * P * b. ZeRO-3/FSDP all-gathers the
    parameters in forward and again in backward and reduce-scatters the gradients:
    3(n-1)/n * P * b, 1.5 times DDP. Ring algorithms; n = 1 sends nothing.

    Args:
        parameters: Model parameters (P), >= 1.
        parallelism: "ddp" or "zero3".
        ranks: Data-parallel ranks (n), >= 1.
        bytes_per_element: Bytes per communicated parameter or gradient element (b), >= 1;
            2 for bf16/fp16.

    Returns:
        Bytes sent by each rank per iteration (a float: (n-1)/n need not be whole).

    Raises:
        ValueError: If an argument is out of range.
    """
    require_int_at_least("parameters", parameters, 1)
    _require_parallelism(parallelism)
    require_int_at_least("ranks", ranks, 1)
    require_int_at_least("bytes_per_element", bytes_per_element, 1)
    phases = _RING_PHASES_PER_ITERATION[parallelism]
    return phases * (ranks - 1) / ranks * parameters * bytes_per_element


def iteration_communication_s(
    parameters: int,
    *,
    parallelism: Parallelism,
    ranks: int,
    alpha_s: float,
    bandwidth_bytes_per_s: float,
    bytes_per_element: int = 2,
) -> float:
    """Time per iteration spent in data-parallel collectives, if none overlap each other.

    Each collective moves the whole model-sized buffer as one message, so alpha is paid per
    ring step, not per bucket or layer; with large buffers the bandwidth term dominates.

    Args:
        parameters: Model parameters (P), >= 1.
        parallelism: "ddp" (one gradient all-reduce) or "zero3" (two parameter all-gathers
            and one gradient reduce-scatter).
        ranks: Data-parallel ranks (n), >= 1.
        alpha_s: Latency of one message, seconds, >= 0.
        bandwidth_bytes_per_s: Per-rank send bandwidth, bytes per second, > 0.
        bytes_per_element: Bytes per communicated element, >= 1; 2 for bf16/fp16.

    Returns:
        Communication time per iteration, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    require_int_at_least("parameters", parameters, 1)
    _require_parallelism(parallelism)
    require_int_at_least("bytes_per_element", bytes_per_element, 1)
    model_bytes = parameters * bytes_per_element
    if parallelism == "ddp":
        return ring_allreduce_s(ranks, model_bytes, alpha_s, bandwidth_bytes_per_s)
    return 2 * all_gather_s(ranks, model_bytes, alpha_s, bandwidth_bytes_per_s) + (
        reduce_scatter_s(ranks, model_bytes, alpha_s, bandwidth_bytes_per_s)
    )


# --- Checkpoint size and compute ------------------------------------------------------------


def node_checkpoint_bytes(
    job_bytes: float, *, nodes: int, ranks_per_node: int, parallelism: str
) -> float:
    """Bytes one node checkpoints (its ranks' states together).

    Under ZeRO-3 (FSDP) the job's state is sharded: each node holds ``job_bytes / nodes``.
    Under DDP every rank holds the whole model and optimizer state, and each checkpoints it
    (as the real harness does): ``job_bytes * ranks_per_node``; the job's checkpoint is then
    ``nodes`` times that.

    Args:
        job_bytes: one full copy of the model and optimizer state, bytes.
        nodes: N.
        ranks_per_node: ranks (accelerators) per node.
        parallelism: "ddp" or "zero3".
    """
    if parallelism == "ddp":
        return job_bytes * ranks_per_node
    return job_bytes / nodes


def checkpoint_bytes(
    parameters: int,
    *,
    optimizer: Optimizer = "adam",
    mixed_precision: bool = True,
    save_half_precision_weights: bool = False,
) -> int:
    """Bytes of model and optimizer state needed to resume training exactly.

    Counted per parameter: the fp32 weights (4 bytes; under mixed precision these are the
    fp32 master weights), plus the optimizer state in fp32: Adam's first and second moments
    (8 bytes), SGD's momentum buffer (4 bytes) or nothing. Adam therefore needs 12 bytes per
    parameter, so a 100B-parameter model checkpoints 1.2 TB. Under mixed precision the
    16-bit working copy of the weights is a rounding of the master weights and is not
    counted, unless ``save_half_precision_weights`` asks for it (2 more bytes, as DeepSpeed
    and Megatron checkpoints store it). Gradients, activations, the step counter and the
    data-loader position are not counted (absent or negligible between iterations).

    Args:
        parameters: Model parameters, >= 1.
        optimizer: "adam", "sgd" (with momentum) or "none".
        mixed_precision: Whether training keeps a 16-bit working copy of the weights beside
            the fp32 master weights.
        save_half_precision_weights: Whether the checkpoint also stores that 16-bit copy;
            only has an effect with ``mixed_precision``.

    Returns:
        Checkpoint size, bytes.

    Raises:
        ValueError: If an argument is out of range.
    """
    require_int_at_least("parameters", parameters, 1)
    if optimizer not in _OPTIMIZER_STATE_BYTES_PER_PARAMETER:
        raise ValueError(
            f"optimizer must be one of {sorted(_OPTIMIZER_STATE_BYTES_PER_PARAMETER)}, "
            f"got {optimizer!r}"
        )
    bytes_per_parameter = _FP32_BYTES + _OPTIMIZER_STATE_BYTES_PER_PARAMETER[optimizer]
    if mixed_precision and save_half_precision_weights:
        bytes_per_parameter += _HALF_PRECISION_BYTES
    return parameters * bytes_per_parameter


def training_compute_s(
    parameters: int,
    tokens: int,
    *,
    flops_per_s: float,
    efficiency: float,
    accelerators: int = 1,
) -> float:
    """Compute time of one iteration of a dense transformer: 6 P T / (F e A).

    Args:
        parameters: Model parameters (P), >= 1.
        tokens: Tokens processed per iteration across the whole job (T), >= 1.
        flops_per_s: Peak floating-point throughput of ONE accelerator (F), FLOP/s, > 0
            (e.g. 312e12 for an A100 in bf16).
        efficiency: Achieved fraction of peak, the model FLOPs utilisation (e), in (0, 1].
        accelerators: Accelerators sharing the work (A), >= 1.

    Returns:
        Compute time per iteration, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    require_int_at_least("parameters", parameters, 1)
    require_int_at_least("tokens", tokens, 1)
    require_finite_positive("flops_per_s", flops_per_s)
    if not math.isfinite(efficiency) or not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency!r}")
    require_int_at_least("accelerators", accelerators, 1)
    total_flops = _TRAINING_FLOPS_PER_PARAMETER_PER_TOKEN * parameters * tokens
    return total_flops / (flops_per_s * efficiency * accelerators)
