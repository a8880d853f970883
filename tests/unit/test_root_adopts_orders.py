"""A root elected in the middle of a recovery takes over the replacement orders its
predecessor gave for that recovery, instead of ordering again (which left the first order's
node, a standby agent that may already hold the slot, unused); an order of an earlier
recovery, whose node has since become the member, is not taken for a new one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from real.agent import jobkeys
from real.agent.root import _Recovery
from real.coord import keys


class PrefixKV:
    def __init__(self, values: dict[str, dict[str, Any]]) -> None:
        self.values = {key: keys.encode(value) for key, value in values.items()}

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.values.items() if k.startswith(prefix)}


def order(node_id: int, slot: int, replaces: int) -> tuple[str, dict[str, Any]]:
    key = f"{jobkeys.REPLACEMENTS_PREFIX}{node_id}"
    return key, {"node_id": node_id, "slot": slot, "replaces": replaces, "ready_at": 0.0}


def test_a_new_root_adopts_the_orders_of_the_recovery_it_resumes() -> None:
    members = {0: 0, 1: 5, 2: 2, 3: 3}  # slot 1 was replaced by node 5 in an earlier recovery
    kv = PrefixKV(
        dict(
            [
                order(5, 1, 1),  # that earlier order: node 5 is the member now
                order(7, 2, 2),  # this recovery's order for slot 2, whose member was lost
                (f"{jobkeys.FAILURES_PREFIX}4", {"nodes": [2], "kind": "hardware"}),
            ]
        )
    )
    recovery = _Recovery(SimpleNamespace(kv=kv), members, resumed=[4])  # type: ignore[arg-type]
    assert recovery.replacements == {2: 7}
    assert recovery.failure_of_slot == {2: 4}


def test_a_fresh_recovery_adopts_nothing() -> None:
    kv = PrefixKV(dict([order(7, 2, 2)]))
    recovery = _Recovery(SimpleNamespace(kv=kv), {0: 0, 1: 1, 2: 2}, resumed=[])  # type: ignore[arg-type]
    assert recovery.replacements == {}
