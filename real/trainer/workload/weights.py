"""Model weights as a raw file plus a JSON manifest, and a digest to compare runs bitwise.

``write_tensors`` stores tensors as their raw bytes, one after another, with a JSON manifest
(names, dtypes, shapes, byte offsets, sha256) beside them; ``read_tensors`` reads them back.
No pickle anywhere. ``state_digest`` is the sha256 of a state's names, dtypes, shapes and
bytes in name order: two runs trained the same way have equal digests.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST_SUFFIX = ".json"


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor`` (a DTensor's local shard), C order, on the CPU."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    flat = local.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of ``tensors``: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def write_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``tensors`` to ``path`` (raw bytes) and ``path + .json`` (manifest); return it.

    The manifest holds ``tensors`` (name -> dtype, shape, offset, nbytes), ``sha256`` (of the
    raw file) and ``digest`` (``state_digest``), plus ``extra``. Both files appear atomically
    (written aside, then renamed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    file_digest = hashlib.sha256()
    offset = 0
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        for name in sorted(tensors):
            data = tensor_bytes(tensors[name])
            entries[name] = {
                "dtype": str(tensors[name].dtype).removeprefix("torch."),
                "shape": list(tensors[name].shape),
                "offset": offset,
                "nbytes": len(data),
            }
            handle.write(data)
            file_digest.update(data)
            offset += len(data)
    os.replace(temporary, path)
    manifest = {
        "tensors": entries,
        "sha256": file_digest.hexdigest(),
        "digest": state_digest(tensors),
        **(extra or {}),
    }
    manifest_path = path.with_name(path.name + MANIFEST_SUFFIX)
    temporary = manifest_path.with_name(manifest_path.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(temporary, manifest_path)
    return manifest


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and manifest written by ``write_tensors``.

    Raises:
        ValueError: the raw file does not match its manifest's sha256.
    """
    path = Path(path)
    manifest = json.loads(path.with_name(path.name + MANIFEST_SUFFIX).read_text("utf-8"))
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in its manifest; the file is damaged")
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in manifest["tensors"].items():
        dtype = getattr(torch, entry["dtype"])
        raw = np.frombuffer(data, dtype=np.uint8, count=entry["nbytes"], offset=entry["offset"])
        tensors[name] = torch.from_numpy(raw.copy()).view(dtype).reshape(entry["shape"])
    return tensors, manifest
