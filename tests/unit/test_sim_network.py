"""Flow-level sharing: max-min rates, and completion times when flows start and end."""

from __future__ import annotations

import pytest
import simpy

from sim.network import FlowNetwork, max_min_rates


def test_max_min_rates_share_the_bottleneck_and_give_the_rest_to_others() -> None:
    rates = max_min_rates({1: ("a",), 2: ("a", "b"), 3: ("b",)}, {"a": 10.0, "b": 100.0})
    assert rates == {1: 5.0, 2: 5.0, 3: 95.0}


def test_two_flows_share_a_link_then_the_survivor_speeds_up() -> None:
    env = simpy.Environment()
    network = FlowNetwork(env, {"link": 100.0})
    done: dict[str, float] = {}

    def flow(name: str, start: float, size: float) -> simpy.events.ProcessGenerator:
        yield env.timeout(start)
        yield network.transfer(size, ["link"])
        done[name] = env.now

    env.process(flow("long", 0.0, 300.0))
    env.process(flow("short", 1.0, 100.0))
    env.run()
    # long: 100 B alone in [0, 1); both at 50 B/s: short done at 3 (100 B); long has 100 B
    # left at 3 and finishes alone at 4.
    assert done == {"short": pytest.approx(3.0), "long": pytest.approx(4.0)}


def test_cancelled_flows_never_complete() -> None:
    env = simpy.Environment()
    network = FlowNetwork(env, {"link": 1.0})
    event = network.transfer(10.0, ["link"])
    env.run(until=2.0)
    network.cancel_all()
    env.run(until=20.0)
    assert not event.triggered and network.active_flows == 0
