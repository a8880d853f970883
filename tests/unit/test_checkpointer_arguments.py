"""``Checkpointer``'s arguments are checked as it is made, each named: a bad one used to
surface seconds later, once the process group had formed, as a scenario field the caller
never passed (``persist_every=0``) or as gloo's "Invalid timeout" (``timeout_s=-1``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gemini_ckpt import Checkpointer


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"persist_every": 0}, r"persist_every=0\): an integer >= 1"),
        ({"replicas": 0}, r"replicas=0\)"),
        ({"replicas": 2.5}, r"replicas=2.5\)"),
        ({"timeout_s": -1}, r"timeout_s=-1\): a number of seconds > 0"),
        ({"placement": "rings"}, r"placement='rings'\): use one of 'auto', 'group'"),
        ({"strategy": "dcp"}, r"strategy='dcp'\)"),
        ({"local_slots": 3}, r"local_slots=3\)"),
        ({"commit": "later"}, r"commit='later'\)"),
        ({"traffic": "eager"}, r"traffic='eager'\)"),
    ],
)
def test_a_bad_argument_is_refused_at_once_by_its_name(
    arguments: dict[str, Any], named: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=named):
        Checkpointer(**arguments, run_dir=tmp_path)


def test_good_arguments_make_a_checkpointer(tmp_path: Path) -> None:
    checkpointer = Checkpointer(
        3,
        placement="ring",
        persist_every=5,
        timeout_s=30,
        local_slots=1,
        strategy="persistent",
        run_dir=tmp_path,
    )
    checkpointer.close()
