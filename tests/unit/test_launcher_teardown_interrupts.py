"""While ``gemini-ckpt real`` tears its cluster down, a Ctrl-C (or SIGTERM) is answered on
stderr and otherwise ignored: the teardown is bounded and must end its processes and free
their memory (``real.launcher.run._uninterrupted``)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from real.launcher.run import _uninterrupted


def test_a_ctrl_c_during_the_teardown_is_answered_not_obeyed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Python's own Ctrl-C handler, whatever the test run was started with (a run in the
    # background of a shell ignores SIGINT).
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        with _uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handlers run here; neither raises
        assert capfd.readouterr().err.count("still tearing the cluster down") == 2
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
        with pytest.raises(KeyboardInterrupt):  # after it, a Ctrl-C interrupts again
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, original)
