"""``gemini-ckpt bench``: benchmarks that print figures (not timed tests).

``gemini-ckpt bench engine`` measures the in-memory checkpoint engine against its baselines,
side by side in one run (``benchmarks.engine`` and ``benchmarks.engine_training``): capture vs
a plain tensor copy, replication vs raw TCP to the same store process, restore from local memory
vs a DCP load from disk, checkpoint memory as a fraction of the node's memory (also for the
~20M-parameter demo model), and training iteration time with per-iteration checkpoints
(interleaved and blocking) vs none, for each model size of ``--models`` side by side.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click


@click.group(name="bench")
def command() -> None:
    """Benchmarks of the checkpoint engine and the simulator."""


@command.command(name="engine")
@click.option(
    "--size-mb",
    default=256,
    type=click.IntRange(min=1),
    show_default=True,
    help="State size of the micro benchmarks, MiB.",
)
@click.option(
    "--repeats",
    default=5,
    type=click.IntRange(min=1),
    show_default=True,
    help="Repeats (medians are printed).",
)
@click.option(
    "--training/--no-training",
    default=True,
    show_default=True,
    help="Also measure training iteration time with checkpoints (minutes).",
)
@click.option(
    "--nodes", default=2, type=click.IntRange(min=1), show_default=True, help="Training: nodes."
)
@click.option(
    "--ranks-per-node",
    default=2,
    type=click.IntRange(min=1),
    show_default=True,
    help="Training: ranks per node.",
)
@click.option(
    "--models",
    default="tiny,medium",
    show_default=True,
    help="Training: model sizes measured side by side, comma-separated: presets tiny (0.8M "
    "parameters, ~0.1 s per iteration with 4 ranks on 2 cores), medium (3.3M, ~1 s), demo "
    "(19.5M, ~7 s), or LAYERSxHIDDENxCONTEXT[/BATCH].",
)
@click.option(
    "--iterations",
    default=None,
    type=click.IntRange(min=1),
    help="Training: iterations per run (default: per model, 40 tiny, 20 medium, 12 demo); "
    "the first 7 (profiling the idle spans, warm-up) are not timed.",
)
@click.option(
    "--memory-model",
    default="demo",
    show_default=True,
    help="Print checkpoint memory as a fraction of node memory for this model (preset or "
    "shape), with --ranks-per-node ranks per node; '' to skip.",
)
@click.option(
    "--training-repeats",
    default=2,
    type=click.IntRange(min=1),
    show_default=True,
    help="Training: runs of each mode, alternating.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the figures as JSON here.",
)
def engine(
    size_mb: int,
    repeats: int,
    training: bool,
    nodes: int,
    ranks_per_node: int,
    models: str,
    iterations: int | None,
    memory_model: str,
    training_repeats: int,
    json_path: Path | None,
) -> None:
    """Capture, replication, restore, memory and training overhead of the engine."""
    import warnings

    from benchmarks.engine import bench_micro

    warnings.filterwarnings("ignore", module="torch.distributed.checkpoint")
    try:
        from benchmarks import engine_training as training_bench
    except ImportError as error:  # the workload is optional for this command
        click.echo(f"training and model memory: skipped ({error})")
        training, memory_model = False, ""
    if training and iterations is not None and iterations <= training_bench.untimed():
        raise click.BadParameter(
            f"{iterations} leave none to time: the first {training_bench.untimed()} profile "
            "the idle spans and warm up",
            param_hint="--iterations",
        )
    # Every argument is read before the first benchmark: a typo in a model's name used to
    # surface only after minutes of micro-benchmarks.
    chosen, memory = [], None
    try:
        if training:
            chosen = [training_bench.parse_model(m) for m in models.split(",") if m.strip()]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--models") from None
    if training and not chosen:
        raise click.BadParameter("name at least one model", param_hint="--models")
    if memory_model:
        try:
            memory = training_bench.parse_model(memory_model)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--memory-model") from None
    click.echo(f"$ gemini-ckpt {shlex.join(sys.argv[1:])}")
    figures: dict[str, Any] = {"micro": bench_micro(size_mb, repeats)}
    _print_micro(figures["micro"])
    if memory is not None:
        figures["model_memory"] = training_bench.model_memory(memory, ranks_per_node)
        _print_model_memory(figures["model_memory"])
    if training:
        figures["training"] = []
        for model in chosen:
            result = training_bench.bench_training(
                nodes, ranks_per_node, iterations, model=model, repeats=training_repeats
            )
            figures["training"].append(result)
            _print_training(result)
        if len(figures["training"]) > 1:
            _print_training_table(figures["training"])
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2))


def _print_micro(micro: dict[str, Any]) -> None:
    size = micro["state_bytes"] / 2**20
    capture, replication = micro["capture"], micro["replication"]
    restore, memory = micro["restore"], micro["memory"]
    click.echo(
        f"state: {size:.0f} MiB in 32 float32 tensors; medians of {micro['repeats']} pairs; "
        "ratios by wall time, and by CPU time of every process involved"
    )
    for name, row, baseline in (
        ("capture", capture, "plain copy"),
        ("replication", replication, "raw TCP"),
    ):
        click.echo(
            f"{name:<12} {row['engine_gbyte_s']:6.2f} GB/s vs {baseline} "
            f"{row['baseline_gbyte_s']:6.2f} GB/s: ratio {row['ratio']:.2f} wall, "
            f"{row['cpu_ratio']:.2f} CPU (goal >= 0.8)"
        )
    click.echo(
        f"restore      local memory {restore['local_s'] * 1e3:7.1f} ms vs DCP load "
        f"{restore['dcp_s'] * 1e3:7.1f} ms: speedup {restore['speedup']:.2f}x wall, "
        f"{restore['cpu_speedup']:.2f}x CPU"
    )
    click.echo(
        f"memory       {memory['bytes_per_rank'] / 2**20:.0f} MiB per rank "
        f"({memory['per_state_byte']:.2f} bytes per state byte, m=2) = "
        f"{memory['fraction_of_node']:.2%} of node memory"
    )


def _print_model_memory(memory: dict[str, Any]) -> None:
    click.echo(
        f"memory       {memory['model']} model ({memory['parameters'] / 1e6:.1f}M parameters, "
        f"{memory['state_bytes_per_rank'] / 2**20:.0f} MiB of state per rank), "
        f"{memory['ranks_per_node']} ranks per node, m=2: "
        f"{memory['node_bytes'] / 2**20:.0f} MiB per node = "
        f"{memory['fraction_of_node']:.2%} of node memory "
        f"({memory['node_memory_bytes'] / 2**30:.0f} GiB)"
    )


def _print_training_table(results: list[dict[str, Any]]) -> None:
    click.echo("training overhead side by side (median iteration, s; overhead vs none):")
    click.echo(
        f"  {'model':<12} {'params':>7} {'state':>8} {'none':>7} {'interleaved':>19} "
        f"{'blocking':>19}"
    )
    for result in results:
        model, seconds, overhead = result["model"], result["iteration_s"], result["overhead"]
        state = result.get("state_bytes") or 0
        click.echo(
            f"  {model['name']:<12} {model['parameters'] / 1e6:6.1f}M {state / 2**20:6.1f}MB "
            f"{seconds['none']:7.3f} {seconds['interleaved']:9.3f} "
            f"({overhead['interleaved']:+6.1%}) {seconds['blocking']:9.3f} "
            f"({overhead['blocking']:+6.1%})"
        )


def _print_training(training: dict[str, Any]) -> None:
    seconds, overhead = training["iteration_s"], training["overhead"]
    model = training.get("model", {})
    click.echo(
        f"training     {model.get('name', '')} model ({model.get('parameters', 0) / 1e6:.1f}M "
        f"parameters, batch {model.get('batch')}), {training['ranks']} ranks, "
        f"median iteration: none "
        f"{seconds['none'] * 1e3:.1f} ms, interleaved {seconds['interleaved'] * 1e3:.1f} "
        f"ms ({overhead['interleaved']:+.1%}, goal < 5%), blocking "
        f"{seconds['blocking'] * 1e3:.1f} ms ({overhead['blocking']:+.1%})"
    )
    interleaved = training["details"].get("interleaved", {})
    sent = interleaved.get("sent_bytes")
    if sent:
        total = max(sum(sent.values()), 1)
        profile = interleaved.get("profile", {})
        click.echo(
            f"             interleaved, rank 0: {sent['in_spans'] / total:.0%} of replica bytes "
            f"inside idle spans, {sent['outside_spans'] / total:.0%} outside, "
            f"{sent['unscheduled'] / total:.0%} before the profile was complete; network idle "
            f"{profile.get('idle_fraction', 0):.0%} of an iteration in {profile.get('idle_spans')} "
            "spans"
        )
