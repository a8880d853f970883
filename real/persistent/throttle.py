"""Emulated storage bandwidth for the persistent tier.

On a real cluster the persistent tier is shared and slow (the
paper: FSx at 20 Gbit/s aggregate for a 1.2 TB checkpoint); on the emulated cluster it is a
local folder, and the page cache writes a checkpoint at memory speed, which would make the
baseline look far cheaper than it is. Our machines have no netem and kernel NFS (docs/design.md
section 6), and
a local folder has no link to shape with tc, so the bandwidth is emulated in the application:
with ``cluster.storage.emulate_bandwidth`` the trainer sets ``GEMINI_STORAGE_RATE`` (bytes per
second for this process) and every ``PersistentStorage`` of the process wraps its fsspec
filesystem in ``ThrottledFileSystem``: every byte of the DCP files, the JSON sidecars and the
index, written or read, is paced by one process-wide ``Throttle`` (a transfer of n bytes ends
no earlier than n / rate after the previous one, no bursts), whatever the URL (a local path or
``s3://``). The approximation: the scenario's bandwidth is the *aggregate* shared by all
writers and readers; each of the W ranks of the job gets bandwidth / W, which is exact when
all ranks transfer together and as much (DCP's collective saves and loads: every rank saves
its share and loads its state at once) and pessimistic when fewer do (rank 0 reading the index
alone gets 1/W of the link; those files are a few hundred bytes).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from real.runtime.env import GEMINI_STORAGE_RATE

STORAGE_RATE_ENV = GEMINI_STORAGE_RATE


MIN_SLEEP_S = 0.002
"""A wait shorter than this is not slept but carried: the next transfer starts after it ends
anyway. A parser's tiny reads (``pickle.load`` of DCP's ``.metadata``: some two thousand reads
of a few bytes) would otherwise each sleep a few microseconds and overshoot by tens, 0.1 s or
more per load that the emulated link does not have (seen on the quickstart's state)."""


class Throttle:
    """Paces transfers to ``bytes_per_s``: a transfer of n bytes that began at t ends no earlier
    than max(t, end of the previous transfer) + n / rate. Thread-safe; transfers of several
    threads queue one after the other, so together they never exceed the rate. A wait under
    ``MIN_SLEEP_S`` is carried to the next transfer instead of slept (the last transfer of a
    series may end that much early).

    Args:
        bytes_per_s: the rate.
        clock, sleep: time source and sleep (a fake pair makes tests exact).
    """

    def __init__(
        self,
        bytes_per_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not bytes_per_s > 0:
            raise ValueError(f"a throttle needs a positive rate, got {bytes_per_s}")
        self.bytes_per_s = float(bytes_per_s)
        self.clock = clock
        self._sleep = sleep
        self._free_at = float("-inf")
        self._lock = threading.Lock()
        self.transferred = 0

    def account(self, nbytes: int, began: float | None = None) -> float:
        """Charge a transfer of ``nbytes`` that began at ``began`` (default: now), and sleep
        until it may end. Returns the seconds slept."""
        if nbytes <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            start = max(now if began is None else began, self._free_at)
            self._free_at = start + nbytes / self.bytes_per_s
            self.transferred += nbytes
            wait = self._free_at - now
        if wait >= MIN_SLEEP_S:
            self._sleep(wait)
            return wait
        return 0.0


_process_throttles: dict[float, Throttle] = {}
_process_lock = threading.Lock()


def process_throttle(bytes_per_s: float) -> Throttle:
    """The process-wide throttle of that rate (shared by every storage object and thread)."""
    with _process_lock:
        throttle = _process_throttles.get(bytes_per_s)
        if throttle is None:
            throttle = _process_throttles[bytes_per_s] = Throttle(bytes_per_s)
        return throttle


def storage_rate_from_env() -> float | None:
    """This process's emulated storage rate (``GEMINI_STORAGE_RATE``, bytes/s), or None.

    Raises:
        ValueError: the variable is not a positive number.
    """
    text = os.environ.get(STORAGE_RATE_ENV, "").strip()
    if not text:
        return None
    try:
        rate = float(text)
    except ValueError as error:
        raise ValueError(f"{STORAGE_RATE_ENV}={text!r} is not a number (bytes/s)") from error
    if not rate > 0 or rate == float("inf"):
        raise ValueError(f"{STORAGE_RATE_ENV} must be a positive rate in bytes/s, got {text!r}")
    return rate


def emulated_rate_per_rank(bandwidth_gbit_s: float, world_size: int) -> float:
    """Bytes/s of one of ``world_size`` ranks sharing ``bandwidth_gbit_s`` (aggregate)."""
    return bandwidth_gbit_s * 1e9 / 8 / max(1, world_size)


BATCH_BYTES = 64 * 1024
"""Reads smaller than this are charged to the throttle together, once they add up to it (or
when the file closes, or before a larger transfer), from when the first of them began. DCP
loads every tensor with ``torch.load`` of a slice of its file, whose unpickler reads a few bytes
at a time: some 2,300 reads, and as many ``seek`` and ``tell`` calls, per rank and load of the
validation's small model. Charged one by one, the emulation itself cost each rank 0.03-0.06 s
of CPU per load (8 ranks on 2 cores: 0.12 s of CPU against 0.06 s without the emulation),
which no real storage link costs. The time charged is the same."""


class ThrottledFile:
    """A file object of an fsspec filesystem whose reads and writes pass ``throttle``."""

    def __init__(self, raw: Any, throttle: Throttle) -> None:
        self._raw = raw
        self._throttle = throttle
        self._owed = 0  # bytes of small reads not charged yet (BATCH_BYTES)
        self._owed_since = 0.0

    def _charge(self, count: int, began: float) -> None:
        if count >= BATCH_BYTES:
            self.settle()
            self._throttle.account(count, began)
            return
        if not self._owed:
            self._owed_since = began
        self._owed += count
        if self._owed >= BATCH_BYTES:
            self.settle()

    def settle(self) -> None:
        """Charge the small reads not charged yet."""
        if self._owed:
            owed, self._owed = self._owed, 0
            self._throttle.account(owed, self._owed_since)

    def write(self, data: Any) -> int:
        self.settle()
        began = self._throttle.clock()
        written = self._raw.write(data)
        count = memoryview(data).nbytes if written is None else int(written)
        self._throttle.account(count, began)
        return count

    def read(self, size: int = -1) -> bytes:
        began = self._throttle.clock()
        data: bytes = self._raw.read(size)
        self._charge(len(data), began)
        return data

    def read1(self, size: int = -1) -> bytes:
        began = self._throttle.clock()
        data: bytes = self._raw.read1(size)
        self._charge(len(data), began)
        return data

    def readinto(self, buffer: Any) -> int:
        began = self._throttle.clock()
        count = int(self._raw.readinto(buffer) or 0)
        self._charge(count, began)
        return count

    def readinto1(self, buffer: Any) -> int:
        began = self._throttle.clock()
        count = int(self._raw.readinto1(buffer) or 0)
        self._charge(count, began)
        return count

    def readline(self, size: int = -1) -> bytes:
        began = self._throttle.clock()
        data: bytes = self._raw.readline(size)
        self._charge(len(data), began)
        return data

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def close(self) -> None:
        self.settle()
        self._raw.close()

    def __enter__(self) -> ThrottledFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # seek, tell, flush, fileno, ...
        value = getattr(self._raw, name)
        if callable(value):  # a bound method: found directly from now on (seek, tell)
            self.__dict__[name] = value
        return value


class ThrottledFileSystem:
    """An fsspec filesystem whose file contents pass ``throttle`` (``open``, ``pipe_file``,
    ``cat_file``); every other call (listing, rename, delete, metadata) goes straight to the
    wrapped filesystem, so it works for any protocol, local or ``s3://``."""

    def __init__(self, fs: Any, throttle: Throttle) -> None:
        self._fs = fs
        self.throttle = throttle

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> ThrottledFile:
        return ThrottledFile(self._fs.open(path, mode, *args, **kwargs), self.throttle)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> Any:
        began = self.throttle.clock()
        result = self._fs.pipe_file(path, value, *args, **kwargs)
        self.throttle.account(len(value), began)
        return result

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> bytes:
        began = self.throttle.clock()
        data: bytes = self._fs.cat_file(path, *args, **kwargs)
        self.throttle.account(len(data), began)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)
