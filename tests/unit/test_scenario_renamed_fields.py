"""Scenario fields renamed so that each concept has one word: the baseline's saves say
``baseline_*`` (Gemini's background persistence keeps ``persist_*``); the old names still load,
with a warning."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.scenario import RENAMED_CHECKPOINT_FIELDS, CheckpointConfig


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_CHECKPOINT_FIELDS.items()))
def test_an_old_name_loads_with_a_deprecation_warning(old: str, new: str) -> None:
    value = 7 if new != "baseline_interval" else "highfreq"
    with pytest.warns(DeprecationWarning, match=f"checkpoint.{old} is deprecated.*{new}"):
        config = CheckpointConfig.model_validate({"strategy": "persistent", old: value})
    assert getattr(config, new) == value
    assert old not in CheckpointConfig.model_fields


def test_old_and_new_name_together_are_refused() -> None:
    old, new = next(iter(sorted(RENAMED_CHECKPOINT_FIELDS.items())))
    with pytest.raises(ValidationError, match=f"old name of {new}"):
        CheckpointConfig.model_validate({old: 3, new: 3})


def test_gemini_and_the_baseline_have_distinct_words() -> None:
    fields = set(CheckpointConfig.model_fields)
    assert {"persist_every_iterations", "baseline_every_iterations"} <= fields
    assert not any(name.startswith("persistent_") for name in fields)
