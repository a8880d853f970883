"""``gemini-ckpt agent --kv URL``: a URL that is no store URL is a usage error (exit 2) naming
--kv and the parser's reason, before the agent starts."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from gemini_ckpt.cli import cli

QUICKSTART = str(Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml")


def test_bad_kv_scheme_is_a_usage_error(tmp_path: Path) -> None:
    args = ["agent", QUICKSTART, "--kv", "foo://h:1", "--node-id", "0", "--slot", "0"]
    args += ["--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args, env={"GEMINI_TOKEN": "secret"})
    assert result.exit_code == 2
    assert "--kv" in result.output and "scheme must be etcd://" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_strategy_and_a_contrary_set_are_a_usage_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    args = ["agent", QUICKSTART, "--kv", "etcd://127.0.0.1:9", "--node-id", "0", "--slot", "0"]
    args += ["--run-dir", str(tmp_path / "run"), "--strategy", "persistent"]
    args += ["--set", "checkpoint.strategy=gemini"]
    done = subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "GEMINI_TOKEN": "secret"},
    )
    assert done.returncode == 2, done.stderr
    assert "--strategy sets checkpoint.strategy=persistent" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
