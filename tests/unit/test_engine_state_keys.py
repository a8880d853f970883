"""The keys of a checkpointed state: what ``flatten_state`` writes, ``unflatten_state`` reads
back as the same key. Int keys (an optimizer's state) come back as ints, lists holding tensors
as lists; a string key that reads as either form is refused, since it came back changed
("#3" as the int 3, "[0]" and "[1]" as a list), silently."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from real.engine.state import flatten_state, unflatten_state


def _round_trip(state: dict[str, Any]) -> dict[str, Any]:
    tensors, values = flatten_state(state)
    return unflatten_state(tensors, values)


def test_int_keys_and_lists_of_tensors_come_back_as_they_were() -> None:
    state = {
        "optim": {"state": {0: {"step": torch.tensor(1.0)}, 3: {"step": torch.tensor(2.0)}}},
        "buffers": [torch.ones(2), torch.zeros(1)],
        "names": {"#tag": 1, "a[0]": 2, "[open": 3, "#": 4},
    }
    back = _round_trip(state)
    assert set(back["optim"]["state"]) == {0, 3}
    assert isinstance(back["buffers"], list) and len(back["buffers"]) == 2
    assert back["names"] == {"#tag": 1, "a[0]": 2, "[open": 3, "#": 4}


@pytest.mark.parametrize("key", ["#3", "[0]", "[x]", "[]"])
def test_a_key_that_reads_as_an_int_key_or_a_list_index_is_refused(key: str) -> None:
    with pytest.raises(TypeError, match=r"is reserved.*rename it"):
        flatten_state({"extra": {key: torch.ones(1)}})
    with pytest.raises(TypeError, match="is reserved"):
        flatten_state({key: 1})
