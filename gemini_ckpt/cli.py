"""The ``gemini-ckpt`` command line.

Subcommands live in ``gemini_ckpt.commands.<name>`` and are imported only when run, so that
``gemini-ckpt placement`` starts in a blink and never imports torch.

Exit codes: 0 success, 2 bad input (usage errors, invalid scenarios, a scenario too big for
this host), 1 any other failure. No input makes a command print a traceback: an unexpected
error prints one line naming the command and the scenario and asks for a report; ``-vv`` adds
the traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from shared.errors import CredentialsRefused, GeminiError, HostCapacityError, ScenarioError

_verbosity = 0  # -v count of the running command, set by the group's callback

# name -> (module under gemini_ckpt.commands, one-line help shown by `gemini-ckpt --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "placement": ("placement", "Show a placement and its probability of recovery from memory."),
    "validate": ("validate", "Check scenario files against the schema."),
    "sim": ("sim", "Simulate a scenario under failures (SimPy)."),
    "real": ("real", "Run a scenario on an emulated cluster with real PyTorch training."),
    "train": ("train", "Run one trainer process (used by the agents; also runnable by hand)."),
    "agent": ("agent", "Run a node agent (one per node on a real cluster)."),
    "bench": ("bench", "Benchmarks of the checkpoint engine and the simulator."),
    "calibrate": ("calibrate", "Measure this machine or cluster for the simulator."),
    "report": ("report", "Write an HTML + Markdown report from run folders."),
    "run": ("run", "The main job: simulate and run a scenario, Gemini and baseline, and report."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in SUBCOMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS or not _available(cmd_name):
            return None
        module = importlib.import_module(f"gemini_ckpt.commands.{SUBCOMMANDS[cmd_name][0]}")
        command = getattr(module, "command", None)
        if not isinstance(command, click.Command):
            raise RuntimeError(f"gemini_ckpt.commands.{cmd_name} defines no click `command`")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"gemini_ckpt.commands.{SUBCOMMANDS[name][0]}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="gemini-ckpt")
def cli(verbose: int) -> None:
    """Fast failure recovery for distributed training with in-memory checkpoints.

    Simulate a cluster under failures, run real PyTorch training on an emulated cluster with
    failure injection and recovery, and compare the two.
    """
    global _verbosity
    _verbosity = verbose
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def warn(source: str | Path, lines: Sequence[str]) -> None:
    """Print a scenario's warnings, one per line, on stderr."""
    for line in lines:
        click.echo(f"warning: {source}: {line}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes (0 ok, 2 bad input, 1 failure,
    130 interrupted: Ctrl-C, or SIGTERM, which every command takes as a Ctrl-C so that its
    clean-up runs; a command may install its own, as the agent does)."""
    restore = _interrupt_on_sigterm()
    try:
        return _main(argv)
    finally:
        restore()


def _interrupt_on_sigterm() -> Callable[[], object]:
    """Raise KeyboardInterrupt on SIGTERM (in the main thread only, where Python runs signal
    handlers); returns what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _sigterm_interrupts)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _sigterm_interrupts(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _default_sigterm_in_child() -> None:
    """In a child forked while a command ran: SIGTERM ends it again, as by default (a forked
    worker keeps its parent's handlers, and one that took SIGTERM as a Ctrl-C would print a
    traceback, or not end at all while blocked in C, when its parent stops it)."""
    if signal.getsignal(signal.SIGTERM) is _sigterm_interrupts:
        with contextlib.suppress(ValueError):  # forked from a thread: not Python's main
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


def _main(argv: list[str] | None) -> int:
    global _verbosity
    _verbosity = 0
    try:
        # Without standalone mode click returns a command's Exit code instead of exiting.
        code = cli.main(args=argv, prog_name="gemini-ckpt", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as error:
        error.show()
        return 2 if isinstance(error, click.UsageError | click.BadParameter) else error.exit_code
    except click.Abort:  # click's form of a Ctrl-C in a command
        click.echo("Interrupted.", err=True)
        return 130
    except (ScenarioError, HostCapacityError, CredentialsRefused) as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except GeminiError as error:
        click.echo(f"error: {error}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except OSError as error:  # the machine said no: a full disk, a folder not writable
        click.echo(f"error: {error}", err=True)
        return 1
    except MemoryError:
        click.echo(
            "error: out of memory: the input asks for more than this machine holds "
            "(a size or a count too large?)",
            err=True,
        )
        return 1
    except Exception as error:  # the last line of defence: no traceback unless -vv
        click.echo(_internal_error(error, sys.argv[1:] if argv is None else argv), err=True)
        return 1
    return code if isinstance(code, int) else 0


def _is_file(argument: str) -> bool:
    try:
        return Path(argument).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _internal_error(error: BaseException, argv: Sequence[str]) -> str:
    """One line for an unexpected error (the traceback follows with -vv)."""
    command = next((a for a in argv if not a.startswith("-")), "")
    scenarios = [
        a for a in argv if not a.startswith("-") and (a.endswith((".yaml", ".yml")) or _is_file(a))
    ]
    on = f" on {', '.join(scenarios)}" if scenarios else ""
    text = str(error).splitlines()[0] if str(error) else ""
    line = (
        f"internal error in `gemini-ckpt {command}`{on}: {type(error).__name__}"
        f"{': ' + text[:200] if text else ''}. This is a bug: please report it with "
        f"{'the scenario and ' if scenarios else ''}the output of "
        f"`gemini-ckpt -vv {command} ...`"
    )
    if _verbosity >= 2:
        trace = "".join(traceback.format_exception(error))
        return f"{trace.rstrip()}\n{line}"
    return line


def run() -> None:
    """Console-script entry: ``sys.exit`` with ``main``'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
