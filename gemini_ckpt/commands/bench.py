"""``gemini-ckpt bench``: benchmarks that print figures (not timed tests).

``gemini-ckpt bench engine`` measures the in-memory checkpoint engine against its baselines,
side by side in one run (``real.engine.bench`` and ``real.engine.bench_training``): capture vs
a plain tensor copy, replication vs raw TCP to the same store process, restore from local memory
vs a DCP load from disk, checkpoint memory as a fraction of the node's memory, and training
iteration time with per-iteration checkpoints (interleaved and blocking) vs none.
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
    "--size-mb", default=256, show_default=True, help="State size of the micro benchmarks, MiB."
)
@click.option("--repeats", default=5, show_default=True, help="Repeats (medians are printed).")
@click.option(
    "--training/--no-training",
    default=True,
    show_default=True,
    help="Also measure training iteration time with checkpoints (minutes).",
)
@click.option("--nodes", default=2, show_default=True, help="Training: nodes.")
@click.option("--ranks-per-node", default=2, show_default=True, help="Training: ranks per node.")
@click.option("--iterations", default=40, show_default=True, help="Training: iterations per run.")
@click.option(
    "--training-repeats",
    default=2,
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
    iterations: int,
    training_repeats: int,
    json_path: Path | None,
) -> None:
    """Capture, replication, restore, memory and training overhead of the engine."""
    import warnings

    from real.engine.bench import bench_micro

    warnings.filterwarnings("ignore", module="torch.distributed.checkpoint")
    click.echo(f"$ gemini-ckpt {shlex.join(sys.argv[1:])}")
    figures: dict[str, Any] = {"micro": bench_micro(size_mb, repeats)}
    _print_micro(figures["micro"])
    if training:
        try:
            from real.engine.bench_training import bench_training
        except ImportError as error:  # the workload is optional for this command
            click.echo(f"training overhead: skipped ({error})")
        else:
            figures["training"] = bench_training(
                nodes, ranks_per_node, iterations, repeats=training_repeats
            )
            _print_training(figures["training"])
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


def _print_training(training: dict[str, Any]) -> None:
    seconds, overhead = training["iteration_s"], training["overhead"]
    click.echo(
        f"training     {training['ranks']} ranks, median iteration: none "
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
