"""Random number generator states as tensors and JSON values (no pickle).

``capture_rng_state`` returns the states of torch's CPU generator (and CUDA's, when present),
numpy's legacy global generator and Python's ``random`` module; ``restore_rng_state`` sets
them back. Large arrays are tensors (so they travel as raw bytes); the rest is JSON.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states: tensors and JSON values, freshly copied."""
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)
    algorithm, keys, position, has_gauss, cached_gaussian = numpy_state
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "algorithm": algorithm,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global generators to a state from ``capture_rng_state``."""
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            str(numpy_state["algorithm"]),
            np.asarray(_cpu(numpy_state["keys"]).numpy(), dtype=np.uint32),
            int(numpy_state["position"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )
    python_state = state["python"]
    random.setstate(
        (int(python_state["version"]), tuple(python_state["state"]), python_state["gauss_next"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_cpu_bytes(state["cuda"]))


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.detach().cpu()


def _cpu_bytes(tensor: torch.Tensor) -> torch.Tensor:
    # A fresh tensor of its own: torch.set_rng_state crashes (SIGSEGV) on a view at an offset
    # into a larger buffer, which is what a restore from checkpoint memory hands us.
    return _cpu(tensor).to(torch.uint8).clone(memory_format=torch.contiguous_format)
