"""``gemini_ckpt.interrupts.interrupts_honoured``: a Ctrl-C that a weakref callback swallowed
(Python prints "Exception ignored" and drops the KeyboardInterrupt) still interrupts the
command, at the end of the block."""

from __future__ import annotations

import os
import signal
import time
import weakref

import pytest

from gemini_ckpt.interrupts import interrupts_honoured


class _Cached:
    """An object with a weakref callback, as matplotlib's caches hold them."""


def _ctrl_c_inside_a_weakref_callback() -> None:
    """The user's Ctrl-C lands while a weakref callback runs: its KeyboardInterrupt is
    swallowed by the interpreter ("Exception ignored in ...")."""

    def callback(reference: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside the callback

    cached = _Cached()
    reference = weakref.ref(cached, callback)
    del cached  # the callback runs now
    assert reference() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing
def test_a_ctrl_c_swallowed_by_a_weakref_callback_still_interrupts() -> None:
    with pytest.raises(KeyboardInterrupt), interrupts_honoured():
        _ctrl_c_inside_a_weakref_callback()
        finished = True  # the block went on to its end: the interrupt had been swallowed
    assert finished


def test_without_a_ctrl_c_the_block_runs_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupts_honoured():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_ctrl_c_in_the_block_interrupts_at_once() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts_honoured():
        os.kill(os.getpid(), signal.SIGTERM)  # the commands take SIGTERM as a Ctrl-C
        time.sleep(0.05)
        reached.append(True)
    assert not reached
