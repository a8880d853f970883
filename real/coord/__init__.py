"""Coordination of the agents: the key-value store, root election, failure detection, and the
cloud operator that hands out replacement nodes.

This layer knows nothing of checkpoints or trainers; the node agents and the root agent build
on it. See ``docs/coordination.md`` for the design and the key layout (:mod:`.keys`).
"""

from real.coord.connect import connect_kv
from real.coord.detector import Detection, FailureDetector
from real.coord.election import Election
from real.coord.heartbeat import Heartbeat, report_exit
from real.coord.kv import KeyValueStore, Lease
from real.coord.operator import CloudOperator, Replacement
from shared.errors import KVError

__all__ = [
    "CloudOperator",
    "Detection",
    "Election",
    "FailureDetector",
    "Heartbeat",
    "KVError",
    "KeyValueStore",
    "Lease",
    "Replacement",
    "connect_kv",
    "report_exit",
]
