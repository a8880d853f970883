"""The persistent tier: DCP layout through fsspec, the index, the background persister."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

import real.persistent.dcp as persistent_dcp
import real.persistent.persister as persistent_persister
import real.persistent.storage as persistent_storage
import real.persistent.throttle as throttling
from real.engine.eventlog import EventLog
from real.persistent.dcp import load_persistent, save_persistent
from real.persistent.persister import BackgroundPersister
from real.persistent.storage import iteration_folder, latest_persistent_iteration
from real.trainer.workload.model import GPT, GPTConfig
from real.trainer.workload.trainer import Trainer, TrainerConfig
from real.trainer.workload.weights import state_digest

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

CONFIG = TrainerConfig(
    model=GPTConfig(layers=2, hidden=32, heads=4, context=32),
    iterations=8,
    warmup_iterations=2,
    batch_size_per_rank=2,
)


@pytest.fixture(autouse=True)
def _private_key_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """The metadata sidecars' default key file goes to a temporary folder, not to ~/.config."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    monkeypatch.delenv("GEMINI_PERSISTENT_KEY", raising=False)
    monkeypatch.delenv("GEMINI_TOKEN", raising=False)


def trained(steps: int) -> Trainer:
    torch.set_num_threads(1)
    trainer = Trainer(CONFIG)
    for _ in range(steps):
        trainer.step()
    return trainer


def test_round_trip_continues_bitwise(tmp_path: Path) -> None:
    url = str(tmp_path / "tier")
    trainer = trained(3)
    saved_bytes = save_persistent(url, 3, trainer.state())
    assert saved_bytes > 0
    assert latest_persistent_iteration(url) == 3
    state = load_persistent(url, 3, Trainer(CONFIG).state())
    assert state["iteration"] == 3 and state["data"]["position"] == 3
    resumed = Trainer(CONFIG)
    resumed.load_state(state)
    for _ in range(5):
        resumed.step()
        trainer.step()
    assert state_digest(resumed.model_state()) == state_digest(trainer.model_state())


def test_a_checkpoint_of_another_world_size_is_refused_not_restored(tmp_path: Path) -> None:
    """A 2-rank job's checkpoint restored silently into 1 rank: rank 1's data position and
    RNG were dropped. A job's restore now refuses it, with the two sizes; a reader that names
    the rank it reads (a tool, not a job) still reads it."""
    from shared.errors import CheckpointMismatchError

    url = str(tmp_path / "tier")
    trainer = trained(3)
    save_persistent(url, 3, trainer.state())
    storage = persistent_storage.PersistentStorage(url)
    index = storage.read_index()
    index["complete"][0]["world_size"] = 2  # as a job of two ranks advertised it
    storage.write_json(persistent_storage.INDEX_NAME, index)
    with pytest.raises(
        CheckpointMismatchError, match="written by a job of 2 ranks; this job has 1"
    ):
        load_persistent(url, 3, Trainer(CONFIG).state())
    assert load_persistent(url, 3, Trainer(CONFIG).state(), rank=0)["iteration"] == 3


