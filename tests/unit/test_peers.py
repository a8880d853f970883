"""A peer's failure told from a bug, and said in one line (``real.runtime.peers``)."""

from __future__ import annotations

import pytest

from real.runtime.peers import follows_peer_failure, is_peer_failure, peer_failure_text
from shared.errors import AttemptAborted, PeerLost

GLOO_ADVICE = (
    " This is typically caused by a remote worker crashing. Check the logs of the remote worker"
    " before reporting an error. GLHF!"
)


@pytest.mark.parametrize(
    ("error", "text"),
    [
        # DDP's communication hook failed: pybind wraps gloo's error, frames follow it.
        (
            RuntimeError(
                "Unable to cast Got the following error when running the callback: RuntimeError:"
                " [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read"
                " error [127.0.0.1]:43213: Connection reset by peer." + GLOO_ADVICE + "\n"
                "  /site-packages/torch/distributed/algorithms/ddp_comm_hooks/default_hooks.py"
                "(31): <lambda>\n to Tensor"
            ),
            "RuntimeError: Read error [127.0.0.1]:43213: Connection reset by peer",
        ),
        (
            RuntimeError("Unable to cast attempt 1 aborted by the node agent to Tensor"),
            "RuntimeError: attempt 1 aborted by the node agent",
        ),
        (
            RuntimeError(
                "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer"
                " [127.0.0.1]:31107." + GLOO_ADVICE
            ),
            "RuntimeError: Connection closed by peer [127.0.0.1]:31107",
        ),
        (
            AttemptAborted("attempt 3 aborted by the node agent"),
            "AttemptAborted: attempt 3 aborted by the node agent",
        ),
        (ConnectionResetError(), "ConnectionResetError"),
        (PeerLost("x" * 400), "PeerLost: " + "x" * 287 + "..."),
    ],
)
def test_a_peer_failure_is_said_in_one_line(error: BaseException, text: str) -> None:
    assert is_peer_failure(error)
    assert peer_failure_text(error) == text


def test_a_bug_keeps_its_own_text() -> None:
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    assert not is_peer_failure(error)
    assert peer_failure_text(error) == f"RuntimeError: {error}"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("DataLoader timed out after 2.0 seconds"),
        RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly"),
    ],
)
def test_a_failure_of_this_process_s_own_data_loader_is_not_a_peer_s(error: Exception) -> None:
    # Parked as a peer's, the rank's own timeout let the root blame the node that waited.
    assert not is_peer_failure(error)


def test_an_error_raised_while_a_peer_failure_was_handled_follows_it() -> None:
    try:
        try:
            raise RuntimeError("[pair.cc:537] Read error: Connection reset by peer." + GLOO_ADVICE)
        except RuntimeError:
            raise ValueError("Process group is not initialized in the world group map") from None
    except ValueError as raised:
        suppressed = raised  # `from None` hides the context from tracebacks, not from us
    assert not is_peer_failure(suppressed) and follows_peer_failure(suppressed)
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise ValueError("Process group is not initialized in the world group map")  # noqa: B904
    except ValueError as raised:
        assert follows_peer_failure(raised)
    assert not follows_peer_failure(ValueError("a bug of the script's own"))
