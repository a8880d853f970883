"""The trainer process's pieces: its environment, and the checkpointer factory's contract."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from real.trainer.main import NullCheckpointer, RankEnv, make_checkpointer, storage_url
from shared.scenario import Scenario


def test_rank_env_reads_torchrun_variables() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
    }
    where = RankEnv.from_env(env)
    assert (where.rank, where.world_size, where.local_rank, where.node) == (3, 4, 1, 1)
    assert (where.master_addr, where.master_port) == ("10.0.0.1", 29500)
    assert RankEnv.from_env({**env, "GEMINI_NODE": "7"}).node == 7
    assert RankEnv.from_env({}) == RankEnv()
    with pytest.raises(ValueError, match="RANK"):
        RankEnv.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="not an integer"):
        RankEnv.from_env({"RANK": "one"})


def test_gemini_checkpointer_is_built_with_the_agreed_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: dict[str, Any] = {}

    class FakeGemini:
        def __init__(
            self,
            *,
            scenario: Scenario,
            rank: int,
            world_size: int,
            node: int,
            local_rank: int,
            run_dir: Path,
        ) -> None:
            received.update(
                scenario=scenario,
                rank=rank,
                world_size=world_size,
                node=node,
                local_rank=local_rank,
                run_dir=run_dir,
            )

    fake = types.ModuleType("real.engine")
    fake.GeminiCheckpointer = FakeGemini  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "real.engine", fake)
    scenario = Scenario(name="t")
    checkpointer = make_checkpointer(
        "gemini",
        scenario,
        rank=1,
        world_size=4,
        node=0,
        local_rank=1,
        run_dir=tmp_path,
        template=dict,
        model=None,
    )
    assert isinstance(checkpointer, FakeGemini)
    assert received == {
        "scenario": scenario,
        "rank": 1,
        "world_size": 4,
        "node": 0,
        "local_rank": 1,
        "run_dir": tmp_path,
    }


def test_none_and_missing_interval(tmp_path: Path) -> None:
    scenario = Scenario(name="t")
    none = make_checkpointer(
        "none",
        scenario,
        rank=0,
        world_size=1,
        node=0,
        local_rank=0,
        run_dir=tmp_path,
        template=dict,
    )
    assert isinstance(none, NullCheckpointer) and none.restore() is None
    with pytest.raises(ValueError, match="baseline_every_iterations"):
        make_checkpointer(
            "persistent",
            scenario,
            rank=0,
            world_size=1,
            node=0,
            local_rank=0,
            run_dir=tmp_path,
            template=dict,
        )
    assert storage_url(scenario, tmp_path) == str(tmp_path / "persistent")
