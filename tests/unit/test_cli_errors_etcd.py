"""EtcdServer.start (real.coord.etcd_server) interrupted while etcd starts: the process and
its folder are gone before the error goes on. A stand-in executable plays etcd, so no etcd
binary is needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from real.coord import etcd_server
from real.coord.etcd_server import EtcdServer


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_start_interrupted_leaves_no_etcd(
    error: type[BaseException], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in = tmp_path / "etcd"
    stand_in.write_text("#!/bin/sh\nexec sleep 60\n")
    stand_in.chmod(0o755)
    monkeypatch.setattr(etcd_server, "etcd_binary", lambda: str(stand_in))
    server = EtcdServer(auth=False)
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def interrupted(client_url: str) -> bool:
        assert server._process is not None and server._data_dir is not None
        started.append((server._process, server._data_dir))
        raise error

    monkeypatch.setattr(server, "_answers", interrupted)
    with pytest.raises(error):
        server.start()
    [(process, data_dir)] = started
    assert process.poll() is not None, "etcd still runs"
    assert not data_dir.exists(), "etcd's folder is left behind"
    assert server._process is None and server._data_dir is None
