"""Compressed replication on the real state: ratio and throughput, freshly initialised and trained.

Trains the headline's 3.2M-parameter GPT (``scenarios/headline.yaml``; one process, the state
one rank checkpoints: weights, AdamW's two moments, schedule, RNG, data position) and lays its
state out as a checkpoint slot does (``real.engine.manifest.layout``: tensors at 64-byte aligned
offsets). At each of the given steps (1: just initialised, Adam's moments one step old; later:
trained) it measures on the whole slot, in chunks of the replication's size:

- the byte-plane codec (``real.engine.compress``) at zstd levels 1 and 3: ratio (raw over
  compressed bytes), compression and decompression throughput, raw MB/s;
- plain zstd level 1 (no byte planes), for comparison;
- the decision of ``shared.compression.decide`` (``auto``) for links of 0.5, 16 and 400 Gbit/s:
  the raw bytes per second replication would move with and without compression.

Every chunk's round trip is checked bitwise. Figures are medians of ``--repeats`` passes.
Run: ``.venv/bin/python benchmarks/compression.py [--steps 1 50 200] [--chunk-mb 32]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

from real.engine import compress
from real.engine.manifest import layout
from real.engine.state import flatten_state
from real.trainer.workload.trainer import Trainer, TrainerConfig
from shared.compression import CodecMeasurement, decide
from shared.scenario import GBIT
from shared.scenario_loader import load_scenario

MB = 1e6
LINKS_GBIT_S = (0.5, 16.0, 400.0)


def slot_bytes(state: dict[str, object]) -> bytes:
    """The state's tensors laid out as in a checkpoint slot (zeros between them)."""
    tensors, values = flatten_state(state)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    manifest = layout(0, 0, tensors, values)
    data = np.zeros(manifest.data_bytes, dtype=np.uint8)
    for entry in manifest.tensors:
        raw = tensors[entry.name].view(-1).view(torch.uint8).numpy()
        data[entry.offset : entry.offset + entry.nbytes] = raw
    return data.tobytes()


def codec_pass(data: bytes, chunk: int, level: int) -> tuple[float, float, float]:
    """(ratio, compress raw B/s, decompress raw B/s) of the byte-plane codec over ``data``."""
    view = memoryview(data)
    compressed = 0
    encode_s = decode_s = 0.0
    out = bytearray(chunk)
    for offset in range(0, len(data), chunk):
        piece = view[offset : offset + chunk]
        began = time.perf_counter()
        payload = compress.encode(piece, offset, level)
        middle = time.perf_counter()
        target = memoryview(out)[: len(piece)]
        compress.decode_into(payload, offset, target)
        decode_s += time.perf_counter() - middle
        encode_s += middle - began
        compressed += len(payload)
        if target != piece:
            raise RuntimeError(f"round trip changed the chunk at offset {offset}")
    return len(data) / compressed, len(data) / encode_s, len(data) / decode_s


def plain_pass(data: bytes, chunk: int) -> tuple[float, float]:
    """(ratio, compress raw B/s) of zstd level 1 without byte planes."""
    compressor = zstandard.ZstdCompressor(level=1)
    compressed, seconds = 0, 0.0
    for offset in range(0, len(data), chunk):
        began = time.perf_counter()
        compressed += len(compressor.compress(data[offset : offset + chunk]))
        seconds += time.perf_counter() - began
    return len(data) / compressed, len(data) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/headline.yaml"))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--chunk-mb", type=float, default=32.0, help="replication chunk, MB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    scenario = load_scenario(args.scenario)
    config = TrainerConfig.from_scenario(scenario)
    config = TrainerConfig(**{**config.__dict__, "iterations": max(args.steps)})
    trainer = Trainer(config)
    chunk = int(args.chunk_mb * MB)
    print(
        f"load average {os.getloadavg()[0]:.1f}; scenario {args.scenario}; chunks {chunk} B",
        flush=True,
    )
    header = (
        f"{'step':>5} {'state MB':>8} | {'planes+zstd1':>25} | {'planes+zstd3':>25} | "
        f"{'zstd1 plain':>14} | auto at 0.5 / 16 / 400 Gbit/s"
    )
    print(header, flush=True)
    print(
        f"{'':>5} {'':>8} | {'ratio  comp MB/s  dec MB/s':>25} | {'(same)':>25} | "
        f"{'ratio comp MB/s':>14} | raw MB/s with (without) compression"
    )
    for step in sorted(args.steps):
        while trainer.iteration < step:
            trainer.step()
        data = slot_bytes(trainer.state())
        passes = [codec_pass(data, chunk, 1) for _ in range(args.repeats)]
        ratio1 = statistics.median(p[0] for p in passes)
        comp1 = statistics.median(p[1] for p in passes)
        dec1 = statistics.median(p[2] for p in passes)
        ratio3, comp3, dec3 = codec_pass(data, chunk, 3)
        plain_ratio, plain_speed = plain_pass(data, chunk)
        measurement = CodecMeasurement(ratio1, comp1, dec1)
        verdicts = []
        for link in LINKS_GBIT_S:
            decision = decide("auto", link * GBIT, measurement)
            with_c = decision.compressed_bytes_per_s or 0.0
            mark = "ON" if decision.enabled else "off"
            verdicts.append(f"{mark} {with_c / MB:.0f} ({link * GBIT / MB:.0f})")
        print(
            f"{step:>5} {len(data) / MB:>8.1f} | {ratio1:>5.3f} {comp1 / MB:>10.0f} "
            f"{dec1 / MB:>9.0f} | {ratio3:>5.3f} {comp3 / MB:>10.0f} {dec3 / MB:>9.0f} | "
            f"{plain_ratio:>5.3f} {plain_speed / MB:>8.0f} | {' / '.join(verdicts)}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
