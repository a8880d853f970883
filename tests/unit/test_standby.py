"""The standby pool policy shared by the simulator and the cloud operator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.standby import StandbyPool, take_replacement


def test_spares_then_provisioning() -> None:
    pool = StandbyPool.full(2)
    first = take_replacement(pool, 10.0, replacement_s=5.0, provisioning_delay_s=100.0)
    assert (first.ready_at_s, first.source) == (15.0, "standby")
    second = take_replacement(first.pool, 20.0, replacement_s=5.0, provisioning_delay_s=100.0)
    assert (second.ready_at_s, second.source) == (25.0, "standby")
    assert second.pool.ready_at_s == (110.0, 120.0) and second.pool.ready(50.0) == 0
    # The pool is empty until 110: the third waits for the first spare on order.
    third = take_replacement(second.pool, 30.0, replacement_s=5.0, provisioning_delay_s=100.0)
    assert (third.ready_at_s, third.source) == (115.0, "provisioned")
    assert third.pool.ready_at_s == (120.0, 130.0)


def test_no_spares_at_all_provisions_on_the_spot() -> None:
    taken = take_replacement(StandbyPool.full(0), 3.0, replacement_s=1.0, provisioning_delay_s=60.0)
    assert (taken.ready_at_s, taken.source, taken.pool.ready_at_s) == (64.0, "provisioned", ())


def test_jitter_is_the_callers_draw() -> None:
    taken = take_replacement(
        StandbyPool.full(1),
        0.0,
        replacement_s=240.0,
        provisioning_delay_s=1.0,
        replacement_jitter_s=180.0,
        uniform=0.5,
    )
    assert taken.ready_at_s == 330.0


@pytest.mark.parametrize(("name", "value"), [("replacement_s", -1.0), ("uniform", 1.0)])
def test_bad_arguments(name: str, value: float) -> None:
    arguments = {"replacement_s": 1.0, "provisioning_delay_s": 1.0, "uniform": 0.0, name: value}
    with pytest.raises(ValueError, match=name):
        take_replacement(StandbyPool.full(1), 0.0, **arguments)  # type: ignore[arg-type]


@given(st.integers(0, 4), st.lists(st.floats(0, 1000), min_size=1, max_size=12))
def test_pool_size_is_kept_and_nothing_is_ready_early(spares: int, gaps: list[float]) -> None:
    pool, now = StandbyPool.full(spares), 0.0
    for gap in gaps:
        now += gap
        taken = take_replacement(pool, now, replacement_s=2.0, provisioning_delay_s=50.0)
        assert taken.ready_at_s >= now + 2.0
        assert len(taken.pool.ready_at_s) == spares
        assert (taken.source == "standby") == (pool.ready(now) > 0)
        pool = taken.pool
