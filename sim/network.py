"""Flow-level network: transfers share link capacity, re-rated whenever a flow starts or ends.

The simulator never models packets. A *flow* moves a number of bytes across one or more
*links* (a node's uplink, another node's downlink, the persistent storage's aggregate
bandwidth); while flows are active, every link's capacity is divided among the flows crossing
it by **max-min fairness** (progressive filling: raise all rates together, freeze the flows of
a link once it is full, repeat). Rates only change when the set of flows changes, so between
two such instants every flow progresses linearly, and the next instant is simply the earliest
finish at the current rates. That is the classic flow-level model of TCP-like sharing.

``FlowNetwork`` runs inside a SimPy environment: ``transfer`` returns an event that succeeds
when the flow's last byte arrives; ``cancel_all`` drops every flow (a failure stops the job).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import simpy

# Flows whose remaining bytes fall below this are done (float residue of rate * time).
_BYTES_EPSILON = 1e-6
# ... or would finish within this time at their rate (rounding of the wake-up time).
_TIME_EPSILON_S = 1e-9


@dataclass
class _Flow:
    remaining: float
    links: tuple[str, ...]
    done: simpy.Event
    rate: float = 0.0


def max_min_rates(
    flows: Mapping[int, tuple[str, ...]], capacities: Mapping[str, float]
) -> dict[int, float]:
    """Max-min fair rates (bytes/s) of flows given the links each crosses.

    Args:
        flows: flow id -> the links it crosses (at least one).
        capacities: link name -> capacity, bytes/s (> 0).

    Returns:
        flow id -> rate. A link's flows never get more than its capacity together.
    """
    rates: dict[int, float] = {}
    remaining = {link: capacities[link] for f in flows.values() for link in f}
    active = set(flows)
    while active:
        counts: dict[str, int] = {}
        for flow in active:
            for link in flows[flow]:
                counts[link] = counts.get(link, 0) + 1
        # The most constrained link fixes the share of all its unfrozen flows.
        bottleneck = min(counts, key=lambda link: remaining[link] / counts[link])
        share = remaining[bottleneck] / counts[bottleneck]
        frozen = [flow for flow in active if bottleneck in flows[flow]]
        for flow in frozen:
            rates[flow] = share
            active.discard(flow)
            for link in flows[flow]:
                remaining[link] = max(0.0, remaining[link] - share)
    return rates


class FlowNetwork:
    """Links with capacities and the flows sharing them, inside a SimPy environment."""

    def __init__(self, env: simpy.Environment, capacities: Mapping[str, float]) -> None:
        for link, capacity in capacities.items():
            if not (math.isfinite(capacity) and capacity > 0):
                raise ValueError(f"link {link!r}: capacity must be > 0 bytes/s, got {capacity!r}")
        self.env = env
        self.capacities = dict(capacities)
        self._flows: dict[int, _Flow] = {}
        self._next_id = 0
        self._updated_at = env.now
        self._version = 0
        self._rerate_pending = False

    def add_link(self, name: str, capacity: float) -> None:
        """Add (or resize) a link; active flows are re-rated at the next change."""
        self.capacities[name] = capacity

    def transfer(self, size_bytes: float, links: Iterable[str]) -> simpy.Event:
        """Start a flow of ``size_bytes`` across ``links``; the event fires when it completes."""
        route = tuple(links)
        unknown = [link for link in route if link not in self.capacities]
        if not route or unknown:
            raise ValueError(f"a flow needs known links, got {route!r} (unknown: {unknown})")
        done = self.env.event()
        if size_bytes <= _BYTES_EPSILON:
            done.succeed()
            return done
        self._advance()
        self._flows[self._next_id] = _Flow(float(size_bytes), route, done)
        self._next_id += 1
        if not self._rerate_pending:  # flows started at one instant are rated together
            self._rerate_pending = True
            self.env.process(self._rerate())
        return done

    def _rerate(self) -> simpy.events.ProcessGenerator:
        yield self.env.timeout(0)
        self._rerate_pending = False
        self._advance()
        self._reschedule()

    def cancel_all(self) -> None:
        """Drop every active flow (their events never fire)."""
        self._flows.clear()
        self._version += 1

    @property
    def active_flows(self) -> int:
        return len(self._flows)

    def _advance(self) -> None:
        """Move every flow forward to now at its current rate."""
        elapsed = self.env.now - self._updated_at
        if elapsed > 0:
            for flow in self._flows.values():
                flow.remaining -= flow.rate * elapsed
        self._updated_at = self.env.now

    def _reschedule(self) -> None:
        rates = max_min_rates({i: f.links for i, f in self._flows.items()}, self.capacities)
        for flow_id, flow in self._flows.items():
            flow.rate = rates[flow_id]
        self._version += 1
        if not self._flows:
            return
        delay = min(f.remaining / f.rate for f in self._flows.values())
        self.env.process(self._wake(max(0.0, delay), self._version))

    def _wake(self, delay: float, version: int) -> simpy.events.ProcessGenerator:
        yield self.env.timeout(delay)
        if version != self._version:
            return  # the flows changed meanwhile; a newer wake-up is pending
        self._advance()
        finished = [
            i
            for i, f in self._flows.items()
            if f.remaining <= max(_BYTES_EPSILON, f.rate * _TIME_EPSILON_S)
        ]
        for flow_id in finished:
            self._flows.pop(flow_id).done.succeed()
        self._reschedule()
