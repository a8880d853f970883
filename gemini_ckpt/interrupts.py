"""A Ctrl-C that arrives while library code runs callbacks is honoured, late if need be.

Python runs a signal's handler between bytecodes of the main thread; when that moment falls in a
weakref or ``__del__`` callback (matplotlib's caches, gc of a figure), the KeyboardInterrupt it
raises is printed as "Exception ignored" and dropped, and the command went on to exit 0 (once in
15 Ctrl-Cs during the report's writing, in an operator's audit of 2026-12-06).
``interrupts_honoured`` remembers every Ctrl-C (and SIGTERM, which the commands take as one)
and raises KeyboardInterrupt at the end of its block for one that was swallowed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
