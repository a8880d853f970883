"""The job's keys in the coordination store, beside those of :mod:`real.coord.keys`.

The root agent is the only writer of the **attempt record**; node agents follow it. Everything a
root needs to carry on after it dies lives here, so a newly elected root resumes from the store::

    job/attempt              {"attempt", "state": running|stopped|finished, "members":
                              {slot: node_id}, "stores": [host:port by slot], "master_addr",
                              "master_port" (slot 0's rendezvous store), "rendezvous_prefix"
                              (the attempt's keys there), "plan": GEMINI_RESTORE_PLAN JSON,
                              "failures": [..]}
    job/next_node_id         the next fresh node id (replacements), a decimal string
    stores/<node_id>         a node agent's registration: {"node_id", "slot", "address", "host",
                              "probe", "rendezvous", "pid"}
    acks/<attempt>/<node_id> an agent has no trainer of an attempt older than <attempt> running
    done/<attempt>/<rank>    trainer <rank> finished training in attempt <attempt>
    failures/<index>         an injected failure (the injector's record): {"index", "kind",
                              "nodes": slots, "node_ids", "time"}
    handled/<index>          the root has recovered (or is recovering) failure <index>
    replacements/<node_id>   the cloud operator's order: node <node_id> takes <slot> once wall
                              time reaches "ready_at" (a live standby agent when "standby" is
                              true, else the cluster starts a new agent under that id)
    standby/<node_id>        a standby agent waiting to be given a slot: {"node_id", "address",
                              "probe", "host", "pid"} (its heartbeat proves it alive)

A *slot* is a place in the job (node rank 0..N-1: the placement, the store addresses and the
event log's ``node`` use slots); a *node id* names one machine (a replacement takes a failed
node's slot under a fresh id).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from real.coord import keys
from real.coord.kv import KeyValueStore

if TYPE_CHECKING:
    from shared.scenario import Scenario

ATTEMPT_KEY = "job/attempt"
SCENARIO_KEY = "job/scenario"
"""The digest of the scenario the job's first agent was started with (``scenario_digest``):
every later agent of the job must bring the same."""
NEXT_NODE_ID_KEY = "job/next_node_id"
STORES_PREFIX = "stores/"
ACKS_PREFIX = "acks/"
DONE_PREFIX = "done/"
FAILURES_PREFIX = "failures/"
HANDLED_PREFIX = "handled/"
REPLACEMENTS_PREFIX = "replacements/"
STANDBY_PREFIX = "standby/"
AGENTS_PREFIX = "agents/"
"""``agents/<node id>``: the claim of a node id by its agent, created at once when the agent
starts and bound to a lease it keeps (``NodeAgent._claim_identity``)."""
SLOTS_PREFIX = "slots/"
"""``slots/<slot>``: the claim of a slot by the agent started for it (``--slot``), on the
same lease as its node id's claim (``NodeAgent._claim_keys``)."""


def read_json(kv: KeyValueStore, key: str) -> dict[str, Any] | None:
    """The JSON object at ``key``, or None when absent or unreadable."""
    return parse_json(kv.get(key))


def parse_json(raw: bytes | None) -> dict[str, Any] | None:
    """The JSON object a key held (``raw``), or None when absent or unreadable."""
    if raw is None:
        return None
    try:
        return keys.decode(raw)
    except ValueError:
        return None


def read_prefix(kv: KeyValueStore, prefix: str) -> dict[str, dict[str, Any]]:
    """Every readable JSON object under ``prefix``, by the key's remainder."""
    out: dict[str, dict[str, Any]] = {}
    for key, raw in kv.get_prefix(prefix).items():
        try:
            out[key[len(prefix) :]] = keys.decode(raw)
        except ValueError:
            continue
    return out


def put_json(kv: KeyValueStore, key: str, value: dict[str, Any]) -> None:
    kv.put(key, keys.encode(value))


def failed_record(record: dict[str, Any], reason: str) -> dict[str, Any]:
    """``record`` as the attempt record of a job that gave up (``failed``, with the reason:
    every agent then stops and exits 1)."""
    return {**record, "state": "failed", "reason": reason}


def members_of(record: dict[str, Any]) -> dict[int, int]:
    """``{slot: node_id}`` of an attempt record."""
    return {int(slot): int(node) for slot, node in record.get("members", {}).items()}


def scenario_digest(scenario: Scenario) -> str:
    """A digest of a scenario as parsed (its file with the ``--set`` overrides applied)."""
    return hashlib.sha256(scenario.model_dump_json().encode()).hexdigest()[:16]
