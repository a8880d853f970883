"""Tests for shared.compression: compress replication only where the link is the bottleneck."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.compression import CodecMeasurement, decide, wire_bytes

MB = 1e6


def test_slow_link_and_compressible_state_turns_it_on() -> None:
    # 0.5 Gbit/s = 62.5 MB/s; ratio 1.3, codec 400 MB/s: 81 MB/s of raw bytes, link bound.
    decision = decide("auto", 62.5 * MB, CodecMeasurement(1.3, 400 * MB, 900 * MB))
    assert decision.enabled
    assert decision.bottleneck == "link"
    assert decision.compressed_bytes_per_s == pytest.approx(1.3 * 62.5 * MB)


def test_fast_link_leaves_it_off_because_the_cpu_is_the_bottleneck() -> None:
    # 400 Gbit/s = 50 GB/s: the codec (400 MB/s) would slow replication down.
    decision = decide("auto", 50e9, CodecMeasurement(1.3, 400 * MB, 900 * MB))
    assert not decision.enabled
    assert decision.bottleneck == "compress"


def test_a_small_gain_is_not_worth_it() -> None:
    # Ratio 1.05 on a slow link: 5% faster, below the 10% margin.
    assert not decide("auto", 62.5 * MB, CodecMeasurement(1.05, 1e9, 1e9)).enabled


def test_modes_and_missing_measurement() -> None:
    measured = CodecMeasurement(2.0, 1e9, 1e9)
    assert decide("on", 50e9, CodecMeasurement(1.0, 1.0, 1.0)).enabled
    assert not decide("off", 1.0, measured).enabled
    assert not decide("auto", 1.0, None).enabled
    assert decide("on", 1.0, None).enabled
    with pytest.raises(ValueError, match="mode"):
        decide("sometimes", 1.0, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ratio"):
        CodecMeasurement(0.0, 1.0, 1.0)


def test_wire_bytes() -> None:
    assert wire_bytes(1000, None) == 1000
    assert wire_bytes(1000, 1.3) == 770
    assert wire_bytes(0, 2.0) == 0
    assert wire_bytes(1, 1e9) == 1


@settings(max_examples=300, deadline=None)
@given(
    link=st.floats(1e3, 1e11),
    ratio=st.floats(0.5, 10.0),
    compress=st.floats(1e3, 1e11),
    decompress=st.floats(1e3, 1e11),
)
def test_auto_is_on_exactly_when_every_stage_beats_the_link(
    link: float, ratio: float, compress: float, decompress: float
) -> None:
    decision = decide("auto", link, CodecMeasurement(ratio, compress, decompress))
    slowest = min(ratio * link, compress, decompress)
    assert decision.compressed_bytes_per_s == pytest.approx(slowest)
    assert decision.enabled == (slowest >= 1.1 * link)
    if decision.enabled:
        # On only when the CPU keeps up with the link: the gain comes from the ratio.
        assert compress > link and decompress > link and ratio > 1


@settings(max_examples=200, deadline=None)
@given(raw=st.integers(0, 10**12), ratio=st.floats(0.1, 100.0))
def test_wire_bytes_round_up(raw: int, ratio: float) -> None:
    wired = wire_bytes(raw, ratio)
    if raw:
        assert wired >= 1
        assert wired >= raw / ratio * (1 - 1e-12)
        assert wired <= math.ceil(raw / ratio) + 1
    else:
        assert wired == 0
