"""What the tests find running on this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path


def store_daemons(runtime: Path) -> list[str]:
    """PIDs of the node store daemons whose runtime folder is ``runtime``."""
    found = subprocess.run(
        ["pgrep", "-f", f"real.engine.daemon.*{runtime}"], capture_output=True, text=True
    )
    return found.stdout.split()
