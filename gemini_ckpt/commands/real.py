"""``gemini-ckpt real``: run a scenario on an emulated cluster (see docs/cluster.md).

Before anything starts, the scenario is checked for a real run (a failure that can never fire
is an error) and the cluster's size against this host (``real.launcher.capacity``): a run that
does not fit is refused with the estimate and the limit (exit 2) unless ``--force`` is given.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click


@click.command(name="real")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder (default: runs/<scenario name>-<strategy>-<time>).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario field."
)
@click.option(
    "--strategy",
    type=click.Choice(["gemini", "persistent"]),
    default=None,
    help="Checkpoint strategy (default: the scenario's checkpoint.strategy).",
)
@click.option(
    "--mode",
    type=click.Choice(["local", "netns"]),
    default=None,
    help="Emulated cluster (default: the scenario's real.mode).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Start even when the size check estimates that the cluster does not fit this host.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Resume from the persistent tier's newest checkpoint (cluster.storage.url: a job "
    "submitted again; export the same GEMINI_PERSISTENT_KEY for every submission). Default: "
    "start from scratch.",
)
def command(
    scenario: Path,
    out: Path | None,
    overrides: tuple[str, ...],
    strategy: str | None,
    mode: str | None,
    force: bool,
    resume: bool,
) -> None:
    """Run training with the scenario's failures on an emulated cluster; print the recovery
    breakdown. Writes events.jsonl and summary.json to the run folder."""
    import time

    from rich.console import Console

    from gemini_ckpt.cli import warn
    from real.launcher.capacity import require_fits
    from real.launcher.results import breakdown_table
    from real.launcher.run import REAL, RealOptions, run_real
    from shared.errors import RunFolderError
    from shared.scenario_loader import load_scenario, with_strategy
    from shared.scenario_rules import check_scenario, warnings

    overrides = with_strategy(overrides, [f"checkpoint.strategy={strategy}"] if strategy else [])
    parsed = load_scenario(scenario, overrides, faces=REAL)
    warn(scenario, warnings(check_scenario(parsed, REAL)))
    chosen = parsed.checkpoint.strategy
    # run_real checks again; here the refusal names the file, before any folder is made.
    require_fits(parsed, chosen, force=force, source=str(scenario))
    if (mode or parsed.real.mode) == "netns":
        require_netns()
    if out is None:
        out = Path("runs") / f"{parsed.name}-{chosen}-{time.strftime('%Y%m%d-%H%M%S')}"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)  # teardown runs on SIGTERM too
    try:
        result = run_real(
            RealOptions(
                scenario,
                out,
                tuple(overrides),
                strategy=chosen,
                mode=mode,
                force=force,
                resume=resume,
            )
        )
    except RunFolderError as error:  # a used --out: bad input
        raise click.BadParameter(str(error), param_hint="--out") from error
    except (RuntimeError, TimeoutError, OSError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    except subprocess.CalledProcessError as error:  # an ip or tc step of the netns set-up
        raise click.ClickException(_failed_step(error)) from error
    finally:
        signal.signal(signal.SIGTERM, previous)
    console = Console(width=None if Console().is_terminal else 150)
    console.print(breakdown_table(result.summary))
    summary = result.summary
    console.print(
        f"iterations {summary.iterations_completed}, iteration {summary.iteration_time_s:.3f} s, "
        f"run {summary.duration_s:.1f} s, final weights {final_weights(summary.extra)}"
    )
    console.print(
        f"events: {result.run_dir / 'events.jsonl'}  summary: {result.run_dir / 'summary.json'}"
    )


def final_weights(extra: Mapping[str, Any]) -> str:
    """The final weights' line of a run's summary (``RunSummary.extra``): their digest when
    every rank wrote the same, else why there is none."""
    if extra.get("final_digest"):
        return str(extra["final_digest"])
    if not extra.get("final_digests"):
        return (
            "not reported (no trainer wrote final/rank*.bin.json: a script of your own "
            "keeps its own)"
        )
    return "DIFFER between ranks"


def require_netns() -> None:
    """Refuse netns mode (exit 2) where this host cannot make network namespaces."""
    from real.launcher.netns import netns_available

    why = netns_available()
    if why is not None:
        raise click.UsageError(f"{why}; use --mode local to run without network namespaces")


def _failed_step(error: subprocess.CalledProcessError) -> str:
    """The command that failed, its exit status and what it said on stderr."""
    command = error.cmd if isinstance(error.cmd, str) else shlex.join(map(str, error.cmd))
    stderr = error.stderr
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    said = f": {stderr.strip()}" if stderr else ""
    return f"a step of the emulated cluster failed: {command} exited with {error.returncode}{said}"
