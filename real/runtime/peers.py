"""Telling a peer's failure from a bug, and saying it in one line.

A collective whose peer vanished raises whatever the backend raises: gloo's ``RuntimeError``
with its C++ source location and advice, DDP's communication-hook failure wrapped by pybind
("Unable to cast ... to Tensor"), a socket error, torch's ``DistError``. The trainer parks on
these and only these (anything else is the training script's bug and ends the process), and
every survivor of a failure logs one of them: :func:`peer_failure_text` keeps the cause.
It imports no torch of its own (``torch.distributed`` only when asked about an error), like
``real.trainer.inprocess``, which imports it.
"""

from __future__ import annotations

import re

from shared.errors import AttemptAborted

PEER_FAILURE_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "connection refused",
    "socket closed",
    "nccl",
    "gloo",
    "attempt aborted",
    # Ours (AttemptAborted, PeerLost), as they read once DDP's hook wraps them in a RuntimeError.
    "aborted by the node agent",
    "a collective failed",
)

_WRAPPERS = (
    re.compile(r"^Unable to cast (?P<inner>.*?)(?: to Tensor)?$", re.DOTALL),
    re.compile(r"^Got the following error when running the callback: (?P<inner>.*)$", re.DOTALL),
    re.compile(r"^(?:RuntimeError|DistError|DistNetworkError): (?P<inner>.*)$", re.DOTALL),
)
_SOURCE_LOCATION = re.compile(r"\[[^\]\s]*\.(?:cc|cpp|h|hpp):\d+\]\s*")
_ADVICE = re.compile(r"\.?\s*This is typically caused by .*$", re.DOTALL)


LOCAL_FAILURE_MARKERS = ("dataloader",)
"""Text of a failure of this process's own that reads like a peer's: a ``DataLoader`` whose
``timeout`` passed ("DataLoader timed out after 2.0 seconds") or whose worker died. Parked as
a peer's, it let the root blame the one node that did not report (the peer that waited)."""


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is what a collective raises when a peer is gone (or the attempt was
    aborted), as opposed to a bug in the training code or a failure of this process's own
    (``LOCAL_FAILURE_MARKERS``)."""
    if any(marker in str(error).lower() for marker in LOCAL_FAILURE_MARKERS):
        return False
    if isinstance(error, AttemptAborted | ConnectionError | TimeoutError):
        return True
    try:
        import torch.distributed as dist

        if isinstance(error, dist.DistError):
            return True
    except (ImportError, AttributeError):
        pass
    if isinstance(error, RuntimeError | OSError):
        text = str(error).lower()
        return any(marker in text for marker in PEER_FAILURE_MARKERS)
    return False


def follows_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a peer's failure or was raised while one was being handled (its
    ``__cause__`` or ``__context__`` chain): torch, handling gloo's "Connection reset by peer",
    can itself raise a ``ValueError`` about the group it was tearing down."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if is_peer_failure(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def peer_failure_text(error: BaseException, limit: int = 300) -> str:
    """``error`` in one line: its type and the backend's own cause, without the wrappers,
    the C++ source location, the backend's advice and the Python frames some append."""
    text = str(error).strip()
    changed = True
    while changed:
        changed = False
        for wrapper in _WRAPPERS:
            match = wrapper.match(text)
            if match:
                text, changed = match.group("inner").strip(), True
    text = _ADVICE.sub("", _SOURCE_LOCATION.sub("", text))
    text = text.splitlines()[0].strip() if text else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
