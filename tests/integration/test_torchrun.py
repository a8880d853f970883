"""A user's own script under plain torchrun: two torchrun "nodes" on this host, c10d rendezvous,
``--max-restarts``. A worker dies; torchrun restarts every worker; they restore from the node
store daemons' memory, and the final weights equal those of a run without the failure, bit for
bit. The daemons end with the job and leave nothing behind.
"""

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

from real.runtime.processes import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TORCHRUN = Path(sys.executable).with_name("torchrun")

pytestmark = pytest.mark.timeout(400)


def run_job(
    script: str, out: Path, runtime: Path, crash_at: int | None, nodes: int = 2
) -> list[str]:
    """``nodes`` torchrun nodes of one rank each; returns their outputs."""
    port = free_port()
    scratch = runtime.parent / f"tmp-{out.name}"  # torchrun's own torchelastic_* log folders
    scratch.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "GEMINI_RUNTIME_DIR": str(runtime),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        # Multi-node torchrun must give each restart a rendezvous store of its own.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    if crash_at is not None:
        env["EXAMPLE_CRASH_AT"] = str(crash_at)
    started = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                f"--nnodes={nodes}",
                "--nproc-per-node=1",
                "--max-restarts=2",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                f"--rdzv-id=job-{out.name}",
                "--monitor-interval=0.2",
                str(EXAMPLES / script),
                "--iterations=14",
                f"--out={out}",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(nodes)
    ]
    outputs = []
    try:
        for node in started:
            output, _ = node.communicate(timeout=300)
            outputs.append(output)
            assert node.returncode == 0, output[-4000:]
    finally:
        for node in started:
            if node.poll() is None:
                node.kill()
                node.wait(10)
    return outputs


# DDP on three ranks: beyond two, a resumed run reduces in the uninterrupted run's bucket layout
# only after the example's warm-up backward (without it the weights differed).
# FSDP2 under torchrun is slow (20-28 s): FSDP2's capture and restore are in the default run
# already (tests/integration/test_training.py, test_engine_recovery.py).
@pytest.mark.parametrize(
    ("script", "nodes"),
    [("ddp_train.py", 3), pytest.param("fsdp2_train.py", 2, marks=pytest.mark.slow)],
)
def test_torchrun_restart_restores_from_memory_bitwise(
    tmp_path: Path, script: str, nodes: int
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    shm_before = set(os.listdir("/dev/shm"))
    run_job(script, tmp_path / "reference", runtime, None, nodes)
    outputs = run_job(script, tmp_path / "crashed", runtime, 9, nodes)
    text = "\n".join(outputs)
    # The crash struck after iteration 9's save; every worker restarted and resumed from
    # its node's memory (its own daemon's slots), not from scratch or storage.
    assert "failed (exitcode: 17)" in text
    # Matched anywhere, not per line: the workers share torchrun's output, and one's line can
    # land before the other's newline.
    resumed = re.findall(r"rank \d+: resumed at (\d+) from (\w+)", text)
    assert len(resumed) == nodes, text[-4000:]
    assert all(tier == "local" for _, tier in resumed), resumed
    assert {start for start, _ in resumed} <= {"9", "10"}
    reference = torch.load(tmp_path / "reference" / "final.pt")
    crashed = torch.load(tmp_path / "crashed" / "final.pt")
    assert reference.keys() == crashed.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, crashed[name]), name
    # The daemons end with their torchrun agents (they look twice a second): no process, no
    # discovery file, no slot file.
    deadline = time.monotonic() + 30
    while store_daemons(runtime) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store_daemons(runtime) == []
    assert list(runtime.iterdir()) == []
    assert set(os.listdir("/dev/shm")) - shm_before == set()
