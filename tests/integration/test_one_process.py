"""A user's script in one process, started by hand (no torchrun, no agents): a crash leaves
the node's store daemon to a rerun from the same parent (the same script and run folder; other
jobs from that parent get daemons of their own), which restores from its memory and
ends with the same weights as a run without the crash; a clean finish stops the daemon and
frees its memory (no process, no discovery file, no slot file). With the memory gone, ``run``
restores from the persistent tier, under either strategy, with or without a template."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from running import store_daemons

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)

SCRIPT = """
import os, sys
from pathlib import Path
import torch
from torch import nn
from gemini_ckpt import Checkpointer
from gemini_ckpt.adapters import ddp

out = Path(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(1)
storage = os.environ.get("STORAGE")  # a persistent tier, written every 2nd checkpoint
checkpointer = Checkpointer(
    run_dir=out,
    strategy=os.environ.get("STRATEGY", "gemini"),
    **({"persistent_url": storage, "persist_every": 2} if storage else {}),
)
model = nn.Linear(8, 1)
momentum = float(os.environ.get("MOMENTUM", "0"))  # with it, an optimizer state that matters
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
crash_at = int(os.environ.get("CRASH_AT", "0"))
adapter = bool(os.environ.get("ADAPTER"))  # the DDP adapter's state, else plain state dicts

def state():
    if adapter:
        return ddp.state_dict(model, optimizer, clone=False)
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}

def train(restored):
    start = 1
    if restored is not None:
        if adapter:
            ddp.load_state_dict(model, optimizer, restored.state)
        else:
            model.load_state_dict(restored.state["model"])
            optimizer.load_state_dict(restored.state["optim"])
        start = restored.iteration + 1
        print(f"resumed at {start} from {restored.tier}", flush=True)
    for iteration in range(start, 9):
        inputs = torch.randn(4, 8, generator=torch.Generator().manual_seed(iteration))
        loss = model(inputs).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        checkpointer.save(iteration, state())
        if iteration == crash_at:
            if storage:
                # The job ends with its memory: the store daemon stops and frees every slot,
                # after the background persist in flight; what is left is on storage.
                checkpointer.close()
            os._exit(17)  # a crash: no cleanup
    torch.save(model.state_dict(), out / "final.pt")

template = (lambda: ddp.state_dict(model, optimizer)) if os.environ.get("TEMPLATE") else None
with checkpointer:
    checkpointer.run(train, template=template)
"""


def run(
    script: Path, out: Path, runtime: Path, crash_at: int | None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **extra,
        "GEMINI_RUNTIME_DIR": str(runtime),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    if crash_at is not None:
        env["CRASH_AT"] = str(crash_at)
    return subprocess.run(
        [sys.executable, str(script), str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_one_process_crash_rerun_and_clean_finish(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    shm_before = set(os.listdir("/dev/shm"))
    try:
        reference = run(script, tmp_path / "reference", runtime, None)
        assert reference.returncode == 0, reference.stderr[-3000:]
        # A clean finish: the daemon this process started is gone, and all it held.
        assert store_daemons(runtime) == []
        assert list(runtime.iterdir()) == []
        assert set(os.listdir("/dev/shm")) - shm_before == set()

        crashed = run(script, tmp_path / "resumed", runtime, 5)
        assert crashed.returncode == 17, crashed.stderr[-3000:]
        # A crash: the daemon stays for a rerun from the same parent (this test's process).
        assert len(store_daemons(runtime)) == 1
        # Other jobs from the same parent, with another run folder or another script, start
        # from scratch with daemons of their own: they restored the crashed job's state.
        other = run(script, tmp_path / "other", runtime, None)
        assert other.returncode == 0 and "resumed" not in other.stdout, other.stderr[-3000:]
        second = tmp_path / "train_again.py"
        second.write_text(SCRIPT)
        another = run(second, tmp_path / "resumed", runtime, None)
        assert another.returncode == 0 and "resumed" not in another.stdout, another.stderr[-3000:]
        assert len(store_daemons(runtime)) == 1  # theirs stopped with their clean finish
        rerun = run(script, tmp_path / "resumed", runtime, None)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "resumed at 6 from local" in rerun.stdout
        final = torch.load(tmp_path / "resumed" / "final.pt")
        expected = torch.load(tmp_path / "reference" / "final.pt")
        for name, tensor in expected.items():
            assert torch.equal(final[name], tensor), name
        assert store_daemons(runtime) == []
        assert list(runtime.iterdir()) == []
        assert set(os.listdir("/dev/shm")) - shm_before == set()
    finally:
        for pid in store_daemons(runtime):
            os.kill(int(pid), 15)
        deadline = time.monotonic() + 10
        while store_daemons(runtime) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.mark.parametrize(
    ("strategy", "template"), [("gemini", False), ("gemini", True), ("persistent", False)]
)
def test_run_resumes_from_persistent_storage_when_memory_is_gone(
    tmp_path: Path, strategy: str, template: bool
) -> None:
    """``run(train)`` restores from the persistent tier when no memory holds a checkpoint
    (with or without ``template``), and the run ends with the weights of a run without the
    failure."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    extra = {
        "STRATEGY": strategy,
        "ADAPTER": "1",
        "MOMENTUM": "0.9",
        # The persistent tier's metadata key: a user key file of the test's own, not ~/.config.
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        **({"TEMPLATE": "1"} if template else {}),
    }
    try:
        reference = run(
            script, tmp_path / "reference", runtime, None, STORAGE=str(tmp_path / "s1"), **extra
        )
        assert reference.returncode == 0, reference.stderr[-3000:]
        storage = str(tmp_path / "s2")
        crashed = run(script, tmp_path / "resumed", runtime, 5, STORAGE=storage, **extra)
        assert crashed.returncode == 17, crashed.stderr[-3000:]
        assert store_daemons(runtime) == []  # no memory left: only storage holds a checkpoint
        rerun = run(script, tmp_path / "resumed", runtime, None, STORAGE=storage, **extra)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        # Iteration 4, the last persisted (2 if a slow machine ran out close()'s bounded wait).
        assert re.search(r"resumed at [35] from persistent", rerun.stdout), rerun.stdout
        final = torch.load(tmp_path / "resumed" / "final.pt")
        expected = torch.load(tmp_path / "reference" / "final.pt")
        for name, tensor in expected.items():
            assert torch.equal(final[name], tensor), name
    finally:
        for pid in store_daemons(runtime):
            os.kill(int(pid), 15)


TWICE = """
import sys
from pathlib import Path
import torch
from gemini_ckpt import Checkpointer

out = Path(sys.argv[1])
first = Checkpointer(run_dir=out)
first.save(1, {"x": torch.ones(2)})
try:
    Checkpointer(run_dir=out / "second")
except RuntimeError as error:
    print("refused:", error, flush=True)
first.close()
again = Checkpointer(run_dir=out)  # once closed, another may open
print("restored:", again.restore(), flush=True)
again.close()
"""


def test_a_second_open_checkpointer_in_one_process_is_refused(tmp_path: Path) -> None:
    """Two open at once would share the node's checkpoint slots: the second's restore returned
    the first's state."""
    script = tmp_path / "twice.py"
    script.write_text(TWICE)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    try:
        done = run(script, tmp_path / "out", runtime, None)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "refused: a Checkpointer is already open in this process" in done.stdout
        assert "restored:" in done.stdout
        assert store_daemons(runtime) == []
    finally:
        for pid in store_daemons(runtime):
            os.kill(int(pid), 15)
