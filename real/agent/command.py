"""``gemini-ckpt agent``: run one node agent (one per node; see docs/cluster.md).

The job's secret comes from ``GEMINI_TOKEN`` (never the command line, where ``ps`` shows it);
the run's start time from ``GEMINI_RUN_T0`` (default: now).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from real.runtime.env import GEMINI_RUN_T0, GEMINI_TOKEN


def _checked_kv_url(ctx: click.Context, param: click.Parameter, url: str) -> str:
    """``--kv`` as given, refused (exit 2) with the parser's reason when it is no store URL."""
    from real.coord.kv import parse_kv_url

    try:
        parse_kv_url(url)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return url


@click.command(name="agent")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kv",
    "kv_url",
    required=True,
    callback=_checked_kv_url,
    help="Coordination store: etcd[s]://[USER@]HOST:PORT[/NAMESPACE] or "
    "tcpstore://HOST:PORT[/NAMESPACE].",
)
@click.option("--node-id", type=click.IntRange(min=0), required=True, help="This machine's id.")
@click.option(
    "--slot", type=click.IntRange(min=0), default=None, help="Node rank it takes (not --standby)."
)
@click.option(
    "--standby",
    is_flag=True,
    help="Join the standby pool: warm (store, trainers, heartbeat) until the root gives this "
    "node a lost node's slot.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The run's folder (shared by all nodes: events, logs, final weights).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Scenario override.")
@click.option(
    "--strategy",
    type=click.Choice(["gemini", "persistent"]),
    default=None,
    help="Checkpointer (default: the scenario's checkpoint.strategy).",
)
@click.option("--job", default="gemini-job", show_default=True, help="Job id (slot file prefix).")
@click.option("--host", default="127.0.0.1", show_default=True, help="This node's address.")
@click.option("--parent-pid", type=int, default=None, help="Exit when this process is gone.")
@click.option(
    "--no-summary",
    is_flag=True,
    help="Do not write summary.json when this agent's root ends the job (gemini-ckpt real's "
    "launcher passes it: it summarizes the run itself).",
)
@click.option(
    "--no-resume",
    is_flag=True,
    help="When this agent's root starts the job, start from scratch even if the persistent "
    "tier holds a checkpoint (gemini-ckpt real passes it unless --resume).",
)
def command(
    scenario: Path,
    kv_url: str,
    node_id: int,
    slot: int | None,
    standby: bool,
    run_dir: Path,
    overrides: tuple[str, ...],
    strategy: str | None,
    job: str,
    host: str,
    parent_pid: int | None,
    no_summary: bool,
    no_resume: bool,
) -> None:
    """Run a node agent: node store, heartbeat, trainers, root election."""
    from real.agent.node_agent import AgentConfig, run_agent
    from real.agent.trainer_processes import TrainerSpec
    from shared.errors import AgentIdentityError
    from shared.scenario_loader import load_scenario, with_strategy

    if standby == (slot is not None):
        raise click.UsageError("give either --slot N or --standby")
    where = "standby" if standby else f"slot{slot}"
    token = os.environ.get(GEMINI_TOKEN)
    if not token:
        raise click.UsageError("set GEMINI_TOKEN to the job's secret token")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s node{node_id}/{where} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # The job's checkpoint.strategy, a user's own script's too.
    overrides = with_strategy(overrides, [f"checkpoint.strategy={strategy}"] if strategy else [])
    parsed = load_scenario(scenario, overrides)
    run_dir = run_dir.resolve()
    spec = TrainerSpec.of_scenario(scenario, overrides, parsed, run_dir)
    config = AgentConfig(
        kv_url=kv_url,
        node_id=node_id,
        slot=slot,
        scenario=parsed,
        spec=spec,
        token=token,
        job=job,
        host=host,
        t0=float(os.environ.get(GEMINI_RUN_T0, time.time())),
        parent_pid=parent_pid,
        summarize=not no_summary,
        resume=not no_resume,
    )
    try:
        code = run_agent(config)
    except AgentIdentityError as error:  # started as a second copy of a live agent
        raise click.UsageError(str(error)) from error
    if code:
        raise click.exceptions.Exit(code)
