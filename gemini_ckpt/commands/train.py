"""``gemini-ckpt train``: run one trainer process (see ``real.trainer_main``).

Agents start it once per accelerator with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without those it trains alone.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="train")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario field."
)
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/train"),
    show_default=True,
    help="Run folder: events, final weights, default persistent tier.",
)
@click.option(
    "--checkpointer",
    type=click.Choice(["gemini", "persistent", "none"]),
    default=None,
    help="Checkpoint strategy (default: the scenario's checkpoint.strategy).",
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Iterations to train.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default 1)."
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Collective timeout: a silent peer fails the trainer after this long.",
)
def command(
    scenario: Path,
    overrides: tuple[str, ...],
    run_dir: Path,
    checkpointer: str | None,
    iterations: int | None,
    threads: int | None,
    timeout_s: float,
) -> None:
    """Run one trainer: restore, train, checkpoint every iteration, write final weights."""
    from real.trainer_main import TrainerOptions, run_trainer

    options = TrainerOptions(
        scenario=scenario,
        overrides=overrides,
        run_dir=run_dir,
        checkpointer=checkpointer,  # type: ignore[arg-type]
        iterations=iterations,
        threads=threads,
        timeout_s=timeout_s,
    )
    try:
        manifest = run_trainer(options)
    except (ValueError, RuntimeError, OSError, ImportError) as error:
        raise click.ClickException(f"trainer failed: {error}") from error
    click.echo(str(manifest))
