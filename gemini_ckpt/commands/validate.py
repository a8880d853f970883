"""``gemini-ckpt validate FILE...``: check scenario files against the schema."""

from __future__ import annotations

import click

from shared.errors import ScenarioError
from shared.scenario import schema_markdown
from shared.scenario_loader import load_scenario


@click.command("validate")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
@click.option("--schema", is_flag=True, help="Print every field (Markdown) and exit.")
def command(files: tuple[str, ...], quiet: bool, schema: bool) -> None:
    """Check scenario FILES; print every problem with its field path.

    Exits 0 when every file is valid, 2 when any is not.
    """
    if schema:
        click.echo(schema_markdown(), nl=False)
        return
    if not files:
        raise click.UsageError("give at least one scenario file (or --schema)")
    invalid: list[ScenarioError] = []
    for path in files:
        try:
            scenario = load_scenario(path)
        except ScenarioError as error:
            invalid.append(error)
            click.echo(str(error), err=True)
            continue
        if not quiet:
            cluster = scenario.cluster
            click.echo(
                f"ok  {path}: {scenario.name} ({cluster.nodes} nodes x "
                f"{cluster.accelerators_per_node}, {scenario.checkpoint.strategy}, "
                f"targets {'+'.join(scenario.targets)})"
            )
    if invalid:
        click.echo(f"{len(invalid)} of {len(files)} files invalid", err=True)
        raise click.exceptions.Exit(2)
