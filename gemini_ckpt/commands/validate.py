"""``gemini-ckpt validate FILE...``: check scenario files, as the runs will check them.

A scenario passes when ``sim`` and ``real`` (the faces its ``targets`` name, and those given
with ``--target``) would accept it: the schema, the rules of ``shared.scenario_rules`` for
those faces, and for the simulator the rules that need its iteration time (``sim.model``).
Warnings (a failure that never fires in a simulation, a failure storm, a real run too big for
this host, a simulated loss of every node, collectives longer than the stated iteration) are
printed and do not fail the check.
"""

from __future__ import annotations

from collections.abc import Collection

import click

from gemini_ckpt.cli import warn
from shared.errors import ScenarioError
from shared.scenario import Scenario
from shared.scenario_loader import load_scenario
from shared.scenario_rules import Face, check_scenario, warnings
from shared.scenario_rules_doc import schema_markdown


def scenario_warnings(scenario: Scenario, faces: Collection[Face], source: str) -> list[str]:
    """Every warning of ``scenario`` for ``faces``; raises ScenarioError for an error that
    only the simulator's model reveals."""
    lines: list[str] = []
    if "sim" in faces:
        from sim.model import build_model

        try:
            model = build_model(scenario)
        except ScenarioError as error:
            raise ScenarioError(source, error.problems) from None
        lines += warnings(model.findings())
    if "real" in faces:
        real: tuple[Face, ...] = ("real",)
        lines += warnings(check_scenario(scenario, real))
        lines += _size_warnings(scenario)
    return list(dict.fromkeys(lines))


def _size_warnings(scenario: Scenario) -> list[str]:
    from real.launcher.capacity import estimate_run, fit_problems, probe_host

    estimate = estimate_run(scenario, scenario.checkpoint.strategy)
    problems = fit_problems(estimate, probe_host(), scenario.real.timeout_s)
    return [
        f"cluster.nodes: a real run does not fit this host ({problem}); "
        "`gemini-ckpt real` refuses it without --force"
        for problem in problems
    ]


@click.command("validate")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
@click.option(
    "--target",
    "extra_targets",
    type=click.Choice(["sim", "real"]),
    multiple=True,
    help="Check for this face too, whatever the scenario's targets (repeatable).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a scenario field in every file, e.g. --set cluster.nodes=64 (repeatable).",
)
@click.option("--schema", is_flag=True, help="Print every field and rule (Markdown) and exit.")
def command(
    files: tuple[str, ...],
    quiet: bool,
    extra_targets: tuple[str, ...],
    overrides: tuple[str, ...],
    schema: bool,
) -> None:
    """Check scenario FILES as `sim` and `real` will; print every problem with its field path.

    Exits 0 when every file is valid (warnings allowed), 2 when any is not.
    """
    if schema:
        click.echo(schema_markdown(), nl=False)
        return
    if not files:
        raise click.UsageError("give at least one scenario file (or --schema)")
    invalid: list[ScenarioError] = []
    for path in files:
        try:
            extra: list[Face] = [face for face in ("sim", "real") if face in extra_targets]
            scenario = load_scenario(path, list(overrides), faces=extra, with_targets=True)
            faces = [face for face in ("sim", "real") if face in {*scenario.targets, *extra}]
            lines = scenario_warnings(scenario, faces, path)
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
        warn(path, lines)
    if invalid:
        click.echo(f"{len(invalid)} of {len(files)} files invalid", err=True)
        raise click.exceptions.Exit(2)
