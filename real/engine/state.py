"""Flat views of nested training state, for the wire, shared memory and manifests.

A training state is a nested mapping whose leaves are tensors or JSON values. The engine moves
tensors as raw bytes and everything else as JSON, never pickle. ``flatten_state`` splits a
state into ``{dotted.name: tensor}`` and ``{dotted.name: json value}``; ``unflatten_state``
rebuilds the nesting. Keys must be strings without the separator (or ints, as an optimizer's
state has), and not of the reserved forms ``#<digits>`` and ``[...]``. Tuples come back as
lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

SEPARATOR = "/"

JSON_LEAVES = (str, int, float, bool, type(None))
# Exact types, for the fast paths: a state's long lists (an RNG's state: hundreds of ints) are
# checked with one set lookup per item instead of a walk through the ABCs.
_LEAF_TYPES = frozenset(JSON_LEAVES)


def flatten_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``state`` into tensors and JSON values, both keyed by ``a/b/c`` paths.

    Lists and tuples of JSON values stay JSON leaves; a list holding tensors is walked with
    its indices as keys (optimizer param groups hold only JSON values, so they stay lists).

    Raises:
        TypeError: a leaf is neither a tensor nor a JSON value, or a key is not a string.
    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    _walk(state, "", tensors, values)
    return tensors, values


def _walk(node: Any, prefix: str, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    if isinstance(node, torch.Tensor):
        tensors[prefix] = node
    elif isinstance(node, Mapping):
        if prefix and not node:
            values[prefix] = {}
        for key, child in node.items():
            if isinstance(key, int) and not isinstance(key, bool):
                key = f"#{key}"  # optimizer state is keyed by parameter index
            elif isinstance(key, str) and _reserved(key):
                # It would come back as another key: "#3" as the int 3, "[0]" as a list item.
                raise TypeError(
                    f"state key {key!r} under {prefix or 'the root'!r} is reserved: '#<digits>' "
                    "and '[...]' stand for an int key and a list index in a checkpoint; "
                    "rename it"
                )
            if not isinstance(key, str) or SEPARATOR in key:
                raise TypeError(
                    f"state key {key!r} under {prefix or 'the root'!r} must be a "
                    f"string without {SEPARATOR!r}"
                )
            _walk(child, f"{prefix}{SEPARATOR}{key}" if prefix else key, tensors, values)
    elif type(node) in (list, tuple) and all(type(item) in _LEAF_TYPES for item in node):
        values[prefix] = list(node) if isinstance(node, tuple) else node
    elif isinstance(node, list | tuple) and any(_holds_tensor(item) for item in node):
        for index, child in enumerate(node):
            _walk(child, f"{prefix}{SEPARATOR}[{index}]", tensors, values)
    elif _is_json(node):
        values[prefix] = list(node) if isinstance(node, tuple) else node
    else:
        raise TypeError(
            f"state leaf {prefix!r} is a {type(node).__name__}; only tensors and "
            "JSON values (numbers, strings, lists, dicts) can be checkpointed"
        )


def _reserved(key: str) -> bool:
    """Whether a string key reads as the flattened form of an int key or a list index."""
    return (key.startswith("#") and key[1:].isdigit()) or (
        key.startswith("[") and key.endswith("]")
    )


def _holds_tensor(node: Any) -> bool:
    if type(node) in _LEAF_TYPES:
        return False
    if isinstance(node, torch.Tensor):
        return True
    if isinstance(node, Mapping):
        return any(_holds_tensor(v) for v in node.values())
    if isinstance(node, list | tuple):
        return any(_holds_tensor(v) for v in node)
    return False


def _is_json(node: Any) -> bool:
    if type(node) in _LEAF_TYPES or isinstance(node, JSON_LEAVES):
        return True
    if isinstance(node, list | tuple):
        return all(_is_json(v) for v in node)
    if isinstance(node, Mapping):
        return all(isinstance(k, str) and _is_json(v) for k, v in node.items())
    return False


def unflatten_state(
    tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]
) -> dict[str, Any]:
    """Rebuild the nested state that ``flatten_state`` split (lists of tensors included)."""
    root: dict[str, Any] = {}
    for path, leaf in [*tensors.items(), *values.items()]:
        parts = path.split(SEPARATOR)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    rebuilt: dict[str, Any] = _restore_keys(root)
    return rebuilt


def _restore_keys(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {key: _restore_keys(child) for key, child in node.items()}
    if items and all(key.startswith("[") and key.endswith("]") for key in items):
        return [items[f"[{i}]"] for i in range(len(items))]
    return {
        (int(key[1:]) if key.startswith("#") and key[1:].isdigit() else key): child
        for key, child in items.items()
    }
