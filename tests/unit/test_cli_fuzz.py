"""Fuzzing the command line: whatever the input, a result or exit 2 with a message, never a
traceback, a hang or an internal error.

Generated scenarios (valid and near-valid) go through ``gemini-ckpt validate``; each one it
accepts must then simulate (exit 0, with a summary) or be refused by the simulator with exit 2
and a message naming the file (the storm guard). The generator keeps every scenario small
(at most 8 nodes, half a simulated hour, at most about 30,000 failures) so that
each example takes well under a second. Broken files, wrong types, huge numbers, YAML anchors
and aliases and missing files go through every command that reads a scenario.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gemini_ckpt.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def cli(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    assert code in allowed, err
    assert "Traceback" not in err and "internal error" not in err, err


# --- generated scenarios: validate, then a short simulation ----------------------------------

odd = st.sampled_from(["four", -1, True, None, [1], {"x": 1}])


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes a value of the wrong type or out of range."""
    return st.one_of(values, values, values, values, values, values, values, odd)


failure_entries = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["software", "hardware", "network", "root_agent", "group"]),
        "nodes": st.lists(st.integers(-1, 9), min_size=1, max_size=2, unique=True),
    },
    optional={
        "at_iteration": st.sampled_from([0, 3, 40, 10**7]),
        "at_time_s": st.sampled_from([0.0, 5.0, 600.0, 1e7]),
        "during": st.sampled_from(["training", "replication", "recovery"]),
    },
)

processes = st.fixed_dictionaries(
    {"failures_per_node_per_day": maybe(st.sampled_from([0.01, 5.0, 200.0, 2e4, 2e5]))},
    optional={
        "distribution": st.sampled_from(["exponential", "weibull"]),
        "weibull_shape": st.sampled_from([0.5, 1.0, 2.0]),
        "hardware_fraction": st.floats(0, 1),
        "domain_failures_per_day": st.sampled_from([0.0, 10.0]),
    },
)

scenarios = st.fixed_dictionaries(
    {
        "name": st.just("fuzz"),
        "targets": st.sampled_from([["sim"], ["sim", "real"]]),
        "sim": st.fixed_dictionaries({"duration_days": st.sampled_from([0.0005, 0.005, 0.02])}),
    },
    optional={
        "cluster": st.fixed_dictionaries(
            {"nodes": maybe(st.integers(1, 8))},
            optional={
                "accelerators_per_node": st.integers(1, 4),
                "standby_nodes": st.integers(0, 2),
                "cpu_memory_gb": st.sampled_from([0.001, 24.0]),
                "nodes_per_domain": st.integers(1, 3),
                "replacement_s": st.sampled_from([0.0, 300.0]),
                "single_host": st.booleans(),
            },
        ),
        "model": st.fixed_dictionaries(
            {}, optional={"parameters": st.sampled_from([1e3, 1e6, 1e9])}
        ),
        "training": st.fixed_dictionaries(
            {},
            optional={
                "iterations": st.integers(1, 50),
                "iteration_time_s": st.sampled_from([0.001, 0.5, 60.0]),
                "parallelism": st.sampled_from(["ddp", "zero3"]),
            },
        ),
        "checkpoint": st.fixed_dictionaries(
            {},
            optional={
                "strategy": st.sampled_from(["gemini", "persistent"]),
                "replicas": maybe(st.integers(1, 5)),
                "placement": st.sampled_from(["auto", "group", "ring", "mixed", "explicit"]),
                "traffic": st.sampled_from(["interleaved", "blocking"]),
                "buffer_mb": st.sampled_from([1e-6, 128.0]),
                "sub_buffers": st.integers(1, 8),
                "baseline_interval": st.sampled_from(
                    ["fixed", "strawman", "highfreq", "young", "daly"]
                ),
                "baseline_every_iterations": st.sampled_from([1, 7]),
                "persist_every_iterations": st.sampled_from([1, 10]),
            },
        ),
        "failures": st.fixed_dictionaries(
            {},
            optional={
                "schedule": st.lists(failure_entries, max_size=3),
                "process": processes,
            },
        ),
        "recovery": st.fixed_dictionaries(
            {},
            optional={
                "restart_s": st.sampled_from([0.0, 5.0, 300.0]),
                "stop_s": st.sampled_from([0.0, 1.0]),
            },
        ),
    },
)


@FUZZ
@given(scenarios)
def test_every_scenario_validate_accepts_simulates_or_exits_2(document: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="gemini-fuzz-") as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(document))
        code, _, err = cli(["validate", str(path)])
        assert_clean(code, err)
        if code == 2:
            assert f"invalid scenario {path}:" in err
            event("refused by validate")
            return
        out = Path(folder) / "out"
        code, _, err = cli(["sim", str(path), "--out", str(out)])
        assert_clean(code, err)
        if code == 0:
            assert (out / "summary.json").is_file() and (out / "events.jsonl").is_file()
            event("simulated")
        else:
            # Only the storm guard may refuse what validate accepted.
            event("stopped by the storm guard")
            assert f"invalid scenario {path}:" in err and "the simulation stopped" in err


