"""What a recovery's planner reads about the tiers, importable without torch.

The root agent plans every recovery from the stores' holdings, whether complete copies count,
and the persistent tier's newest checkpoint. These need neither torch nor DCP, so they live
apart from ``real.engine.restore`` (which moves tensors): an agent that imported that paid
seconds of CPU at start, on every node, for nothing. The trainers' engine uses them too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from real.runtime.env import GEMINI_VERIFY_LOCAL
from shared.recovery import complete_counts as recovery_counts_complete
from shared.scenario import Scenario

log = logging.getLogger(__name__)


def complete_counts(scenario: Scenario, verify_local: bool | None = None) -> bool:
    """Whether a recovery may use iterations complete but not committed: with ``commit:
    on_arrival`` (``next_iteration_end`` counts only what the next iteration's end has
    committed, the paper's accounting), and unless local restores verify every block (a
    capture not sealed yet has no checksums to verify against; ``verify_local`` None: the
    ``GEMINI_VERIFY_LOCAL`` environment variable, as the checkpointer reads it)."""
    if verify_local is None:
        verify_local = os.environ.get(GEMINI_VERIFY_LOCAL, "") == "1"
    return recovery_counts_complete(scenario.checkpoint.commit) and not verify_local


def persistent_exists(url: str) -> bool:
    """Whether the persistent tier at ``url`` may hold anything: a local folder that does not
    exist holds nothing (and then DCP and fsspec need not be imported); a remote URL may."""
    if "://" in url and not url.startswith("file://"):
        return True
    return Path(url.removeprefix("file://")).exists()


def latest_persistent(url: str) -> int | None:
    """The newest complete checkpoint in the persistent tier at ``url`` (its index: fsspec,
    no DCP), or None when there is none, the tier's modules are missing, or it is unreadable
    (logged)."""
    try:
        from real.persistent.storage import latest_persistent_iteration
    except ImportError:
        return None
    try:
        return latest_persistent_iteration(url)
    except (OSError, ValueError) as error:
        log.warning("persistent tier %s unreadable: %s", url, error)
        return None
