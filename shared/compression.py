"""When to compress checkpoint replication: only when the link, not the CPU, is the bottleneck.

A chunk compressed losslessly before it crosses the network (``real.engine.compress``: the
bytes of float tensors split into byte planes, then zstd) carries the same data in fewer bytes.
Compression runs on the sender's CPU and decompression on the receiver's; with the three stages
pipelined chunk by chunk, raw checkpoint bytes move at the pace of the slowest stage::

    plain:       link
    compressed:  min(compress, decompress, ratio * link)

where ``ratio`` is raw bytes over compressed bytes and ``compress`` / ``decompress`` are the
codec's throughputs in raw bytes per second, measured on the real state. Compression pays when
the compressed pipeline is faster than the link alone, by a margin (``min_gain``) so that a
measurement's noise does not switch it on for nothing. With a fast link (the paper's 400 Gbit/s)
the CPU is the bottleneck and compression stays off; with a slow one (0.5 Gbit/s) and a state
that compresses, it goes on.

`decide` is a pure function of the measurement, the link and the scenario's mode (``off``,
``on``, ``auto``); `wire_bytes` is the size the simulator sends for a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from shared.checks import require_finite_non_negative, require_finite_positive

__all__ = ["CodecMeasurement", "CompressionDecision", "decide", "wire_bytes"]

CompressionMode = Literal["off", "on", "auto"]

DEFAULT_MIN_GAIN = 1.1
"""auto compresses only when that moves raw bytes at least 10% faster than the link alone."""


@dataclass(frozen=True)
class CodecMeasurement:
    """A codec measured on a sample of the real state.

    Attributes:
        ratio: raw bytes over compressed bytes (> 0; 1 means no gain).
        compress_bytes_per_s: raw bytes compressed per second (> 0).
        decompress_bytes_per_s: raw bytes restored per second (> 0).
    """

    ratio: float
    compress_bytes_per_s: float
    decompress_bytes_per_s: float

    def __post_init__(self) -> None:
        require_finite_positive("ratio", self.ratio)
        require_finite_positive("compress_bytes_per_s", self.compress_bytes_per_s)
        require_finite_positive("decompress_bytes_per_s", self.decompress_bytes_per_s)


@dataclass(frozen=True)
class CompressionDecision:
    """Whether to compress, and the throughputs the choice rests on (raw bytes per second).

    Attributes:
        enabled: compress the chunks.
        plain_bytes_per_s: raw bytes per second without compression (the link).
        compressed_bytes_per_s: raw bytes per second with it (slowest pipeline stage), or None
            without a measurement.
        bottleneck: the slowest stage with compression: "link", "compress" or "decompress"
            (None without a measurement).
        reason: the decision in words.
    """

    enabled: bool
    plain_bytes_per_s: float
    compressed_bytes_per_s: float | None
    bottleneck: str | None
    reason: str


def decide(
    mode: CompressionMode,
    link_bytes_per_s: float,
    measurement: CodecMeasurement | None,
    *,
    min_gain: float = DEFAULT_MIN_GAIN,
) -> CompressionDecision:
    """Decide whether replication compresses its chunks.

    Args:
        mode: ``off`` never, ``on`` always, ``auto`` when it pays by ``min_gain``.
        link_bytes_per_s: the replication link's throughput, measured or configured (> 0).
        measurement: the codec on the real state; None before it is measured (``auto``: off).
        min_gain: how much faster (>= 1) the compressed pipeline must be for ``auto``.

    Raises:
        ValueError: ``link_bytes_per_s`` not positive, ``min_gain`` below 1, or an unknown mode.
    """
    require_finite_positive("link_bytes_per_s", link_bytes_per_s)
    if not (math.isfinite(min_gain) and min_gain >= 1):
        raise ValueError(f"min_gain must be a finite number >= 1, got {min_gain!r}")
    if mode not in ("off", "on", "auto"):
        raise ValueError(f"mode must be 'off', 'on' or 'auto', got {mode!r}")
    if measurement is None:
        enabled = mode == "on"
        reason = f"mode {mode}" if mode != "auto" else "auto: no measurement yet, off"
        return CompressionDecision(enabled, link_bytes_per_s, None, None, reason)
    stages = {
        "link": measurement.ratio * link_bytes_per_s,
        "compress": measurement.compress_bytes_per_s,
        "decompress": measurement.decompress_bytes_per_s,
    }
    bottleneck = min(stages, key=stages.__getitem__)
    compressed = stages[bottleneck]
    if mode == "auto":
        enabled = compressed >= min_gain * link_bytes_per_s
        verdict = "on" if enabled else "off"
        reason = (
            f"auto: {verdict}: compressed {compressed:.4g} raw bytes/s ({bottleneck} bound, "
            f"ratio {measurement.ratio:.3f}) vs plain {link_bytes_per_s:.4g} bytes/s"
        )
    else:
        enabled = mode == "on"
        reason = f"mode {mode}"
    return CompressionDecision(enabled, link_bytes_per_s, compressed, bottleneck, reason)


def wire_bytes(raw_bytes: float, ratio: float | None) -> int:
    """Bytes on the wire for ``raw_bytes`` of checkpoint at a compression ``ratio`` (None or
    1: uncompressed), rounded up; at least 1 byte for a non-empty checkpoint."""
    require_finite_non_negative("raw_bytes", raw_bytes)
    if raw_bytes == 0:
        return 0
    if ratio is None:
        return math.ceil(raw_bytes)
    require_finite_positive("ratio", ratio)
    return max(1, math.ceil(raw_bytes / ratio))
