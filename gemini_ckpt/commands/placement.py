"""``gemini-ckpt placement``: who holds whose checkpoint, and the odds of recovering from memory."""

from __future__ import annotations

import json

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from shared.placement import Placement, plan_placement
from shared.probability import RecoveryProbability, monte_carlo_probability, recovery_probability


@click.command("placement")
@click.option("--nodes", "-n", type=click.IntRange(min=1), required=True, help="Nodes N.")
@click.option(
    "--replicas",
    "-m",
    type=click.IntRange(min=1),
    required=True,
    help="Copies m of each checkpoint, the node's own included.",
)
@click.option(
    "--strategy",
    type=click.Choice(["auto", "group", "ring", "mixed"]),
    default="auto",
    show_default=True,
    help="auto: group when m divides N, else mixed.",
)
@click.option(
    "--failures",
    "-k",
    type=click.IntRange(min=0),
    default=None,
    help="Simultaneous node failures k (default: m).",
)
@click.option(
    "--domains",
    default=None,
    metavar="NAMES|SIZE",
    help="Failure domains: comma-separated domain of each node (a,a,b,b) or a "
    "number of consecutive nodes per domain.",
)
@click.option(
    "--domain-failures",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Whole domains failing at once too (Monte Carlo).",
)
@click.option(
    "--trials",
    type=click.IntRange(min=100),
    default=200_000,
    show_default=True,
    help="Monte Carlo samples when exact counting does not apply.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Monte Carlo seed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(
    nodes: int,
    replicas: int,
    strategy: str,
    failures: int | None,
    domains: str | None,
    domain_failures: int,
    trials: int,
    seed: int,
    as_json: bool,
) -> None:
    """Print the placement of N nodes with m replicas and the probability that every
    checkpoint survives in CPU memory when k nodes fail at once.

    The probability is exact where feasible (enumeration, or combinatorial counting for
    group, ring and mixed placements), else a Monte Carlo estimate with its 95% interval.
    """
    domain_names = _parse_domains(domains, nodes)
    try:
        placement = plan_placement(nodes, replicas, strategy, domains=domain_names)  # type: ignore[arg-type]
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    k = replicas if failures is None else failures
    if k > nodes:
        raise click.BadParameter(f"--failures must be between 0 and nodes ({nodes}), got {k}")
    rng = np.random.default_rng(seed)
    if domain_failures:
        if domain_names is None:
            raise click.BadParameter("--domain-failures needs --domains")
        try:
            result = monte_carlo_probability(
                placement,
                k,
                trials=trials,
                rng=rng,
                domains=domain_names,
                domain_failures=domain_failures,
            )
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--domain-failures") from error
    else:
        result = recovery_probability(placement, k, rng=rng, trials=trials)
    if as_json:
        click.echo(json.dumps(_to_json(placement, k, domain_failures, result), indent=2))
    else:
        _print(placement, k, domain_failures, result)


def _parse_domains(value: str | None, nodes: int) -> list[str] | None:
    if value is None:
        return None
    if value.strip().isdigit():
        size = int(value)
        if size < 1:
            raise click.BadParameter("--domains as a number must be at least 1")
        return [f"d{i // size}" for i in range(nodes)]
    names = [name.strip() for name in value.split(",")]
    if len(names) != nodes or not all(names):
        raise click.BadParameter(
            f"--domains needs {nodes} comma-separated names (one per node), got {len(names)}"
        )
    return names


def _to_json(
    placement: Placement, k: int, domain_failures: int, result: RecoveryProbability
) -> dict[str, object]:
    data = placement.to_json()
    data.update(
        {
            "failures": k,
            "domain_failures": domain_failures,
            "probability": result.probability,
            "method": result.method,
            "ci_low": result.ci_low,
            "ci_high": result.ci_high,
            "trials": result.trials,
            "closed_form": result.closed_form,
            "closed_form_exact": result.closed_form_exact,
        }
    )
    return data


def _print(placement: Placement, k: int, domain_failures: int, result: RecoveryProbability) -> None:
    console = Console()
    table = Table(
        title=f"{placement.strategy} placement, N={placement.nodes}, m={placement.replicas}"
    )
    table.add_column("node", justify="right")
    table.add_column("its checkpoint is held by")
    table.add_column("holds replicas of")
    shown = placement.nodes if placement.nodes <= 64 else 32
    for node in range(shown):
        table.add_row(
            str(node),
            ", ".join(map(str, placement.holders[node])),
            ", ".join(map(str, placement.replicas_held_by(node))) or "-",
        )
    console.print(table)
    if shown < placement.nodes:
        console.print(f"... {placement.nodes - shown} more nodes (use --json for all)")
    if placement.note:
        console.print(f"[yellow]note:[/yellow] {placement.note}")
    extra = f" plus {domain_failures} whole domain(s)" if domain_failures else ""
    line = (
        f"P(every checkpoint survives in memory | {k} node failures{extra}) = "
        f"[bold]{result.probability:.4f}[/bold]  ({result.method}"
    )
    if result.method == "monte-carlo":
        line += f", 95% CI [{result.ci_low:.4f}, {result.ci_high:.4f}], {result.trials} trials"
    console.print(line + ")", soft_wrap=True)  # one line, piped or not
    if result.closed_form is not None:
        kind = "exact here" if result.closed_form_exact else "a lower bound here"
        console.print(f"paper's closed form: {result.closed_form:.4f} ({kind})", soft_wrap=True)
