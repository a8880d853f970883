"""The layout of the coordination keyspace, in one place.

::

    election/leader        the root agent: {"node", "lease", "since"}; bound to its lease
    nodes/<node>           a node's heartbeat: {"node", "pid", "beat", "time"}; bound to the
                           node's heartbeat lease, so it vanishes when the node stops beating
    exits/<node>/<rank>    a trainer exit an agent reports at once: {"node", "rank",
                           "exitcode", "time"}; no lease (it must outlive the reporting agent);
                           the root deletes it once handled
    suspects/<node>/<rank> a trainer left its attempt because a collective broke (a peer is
                           gone): {"node", "rank", "error", "time"}; the root then probes

Values are UTF-8 JSON objects. Times are wall-clock seconds (``time.time()``). Node ids are the
integers the event log uses; a replacement node gets a fresh id (see :mod:`.operator`).
"""

from __future__ import annotations

import json
from typing import Any

LEADER_KEY = "election/leader"
NODES_PREFIX = "nodes/"
EXITS_PREFIX = "exits/"
SUSPECTS_PREFIX = "suspects/"


def node_key(node: int) -> str:
    """The heartbeat key of ``node``."""
    return f"{NODES_PREFIX}{node}"


def node_of(key: str) -> int | None:
    """The node whose heartbeat key ``key`` is (``nodes/<node>``); None for another key."""
    name = key[len(NODES_PREFIX) :] if key.startswith(NODES_PREFIX) else ""
    return int(name) if name.isdigit() else None


def exit_key(node: int, rank: int) -> str:
    """The key an agent writes when trainer ``rank`` on ``node`` exits."""
    return f"{EXITS_PREFIX}{node}/{rank}"


def suspect_key(node: int, rank: int) -> str:
    """The key an agent writes when trainer ``rank`` on ``node`` saw a collective break."""
    return f"{SUSPECTS_PREFIX}{node}/{rank}"


def encode(value: dict[str, Any]) -> bytes:
    """A key's value as compact JSON bytes."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode(raw: bytes) -> dict[str, Any]:
    """A value written by :func:`encode`; ValueError if it is not a JSON object."""
    value = json.loads(raw.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {raw[:80]!r}")
    return value
