"""DCP's pickled ``.metadata`` is unpickled only after its keyed sidecar verifies.

The proof that nothing is unpickled is a ``.metadata`` whose unpickling would create a file:
after a refused load, the file does not exist.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import time
from pathlib import Path

import pytest
import torch

from real.persistent.baseline import PersistentCheckpointer
from real.persistent.dcp import load_persistent, save_persistent
from real.persistent.metadata import METADATA_MAC_SUFFIX, METADATA_NAME, metadata_key, user_key_path
from real.persistent.persister import BackgroundPersister
from real.persistent.storage import iteration_folder
from shared.errors import MetadataVerificationError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
ITERATION = 4


@pytest.fixture(autouse=True)
def _keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("GEMINI_TOKEN", raising=False)
    monkeypatch.setenv("GEMINI_PERSISTENT_KEY", "a-secret-of-this-deployment")


def _state(scale: float = 1.0) -> dict[str, object]:
    return {"model": {"w": torch.arange(12.0).reshape(3, 4) * scale}, "iteration": ITERATION}


def _saved(tmp_path: Path) -> tuple[str, Path]:
    url = str(tmp_path / "tier")
    save_persistent(url, ITERATION, _state())
    return url, tmp_path / "tier" / iteration_folder(ITERATION)


class _Planted:
    """Unpickling this creates ``path``: what a hostile ``.metadata`` could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_saved_checkpoint_has_a_sidecar_and_loads(tmp_path: Path) -> None:
    url, folder = _saved(tmp_path)
    sidecar = json.loads((folder / (METADATA_NAME + METADATA_MAC_SUFFIX)).read_text())
    assert sidecar["algorithm"] == "HMAC-SHA256" and sidecar["key"] == "GEMINI_PERSISTENT_KEY"
    assert "a-secret" not in json.dumps(sidecar)
    state = load_persistent(url, ITERATION, _state(0.0))
    assert torch.equal(state["model"]["w"], _state()["model"]["w"])
    assert torch.equal(load_persistent(url, ITERATION)["model"]["w"], _state()["model"]["w"])


@pytest.mark.parametrize("template", [True, False], ids=["template", "as-stored"])
def test_a_hostile_metadata_is_never_unpickled(tmp_path: Path, template: bool) -> None:
    url, folder = _saved(tmp_path)
    planted = tmp_path / "the-pickle-ran"
    (folder / METADATA_NAME).write_bytes(pickle.dumps(_Planted(planted)))
    with pytest.raises(MetadataVerificationError, match="does not match its keyed sidecar"):
        load_persistent(url, ITERATION, _state(0.0) if template else None)
    assert not planted.exists()


def test_a_changed_metadata_is_refused(tmp_path: Path) -> None:
    url, folder = _saved(tmp_path)
    with (folder / METADATA_NAME).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(MetadataVerificationError, match="refusing to unpickle"):
        load_persistent(url, ITERATION, _state(0.0))


def test_a_missing_sidecar_is_refused(tmp_path: Path) -> None:
    url, folder = _saved(tmp_path)
    (folder / (METADATA_NAME + METADATA_MAC_SUFFIX)).unlink()
    with pytest.raises(MetadataVerificationError, match="nobody vouched for"):
        load_persistent(url, ITERATION, _state(0.0))


def test_another_key_is_refused_and_the_right_one_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = _saved(tmp_path)
    monkeypatch.setenv("GEMINI_PERSISTENT_KEY", "another-deployment")
    with pytest.raises(MetadataVerificationError, match="another key"):
        load_persistent(url, ITERATION, _state(0.0))
    state = load_persistent(url, ITERATION, _state(0.0), key="a-secret-of-this-deployment")
    assert torch.equal(state["model"]["w"], _state()["model"]["w"])


def test_the_baseline_restores_only_verified_checkpoints(tmp_path: Path) -> None:
    url, folder = _saved(tmp_path)
    baseline = PersistentCheckpointer(url, 1, lambda: _state(0.0))
    restored = baseline.restore()
    assert restored is not None and torch.equal(
        restored.state["model"]["w"], _state()["model"]["w"]
    )
    planted = tmp_path / "the-pickle-ran"
    (folder / METADATA_NAME).write_bytes(pickle.dumps(_Planted(planted)))
    with pytest.raises(MetadataVerificationError):
        baseline.restore()
    assert not planted.exists()


def test_the_key_order_and_the_users_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert metadata_key() == (b"a-secret-of-this-deployment", "GEMINI_PERSISTENT_KEY")
    monkeypatch.delenv("GEMINI_PERSISTENT_KEY")
    monkeypatch.setenv("GEMINI_TOKEN", "job-token")
    assert metadata_key() == (b"job-token", "GEMINI_TOKEN")
    monkeypatch.delenv("GEMINI_TOKEN")
    key, source = metadata_key()
    path = user_key_path()
    assert path.is_relative_to(tmp_path) and source == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 64
    assert metadata_key() == (key, source)  # made once, then read
    url, _ = _saved(tmp_path)  # saves and loads with the user's key
    assert torch.equal(load_persistent(url, ITERATION)["model"]["w"], _state()["model"]["w"])
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        metadata_key()


def test_the_background_persister_signs_with_the_key_it_is_given(tmp_path: Path) -> None:
    url = str(tmp_path / "tier")
    persister = BackgroundPersister(url, key="the-jobs-own-key")
    persister.submit(ITERATION, _state())
    persister.close(60)
    assert persister.errors == [] and persister.last_persisted == ITERATION
    sidecar = (
        tmp_path / "tier" / iteration_folder(ITERATION) / (METADATA_NAME + METADATA_MAC_SUFFIX)
    )
    assert json.loads(sidecar.read_text())["key"] == "explicit"
    with pytest.raises(MetadataVerificationError):  # the environment's key is another
        load_persistent(url, ITERATION, _state(0.0))
    state = load_persistent(url, ITERATION, _state(0.0), key="the-jobs-own-key")
    assert torch.equal(state["model"]["w"], _state()["model"]["w"])


def test_the_background_persister_drops_what_a_broken_group_cannot_agree_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer gone: the agreement's collective fails and keeps failing. The persister records
    it once and waits for the next save, rather than retry the same state in a tight loop."""
    persister = BackgroundPersister(str(tmp_path / "tier"))
    calls: list[int] = []

    def broken(newest: int) -> int:
        calls.append(newest)
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(persister, "_agree", broken)
    try:
        persister.submit(ITERATION, _state())
        assert persister.wait(5.0)
        time.sleep(0.5)  # a retry loop would call again many times in this
        assert calls == [ITERATION] and len(persister.errors) == 1
    finally:
        persister.close(5)