override_keys = st.sampled_from(
    [
        "cluster.nodes",
        "cluster.domains",
        "checkpoint.replicas",
        "checkpoint.placement",
        "sim.duration_days",
        "failures.schedule",
        "failures.schedule.0.at_iteration",
        "failures.process.failures_per_node_per_day",
        "model",
        "nope.nope",
        "",
    ]
)
override_values = st.one_of(
    st.sampled_from(
        ["3", "-1", "1e400", ".inf", "[", "{a: 1}", "group", "&a [*a]", "99999999999999999999"]
    ),
    st.text(max_size=8),
)


@FUZZ
@given(st.lists(st.tuples(override_keys, override_values), min_size=1, max_size=3))
def test_overrides_never_crash_the_simulator(pairs: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory(prefix="gemini-fuzz-") as folder:
        args = ["sim", str(QUICKSTART), "--out", str(Path(folder) / "out")]
        for key, value in pairs:
            args += ["--set", f"{key}={value}"]
        code, _, err = cli(args)
        assert_clean(code, err)


# --- broken input to every command that reads a scenario ------------------------------------

LAUGHS = "name: lol\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True)
)
BROKEN: dict[str, str | bytes] = {
    "not-yaml.yaml": "name: [unclosed\ncluster: {nodes: 4\n",
    "tabs.yaml": "name: t\ncluster:\n\tnodes: 4\n",
    "list.yaml": "- name: a\n- name: b\n",
    "scalar.yaml": "just text\n",
    "empty.yaml": "",
    "binary.yaml": b"\x00\xff\xfe\x80name",
    "wrong-types.yaml": "name: w\ncluster: {nodes: '4', single_host: yes please}\nsim: 3\n",
    "bool-for-int.yaml": "name: b\ncluster: {nodes: true}\n",
    "huge-int.yaml": "name: h\ncluster: {nodes: 99999999999999999999999999999}\n",
    "huge-float.yaml": "name: h\ncluster: {cpu_memory_gb: 1.0e+400}\nsim: {duration_days: 1e400}\n",
    "nan.yaml": "name: n\ncluster: {network_bandwidth_gbit_s: .nan}\n",
    "negative.yaml": "name: n\ncluster: {nodes: -4}\ntraining: {iterations: -1}\n",
    "laughs.yaml": LAUGHS + "targets: *h\n",
    "self-alias.yaml": "name: s\ncluster: &c\n  domains: *c\n",
    "unknown-anchor.yaml": "name: u\ncluster: *nowhere\n",
    "unknown-keys.yaml": "name: u\nclustr: {nodes: 4}\ncluster: {nodez: 4}\n",
    "deep.yaml": "name: d\nx: " + "[" * 2000 + "]" * 2000 + "\n",
    "no-name.yaml": "cluster: {nodes: 4}\n",
}


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    paths = {}
    for name, content in BROKEN.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        paths[name] = path
    paths["missing.yaml"] = folder / "missing.yaml"
    paths["folder.yaml"] = folder / "folder.yaml"
    paths["folder.yaml"].mkdir()
    big = folder / "big.yaml"
    big.write_text("name: big\n" + "#" * (17 * 2**20) + "\n")
    paths["big.yaml"] = big
    return paths


@pytest.mark.parametrize("name", [*BROKEN, "missing.yaml", "folder.yaml", "big.yaml"])
@pytest.mark.parametrize("command", ["validate", "sim", "real"])
def test_broken_input_exits_2_with_a_message(
    broken_files: dict[str, Path], name: str, command: str, tmp_path: Path
) -> None:
    path = broken_files[name]
    args = [command, str(path)]
    if command != "validate":
        args += ["--out", str(tmp_path / "out")]
    code, _, err = cli(args)
    assert_clean(code, err, allowed=(2,))
    assert path.name in err
    assert not (tmp_path / "out").exists()


def test_anchors_and_aliases_that_make_sense_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "name: anchors\n"
        "x-failure: &crash {kind: software, nodes: [1]}\n"
        "failures:\n  schedule:\n"
        "    - {<<: *crash, at_iteration: 5}\n"
        "    - {<<: *crash, nodes: [2], at_iteration: 9}\n"
    )
    code, _, err = cli(["validate", str(path)])
    assert code == 2 and "x-failure: unknown key" in err  # the anchor's own key is checked
    path.write_text(
        "name: anchors\nfailures:\n  schedule:\n"
        "    - &crash {kind: software, nodes: [1], at_iteration: 5}\n"
        "    - {<<: *crash, nodes: [2], at_iteration: 9}\n"
    )
    code, out, err = cli(["validate", str(path)])
    assert code == 0 and out.startswith("ok"), err


def test_the_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """End to end, through the installed entry point: the example that used to crash."""
    import subprocess
    import sys

    path = tmp_path / "group.yaml"
    path.write_text("name: g\ncluster: {nodes: 4}\ncheckpoint: {replicas: 3, placement: group}\n")
    done = subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", "sim", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "checkpoint.placement: group placement needs replicas (3)" in done.stderr
