"""Lossless compression of replication chunks: byte planes, then zstd.

A checkpoint is mostly fp32 tensors (weights, Adam's two moments). Their bytes compress poorly
as they lie, little-endian, because every fourth byte is a noisy low mantissa byte; but the
high byte of every float (sign and most of the exponent) takes few values, since the weights of
a layer share a scale. Splitting the bytes of each 4-byte word into four **planes** (all first
bytes, then all second bytes, ...) puts the predictable bytes together, and zstd finds them.
The shuffle is exact, so the round trip is bitwise.

A chunk is any byte range of the slot (``offset``, ``size``). The planes are taken over the
4-byte words aligned to the slot's start, so a chunk cut mid-word still splits the floats at
their boundaries (the tensors in a slot start at aligned offsets): the bytes before the first
aligned word and after the last go as they are. The encoded frame is zstd's, of
``head + plane 0 + plane 1 + plane 2 + plane 3 + tail``; the receiver knows ``offset`` and
``size`` from the frame's header and decodes straight into the slot's range.

`measure` times the codec on a sample of the real state (a few slices spread over the slot),
giving the ``shared.compression.CodecMeasurement`` that the decision rule needs.
"""

from __future__ import annotations

import time

import numpy as np
import zstandard

from shared.compression import CodecMeasurement

CODEC = "bplane4-zstd"
"""The codec's name on the wire (``put_chunk``'s ``codec`` field)."""

WORD = 4  # bytes per plane group: fp32 dominates a training state
LEVEL = 1  # zstd's fastest level with its entropy stage: on float planes, higher levels gain
# little ratio for much CPU (benchmarks/compression.py shows levels 1 and 3)


class CodecError(ValueError):
    """A compressed chunk that does not decode to its declared size."""


def _split(offset: int, size: int) -> tuple[int, int]:
    """(head, body) byte counts: head bytes up to the first aligned word, body whole words."""
    head = min((-offset) % WORD, size)
    body = (size - head) // WORD * WORD
    return head, body


def encode(data: memoryview | bytes, offset: int, level: int = LEVEL) -> bytes:
    """Compress ``data``, the slot's bytes ``[offset, offset + len(data))``."""
    raw = np.frombuffer(data, dtype=np.uint8)
    head, body = _split(offset, raw.size)
    planes = raw[head : head + body].reshape(-1, WORD).T  # a strided view: one copy below
    shuffled = np.empty(raw.size, dtype=np.uint8)
    shuffled[:head] = raw[:head]
    shuffled[head : head + body].reshape(WORD, -1)[:] = planes
    shuffled[head + body :] = raw[head + body :]
    return zstandard.ZstdCompressor(level=level).compress(shuffled.data)


def decode_into(payload: bytes | bytearray | memoryview, offset: int, out: memoryview) -> None:
    """Decompress ``payload`` into ``out``, the slot's bytes ``[offset, offset + len(out))``.

    Raises:
        CodecError: the payload is not a zstd frame of exactly ``len(out)`` bytes.
    """
    size = len(out)
    try:
        shuffled = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
    except zstandard.ZstdError as error:
        raise CodecError(f"chunk at offset {offset}: {error}") from error
    if len(shuffled) != size:
        raise CodecError(
            f"chunk at offset {offset} decodes to {len(shuffled)} bytes, declared {size}"
        )
    source = np.frombuffer(shuffled, dtype=np.uint8)
    target = np.frombuffer(out, dtype=np.uint8)
    head, body = _split(offset, size)
    target[:head] = source[:head]
    target[head : head + body].reshape(-1, WORD)[:] = source[head : head + body].reshape(WORD, -1).T
    target[head + body :] = source[head + body :]


def measure(
    data: memoryview | bytes,
    sample_bytes: int = 8 << 20,
    pieces: int = 8,
    level: int = LEVEL,
) -> CodecMeasurement:
    """Ratio and throughputs of the codec on ``pieces`` slices spread over ``data``.

    Args:
        data: the real state's bytes (a captured slot).
        sample_bytes: bytes to compress in all (the whole of ``data`` when smaller).
        pieces: slices the sample is taken in, evenly spaced, so that every part of the state
            (weights, moments, small tensors) has its say.

    Raises:
        ValueError: ``data`` is empty.
    """
    total = len(data)
    if total == 0:
        raise ValueError("measure: no data to measure the codec on")
    piece = min(total, max(WORD, min(total, sample_bytes) // pieces // WORD * WORD))
    stride = total // pieces // WORD * WORD
    starts = sorted({min(i * stride, total - piece) for i in range(pieces)})
    view = memoryview(data)
    raw = compressed = 0
    encode_s = decode_s = 0.0
    for start in starts:
        chunk = view[start : start + piece]
        began = time.perf_counter()
        payload = encode(chunk, start, level)
        middle = time.perf_counter()
        out = bytearray(len(chunk))
        decode_into(payload, start, memoryview(out))
        ended = time.perf_counter()
        if out != chunk:
            raise CodecError(f"round trip changed the bytes at offset {start}")
        raw += len(chunk)
        compressed += len(payload)
        encode_s += middle - began
        decode_s += ended - middle
    return CodecMeasurement(
        raw / max(compressed, 1), raw / max(encode_s, 1e-9), raw / max(decode_s, 1e-9)
    )