def test_template_free_load_reads_the_state_as_stored(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    url = str(tmp_path / "tier")
    trainer = trained(3)
    save_persistent(url, 3, trainer.state())
    recwarn.clear()
    state = load_persistent(url, 3)  # no template: shapes and dtypes from DCP's metadata
    # Each rank reads alone on purpose: no word from DCP of a process group it did not use.
    assert not [w for w in recwarn if "torch.distributed is disabled" in str(w.message)]
    assert state["rng"]["torch"].dtype == torch.uint8
    resumed = Trainer(CONFIG)
    resumed.load_state(state)
    for _ in range(2):
        resumed.step()
        trainer.step()
    assert state_digest(resumed.model_state()) == state_digest(trainer.model_state())


def test_a_template_and_a_checkpoint_holding_other_optimizer_tensors(tmp_path: Path) -> None:
    """A state saved before the optimizer's first step holds none of its tensors (the
    adapters'), a survivor's template holds them, a fresh process's does not: each reads."""
    from torch import nn

    from gemini_ckpt.adapters import ddp

    def built() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    url = str(tmp_path / "tier")
    model, optimizer = built()
    save_persistent(url, 0, ddp.state_dict(model, optimizer))
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    save_persistent(url, 1, ddp.state_dict(model, optimizer))
    state = load_persistent(url, 0, ddp.state_dict(model, optimizer))  # a survivor's template
    assert state["optim"]["state"] == {}
    state = load_persistent(url, 1, ddp.state_dict(*built()))  # a fresh process's: read whole
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(
            state["optim"]["state"]["weight"][key], optimizer.state[model.weight][key]
        )


def test_storage_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_STORAGE_OPTIONS", '{"auto_mkdir": true}')
    assert persistent_storage.PersistentStorage("/tmp/x").storage_options == {"auto_mkdir": True}
    assert persistent_storage.PersistentStorage("/tmp/x", {}).storage_options == {}
    monkeypatch.setenv("GEMINI_STORAGE_OPTIONS", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        persistent_storage.PersistentStorage("/tmp/x")


def test_plain_dcp_load_reads_the_model(tmp_path: Path) -> None:
    url = str(tmp_path / "tier")
    trainer = trained(2)
    save_persistent(url, 2, trainer.state())
    model_state = GPT(CONFIG.model, seed=99).state_dict()
    checkpoint = str(tmp_path / "tier" / iteration_folder(2))
    dcp.load({"model": model_state}, checkpoint_id=checkpoint)  # type: ignore[attr-defined]
    assert state_digest(model_state) == state_digest(trainer.model_state())
    files = sorted(p.name for p in (tmp_path / "tier" / iteration_folder(2)).iterdir())
    assert files == [".metadata", ".metadata.hmac", "__0_0.distcp", "rank_0.json"]
    sidecar = json.loads((tmp_path / "tier" / iteration_folder(2) / "rank_0.json").read_text())
    assert sidecar["values"]["iteration"] == 2 and sidecar["values"]["data/position"] == 2


def test_index_keeps_the_newest_and_refuses_unlisted_iterations(tmp_path: Path) -> None:
    url = str(tmp_path / "tier")
    trainer = trained(1)
    for iteration in (1, 2, 3):
        save_persistent(url, iteration, trainer.state(), keep=2)
    index = json.loads((tmp_path / "tier" / "index.json").read_text())
    assert [entry["iteration"] for entry in index["complete"]] == [2, 3]
    assert not (tmp_path / "tier" / iteration_folder(1)).exists()
    with pytest.raises(FileNotFoundError, match="complete: \\[2, 3\\]"):
        load_persistent(url, 1, trainer.state())
    assert latest_persistent_iteration(str(tmp_path / "empty")) is None


def test_a_save_a_failure_interrupted_is_removed_once_a_later_one_is_complete(
    tmp_path: Path,
) -> None:
    """A failure during a save leaves a folder never listed (no .metadata, some ranks' files).
    Nothing listed it, so retention never deleted it; the next complete save does, and leaves
    a newer unlisted folder alone."""
    url, tier = str(tmp_path / "tier"), tmp_path / "tier"
    trainer = trained(1)
    save_persistent(url, 1, trainer.state(), keep=None)
    for iteration in (2, 9):  # half-written: one rank's shard, no metadata
        (tier / iteration_folder(iteration)).mkdir()
        (tier / iteration_folder(iteration) / "__0_0.distcp").write_bytes(b"partial")
    save_persistent(url, 5, trainer.state(), keep=None)
    assert not (tier / iteration_folder(2)).exists()
    assert (tier / iteration_folder(9)).exists()  # newer: not ours to judge
    assert (tier / iteration_folder(1)).exists() and latest_persistent_iteration(url) == 5


def test_fsspec_urls_work_beyond_local_paths() -> None:
    url = f"memory://gemini-test-{os.getpid()}/tier"
    trainer = trained(2)
    save_persistent(url, 2, trainer.state())
    assert latest_persistent_iteration(url) == 2
    state = load_persistent(url, 2, trainer.state())
    assert state_digest(state["model"]) == state_digest(trainer.model_state())


def copied(state: Mapping[str, Any]) -> dict[str, Any]:
    from real.engine.state import flatten_state, unflatten_state

    tensors, values = flatten_state(state)
    return unflatten_state({k: v.detach().clone() for k, v in tensors.items()}, values)


def test_background_persister_writes_without_blocking_and_supersedes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "tier")
    release = threading.Event()
    started = threading.Event()
    real_save = persistent_dcp.save_persistent

    def slow_save(*args: Any, **kwargs: Any) -> int:
        started.set()
        assert release.wait(60)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(persistent_persister, "save_persistent", slow_save)
    events_path = tmp_path / "events.jsonl"
    log = EventLog(events_path, t0=time.time(), node=0, rank=0)
    trainer = trained(1)
    persister = BackgroundPersister(url, event_log=log, keep=None)
    persister.submit(1, copied(trainer.state()))
    assert started.wait(60)
    begun = time.perf_counter()
    for iteration in (2, 3, 4):  # queued behind the one in flight; 4 supersedes 2 and 3
        trainer.step()
        persister.submit(iteration, copied(trainer.state()))
    assert time.perf_counter() - begun < 5  # submit never waits for storage
    release.set()
    assert persister.wait(60)
    persister.close()
    index = json.loads((tmp_path / "tier" / "index.json").read_text())
    assert [entry["iteration"] for entry in index["complete"]] == [1, 4]
    assert persister.last_persisted == 4 and not persister.errors
    kinds = [
        (event["kind"], event["iteration"])
        for event in map(json.loads, events_path.read_text().splitlines())
    ]
    assert kinds == [
        ("persist_begin", 1),
        ("persist_done", 1),
        ("persist_begin", 4),
        ("persist_done", 4),
    ]
    state = load_persistent(url, 4, trainer.state())
    assert state_digest(state["model"]) == state_digest(trainer.model_state())


def test_abandoning_does_not_wait_for_a_write_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure stopped the job: the survivors leave at once, not when the write in flight
    (on slow storage, its collective broken) ends; what was queued is dropped."""
    release = threading.Event()
    started = threading.Event()
    written: list[int] = []

    def slow_save(*args: Any, **kwargs: Any) -> int:
        started.set()
        assert release.wait(60)
        written.append(int(args[1]))
        return 0

    monkeypatch.setattr(persistent_persister, "save_persistent", slow_save)
    trainer = trained(1)
    persister = BackgroundPersister(str(tmp_path / "tier"), keep=None)
    persister.submit(1, copied(trainer.state()))
    assert started.wait(60)
    persister.submit(2, copied(trainer.state()))  # queued: dropped by the abandon
    joins: list[float | None] = []
    monkeypatch.setattr(persister._thread, "join", lambda timeout=None: joins.append(timeout))
    began = time.perf_counter()
    persister.abandon()
    assert time.perf_counter() - began < 2.0
    assert joins == []  # not even a bounded wait: the write is left to its thread
    monkeypatch.undo()
    release.set()
    persister._thread.join(60)
    assert written == [1]


def test_failed_write_is_recorded_and_never_advertised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "tier")
    trainer = trained(1)
    save_persistent(url, 1, trainer.state())

    def broken_finish(self: Any, metadata: Any, results: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(FsspecWriter, "finish", broken_finish)
    persister = BackgroundPersister(url)
    persister.submit(2, copied(trainer.state()))
    assert persister.wait(60)
    persister.close()
    assert persister.errors and "disk full" in persister.errors[0]
    assert latest_persistent_iteration(url) == 1


@pytest.mark.parametrize(
    ("error", "level", "logged"),
    [
        (OSError("disk full"), logging.ERROR, "background persist failed"),
        (
            RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:4: reset"),
            logging.WARNING,
            "background persist abandoned, a peer is gone (RuntimeError: Read error",
        ),
    ],
)
def test_a_persist_a_vanished_peer_broke_is_a_warning_a_fault_an_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    level: int,
    logged: str,
) -> None:
    """A recovery's survivors see their background persist fail with the broken group: one
    line, no traceback; a fault of the tier itself keeps its traceback."""

    def failing_save(*_args: Any, **_kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(persistent_persister, "save_persistent", failing_save)
    persister = BackgroundPersister(str(tmp_path / "tier"), keep=None)
    with caplog.at_level(logging.WARNING, logger=persistent_persister.__name__):
        persister.submit(1, copied(trained(1).state()))
        assert persister.wait(60)
        persister.close()
    record = _the_persist_record(caplog)
    assert record.levelno == level
    assert logged in record.getMessage()
    assert (record.exc_info is not None) == (level == logging.ERROR)


def _the_persist_record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The one log record of the background persister's failure."""
    records = [r for r in caplog.records if "background persist" in r.getMessage()]
    assert len(records) == 1
    return records[0]


def test_a_persist_that_fails_after_its_attempt_was_abandoned_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A survivor leaves its failed attempt (``abandon``, then its groups destroyed) while a
    write is in flight: the write fails on a group that is gone, which is no fault."""
    import threading

    started, release = threading.Event(), threading.Event()

    def save_on_a_group_left(*_args: Any, **_kwargs: Any) -> None:
        started.set()
        release.wait(30)
        raise ValueError("Group <ProcessGroup object> is not registered, please create group")

    monkeypatch.setattr(persistent_persister, "save_persistent", save_on_a_group_left)
    persister = BackgroundPersister(str(tmp_path / "tier"), keep=None)
    with caplog.at_level(logging.INFO, logger=persistent_persister.__name__):
        persister.submit(1, copied(trained(1).state()))
        assert started.wait(30)
        persister.abandon()
        release.set()
        persister._thread.join(30)
    record = _the_persist_record(caplog)
    assert record.levelno == logging.INFO
    assert "ended with its attempt (ValueError: Group" in record.getMessage()
    assert record.exc_info is None


CRASHING_WRITER = """
import sys, threading, time
from pathlib import Path
import torch
import real.persistent.dcp as persistent_dcp
import real.persistent.throttle as throttling
from real.persistent.persister import BackgroundPersister
from real.persistent.dcp import save_persistent

url, marker, where = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
state = {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "iteration": 1}
save_persistent(url, 1, state)

def hang(*args, **kwargs):
    marker.write_text("writing")
    time.sleep(600)

if where == "metadata":  # tensor data written, DCP's .metadata not yet
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
    FsspecWriter.finish = hang
else:  # every file written, the index not yet updated
    persistent_dcp._advertise = hang
persister = BackgroundPersister(url)
persister.submit(2, {"model": {"w": torch.ones(1000)}, "iteration": 2})
time.sleep(600)
"""


@pytest.mark.parametrize("where", ["metadata", "index"])
def test_a_writer_killed_mid_write_never_advertises_the_partial_checkpoint(
    tmp_path: Path, where: str
) -> None:
    url, marker = str(tmp_path / "tier"), tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, url, str(marker), where],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the writer never reached the crash point"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert (tmp_path / "tier" / iteration_folder(2)).exists()  # partly written ...
    assert latest_persistent_iteration(url) == 1  # ... and not advertised
    state = load_persistent(url, 1, {"model": {"w": torch.zeros(1000)}, "iteration": 0})
    assert torch.equal(state["model"]["w"], torch.arange(1000, dtype=torch.float32))
    with pytest.raises(FileNotFoundError):
        load_persistent(url, 2, {"model": {"w": torch.zeros(1000)}, "iteration": 0})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_throttle_paces_transfers_exactly() -> None:
    clock = FakeClock()
    throttle = throttling.Throttle(1000.0, clock=clock, sleep=clock.sleep)
    assert throttle.account(500) == 0.5 and clock.now == 100.5
    # A transfer that took 0.2 s of real I/O of its 1.0 s budget waits only the rest.
    began = clock.now
    clock.now += 0.2
    assert throttle.account(1000, began) == pytest.approx(0.8) and clock.now == 101.5
    # Idle time earns no burst: the next transfer starts from now.
    clock.now = 110.0
    assert throttle.account(250) == 0.25
    # Two transfers that began together (two threads) queue one after the other.
    throttle = throttling.Throttle(1000.0, clock=clock, sleep=clock.sleep)
    began = clock.now
    assert throttle.account(100, began) == pytest.approx(0.1)
    assert throttle.account(300, began) == pytest.approx(0.3)  # ends 0.4 s after both began
    assert clock.now == pytest.approx(began + 0.4)
    assert throttle.account(0) == 0.0 and throttle.transferred == 400
    with pytest.raises(ValueError):
        throttling.Throttle(0.0)


def test_tiny_transfers_are_paced_in_batches_without_losing_time() -> None:
    """A parser's reads of a few bytes each are charged exactly, but slept only once their
    waits add up to ``MIN_SLEEP_S``: the same total time, a few sleeps instead of thousands."""
    clock = FakeClock()
    throttle = throttling.Throttle(1e6, clock=clock, sleep=clock.sleep)
    for _ in range(5000):
        throttle.account(8)  # 8 us each: 40 ms in all
    assert throttle.transferred == 40_000
    assert len(clock.slept) <= 40_000 / 1e6 / throttling.MIN_SLEEP_S
    assert clock.now - 100.0 == pytest.approx(0.04, abs=throttling.MIN_SLEEP_S)
    throttle.account(10_000)  # a large transfer pays what the small ones still owed
    assert clock.now - 100.0 == pytest.approx(0.05)


class CountingThrottle(throttling.Throttle):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(1e6, clock=clock, sleep=clock.sleep)
        self.charges: list[tuple[int, float]] = []

    def account(self, nbytes: int, began: float | None = None) -> float:
        self.charges.append((nbytes, self.clock() if began is None else began))
        return super().account(nbytes, began)


def test_a_files_small_reads_are_charged_together_and_in_full_by_its_close() -> None:
    """A parser's thousands of reads of a few bytes (DCP's ``torch.load`` of every tensor) are
    charged to the throttle in batches of ``BATCH_BYTES``, from when the first began, and what
    is left when the file closes: the same bytes and time, a few charges."""
    import io

    clock = FakeClock()
    throttle = CountingThrottle(clock)
    data = bytes(range(256)) * 1024  # 256 KiB
    small = throttling.BATCH_BYTES // 64
    with throttling.ThrottledFile(io.BytesIO(data), throttle) as handle:
        began = clock.now
        read = b"".join(handle.read(small) for _ in range(100))  # 1.56 batches
        assert [n for n, _ in throttle.charges] == [throttling.BATCH_BYTES]
        assert throttle.charges[0][1] == began  # charged from the first read's start
        assert handle.tell() == len(read) and handle.seek(0) == 0  # passed straight through
        assert "tell" in vars(handle)  # looked up once
        buffer = bytearray(throttling.BATCH_BYTES)
        assert handle.readinto(buffer) == len(buffer)  # a large read: what is owed, then it
        assert [n for n, _ in throttle.charges[1:]] == [36 * small, throttling.BATCH_BYTES]
        assert handle.read(10) == data[len(buffer) : len(buffer) + 10]
    assert throttle.charges[-1][0] == 10  # the close charged the rest
    assert throttle.transferred == 100 * small + throttling.BATCH_BYTES + 10
    # the time the bytes take, less a last wait too short to sleep (MIN_SLEEP_S)
    assert clock.now - 100.0 == pytest.approx(
        throttle.transferred / 1e6, abs=throttling.MIN_SLEEP_S
    )


def test_emulated_bandwidth_paces_real_writes_and_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate = 4e6  # bytes/s: the ~0.4 MB state takes >= 0.1 s each way
    assert throttling.emulated_rate_per_rank(0.128, 4) == pytest.approx(4e6)
    monkeypatch.setenv(throttling.STORAGE_RATE_ENV, repr(rate))
    throttle = throttling.process_throttle(rate)
    url = str(tmp_path / "tier")
    trainer = trained(1)
    before = throttle.transferred
    start = time.monotonic()
    saved = save_persistent(url, 1, trainer.state())
    written = throttle.transferred - before
    assert written >= saved  # the DCP files, the sidecar and the index all pass the throttle
    assert time.monotonic() - start >= written / rate
    before = throttle.transferred
    start = time.monotonic()
    state = load_persistent(url, 1, Trainer(CONFIG).state())
    read = throttle.transferred - before
    assert read >= saved and time.monotonic() - start >= read / rate
    assert state["iteration"] == 1
    monkeypatch.delenv(throttling.STORAGE_RATE_ENV)
    assert persistent_storage.PersistentStorage(url).throttle is None
    with monkeypatch.context() as patch:
        patch.setenv(throttling.STORAGE_RATE_ENV, "fast")
        with pytest.raises(ValueError, match="GEMINI_STORAGE_RATE"):
            persistent_storage.PersistentStorage(url)


def test_a_job_resumed_from_another_world_sizes_checkpoint_fails_before_it_starts(
    tmp_path: Path,
) -> None:
    """The root of a job submitted again plans its first attempt from the persistent tier: a
    checkpoint of another world size fails the job there, naming both sizes, rather than in
    every trainer (a crash loop whose cause only the trainers' logs told)."""
    from typing import cast

    from real.agent.root import RootAgent

    url = str(tmp_path / "tier")
    save_persistent(url, 3, trained(3).state())  # one rank (no process group)
    root = cast(Any, RootAgent.__new__(RootAgent))
    root.persistent_url, root.resume, root.node_id = url, True, 0
    root.nodes, root.per_node = 2, 1
    plan, refusal = root._first_plan()
    assert plan["iteration"] is None
    assert refusal is not None and "written by a job of 1 ranks; this job has 2" in refusal
    assert refusal.startswith(f"the persistent tier holds iteration 3: {url}/")
    from shared.placement import plan_placement

    root.nodes, root.placement = 1, plan_placement(1, 1, "group")
    plan, refusal = root._first_plan()
    assert refusal is None and plan["iteration"] == 3
