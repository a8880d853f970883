"""A Ctrl-C that arrives while library code runs callbacks is honoured, late if need be.

Python runs a signal's handler between bytecodes of the main thread; when that moment falls in a
weakref or ``__del__`` callback (matplotlib's caches, gc of a figure), the KeyboardInterrupt it
raises is printed as "Exception ignored" and dropped, and the command went on to exit 0 (once in
15 Ctrl-Cs during the report's writing, in an operator's audit of 2026-12-06).
``interrupts_honoured`` remembers every Ctrl-C (and SIGTERM, which the commands take as one)
and raises KeyboardInterrupt at the end of its block for one that was swallowed."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from real.runtime.processes import interrupts_handled


@contextlib.contextmanager
def interrupts_honoured() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM raise KeyboardInterrupt as usual; one that a
    callback swallowed is raised again when the block ends (main thread only)."""
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    with interrupts_handled(interrupt):
        yield
    if received:  # the block ended normally: the KeyboardInterrupt was swallowed on the way
        raise KeyboardInterrupt


def run_script(main: Callable[[], int]) -> int:
    """A benchmark script's entry point: ``main()`` with SIGTERM taken as Ctrl-C, so a
    scheduler's stop or ``timeout`` stops the child it runs, as a Ctrl-C does (its children
    run in sessions of their own, where the terminal's Ctrl-C does not reach them; killed
    outright, the script left them running). Returns ``main``'s exit code, or 130 when
    interrupted."""
    try:
        with interrupts_honoured():
            return main()
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr, flush=True)
        return 130
