"""The calibration's FSDP2 restore carries a spare's first FSDP2 state (benchmarks/calibrate.py)."""

from __future__ import annotations

import time

from benchmarks.calibrate import _first_state_extra_s


class _Later:
    """A trainer built after the first: its state costs 0.05 s."""

    def __init__(self) -> None:
        self.asked = 0

    def state(self) -> dict[str, object]:
        self.asked += 1
        time.sleep(0.05)
        return {}


def test_a_spares_first_state_counts_what_a_later_trainers_does_not_pay() -> None:
    later = _Later()
    extra = _first_state_extra_s(1.0, later)
    assert later.asked == 1  # timed, not assumed
    assert 0.5 < extra <= 0.95


def test_a_first_state_no_dearer_than_a_later_one_adds_nothing() -> None:
    assert _first_state_extra_s(0.01, _Later()) == 0.0
