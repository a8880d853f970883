"""The scenario schema and its strict loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ScenarioError
from shared.scenario import Scenario
from shared.scenario_loader import apply_overrides, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SHIPPED = sorted(SCENARIOS.rglob("*.yaml"))


def test_there_are_shipped_scenarios() -> None:
    names = {path.stem for path in SHIPPED}
    assert {"quickstart", "gpt2-100b-p4d", "cluster-1000"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(SCENARIOS)))
def test_every_shipped_scenario_validates(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem


def test_defaults_fill_a_minimal_scenario() -> None:
    scenario = parse_scenario("name: tiny\n")
    assert scenario.cluster.nodes == 4
    assert scenario.checkpoint.strategy == "gemini"
    assert scenario.checkpoint.replicas == 2
    assert scenario.targets == ["sim"]


def problems_of(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source="s.yaml")
    assert str(caught.value).startswith("invalid scenario s.yaml")
    return caught.value.problems


def test_unknown_key_names_the_path_and_the_allowed_keys() -> None:
    [problem] = problems_of("name: x\ncluster:\n  nodez: 4\n")
    assert problem.startswith("cluster.nodez: unknown key")
    assert "nodes" in problem and "standby_nodes" in problem


def test_unknown_nested_key_in_a_list_item() -> None:
    [problem] = problems_of(
        "name: x\nfailures:\n  schedule:\n    - {kind: software, nodes: [0], at_iteration: 1,"
        " color: red}\n"
    )
    assert problem.startswith("failures.schedule.0.color: unknown key")
    assert "at_iteration" in problem


def test_wrong_type_is_not_coerced() -> None:
    [problem] = problems_of("name: x\ncluster: {nodes: '4'}\n")
    assert problem.startswith("cluster.nodes:") and "integer" in problem and "'4'" in problem


def test_out_of_range_value() -> None:
    [problem] = problems_of("name: x\ncheckpoint: {safety_factor: 1.5}\n")
    assert problem.startswith("checkpoint.safety_factor:") and "1" in problem


def test_bad_choice_lists_the_choices() -> None:
    [problem] = problems_of("name: x\ncheckpoint: {placement: star}\n")
    assert "checkpoint.placement" in problem and "'ring'" in problem


def test_cross_field_checks_name_their_fields() -> None:
    [problem] = problems_of("name: x\ncluster: {nodes: 3}\ncheckpoint: {replicas: 4}\n")
    assert problem.startswith("checkpoint.replicas:")
    text = "name: x\nfailures: {schedule: [{kind: hardware, nodes: [7], at_iteration: 2}]}\n"
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, faces=("real",))  # a simulation skips it, with a warning
    [problem] = caught.value.problems
    assert problem.startswith("failures.schedule.0.nodes:") and "0..3" in problem


def test_a_silent_heartbeat_is_probed_after_two_beats_unless_told_otherwise() -> None:
    assert parse_scenario("name: x\n").detection.silence_s == 1.0  # 2 x 0.5 s
    text = "name: x\ndetection: {heartbeat_interval_s: 0.2, silence_probe_s: 0.7}\n"
    assert parse_scenario(text).detection.silence_s == 0.7
    assert parse_scenario("name: x\ndetection: {lost_node: lease}\n").detection.silence_s is None
    [problem] = problems_of("name: x\ndetection: {silence_probe_s: 0.5}\n")
    assert "silence_probe_s (0.5) must exceed heartbeat_interval_s (0.5)" in problem


def test_several_problems_are_all_reported() -> None:
    problems = problems_of("cluster: {nodes: 0, bogus: 1}\n")
    assert len(problems) == 3
    assert any(p.startswith("name:") for p in problems)


def test_not_yaml_and_not_a_mapping() -> None:
    [problem] = problems_of("name: [unclosed\n")
    assert problem.startswith("not valid YAML: line")
    [problem] = problems_of("- a\n- b\n")
    assert "top level must be a mapping" in problem


def test_a_number_yaml_reads_as_text_and_an_empty_section_say_what_to_write() -> None:
    [problem] = problems_of("name: p\nmodel: {parameters: 40e9}\n")
    assert problem.endswith("(got '40e9'); YAML reads 40e9 as text: write 40.0e+9")
    assert parse_scenario("name: p\nmodel: {parameters: 4.0e+6}\n").model.parameters == 4e6
    [problem] = problems_of("name: p\ncluster:\n")
    assert problem.startswith("cluster: the section is empty; give its keys, or leave it out")


def test_a_failure_during_recovery_takes_no_time_of_its_own() -> None:
    """It strikes in the recovery of the entry before it: a time given would be ignored."""
    first = "{kind: software, nodes: [1], at_iteration: 2}"
    for when in ("at_time_s: 50, during: recovery", "at_iteration: 4, during: recovery"):
        second = f"{{kind: hardware, nodes: [2], {when}}}"
        text = f"name: r\ncluster: {{nodes: 4}}\nfailures: {{schedule: [{first}, {second}]}}"
        [problem] = problems_of(text)
        assert problem.startswith("failures.schedule.1: during: recovery strikes in the recovery")
    parse_scenario(text.replace("at_iteration: 4, ", ""))


def test_a_key_given_twice_is_refused() -> None:
    """PyYAML keeps the last of two equal keys: `nodes: 4` then `nodes: 8` ran with 8."""
    [problem] = problems_of("name: d\ncluster:\n  nodes: 4\n  nodes: 8\n")
    assert (
        problem == "not valid YAML: line 4, column 3: the key 'nodes' is given twice in one mapping"
    )
    # A list as a key is YAML's error, not an internal one.
    [problem] = problems_of("name: x\n[1, 2]: 3\n")
    assert problem == "not valid YAML: line 2, column 1: found an unhashable key"
    # The same key in two mappings is two keys.
    failure = "{kind: software, nodes: [1], at_iteration: 2}"
    text = f"name: d\ncluster: {{nodes: 4}}\nfailures: {{schedule: [{failure}]}}\n"
    assert parse_scenario(text).cluster.nodes == 4


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="file not found"):
        load_scenario(tmp_path / "absent.yaml")


def test_overrides_apply_and_are_validated() -> None:
    scenario = parse_scenario(
        "name: x\n", overrides=["cluster.nodes=8", "checkpoint.placement=ring", "seed=3"]
    )
    assert (scenario.cluster.nodes, scenario.checkpoint.placement, scenario.seed) == (8, "ring", 3)
    with pytest.raises(ScenarioError, match=r"cluster\.nodes"):
        parse_scenario("name: x\n", overrides=["cluster.nodes=zero"])
    with pytest.raises(ScenarioError, match=r"expected key\.path=value"):
        parse_scenario("name: x\n", overrides=["cluster.nodes"])


def test_override_into_a_list_item() -> None:
    text = "name: x\nfailures: {schedule: [{kind: software, nodes: [0], at_iteration: 1}]}\n"
    scenario = parse_scenario(text, overrides=["failures.schedule.0.at_iteration=9"])
    assert scenario.failures.schedule[0].at_iteration == 9
    with pytest.raises(ScenarioError, match="does not name a settable field"):
        apply_overrides(yaml.safe_load(text), ["failures.schedule.5.at_iteration=1"])


def test_parameter_count_derived_from_shape() -> None:
    scenario = parse_scenario("name: x\nmodel: {layers: 4, hidden: 128, heads: 4, context: 64}\n")
    expected = 4 * (12 * 128 * 128 + 13 * 128) + (256 + 64) * 128 + 2 * 128
    assert scenario.model.parameter_count == expected
    assert scenario.model.checkpoint_bytes == expected * 12


def test_domains_from_size() -> None:
    scenario = parse_scenario("name: x\ncluster: {nodes: 4, nodes_per_domain: 2}\n")
    assert scenario.cluster.domain_names() == ["d0", "d0", "d1", "d1"]


def test_failure_process_rates() -> None:
    scenario = parse_scenario(
        "name: x\ncluster: {nodes: 10}\nfailures: {process: {failures_per_day: 2}}\n"
    )
    assert scenario.failures.process is not None
    assert scenario.failures.process.node_mtbf_s(10) == pytest.approx(5 * 86_400)


# --- fuzzing: random documents never crash the loader with anything but ScenarioError ---

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
keys = st.sampled_from(
    [
        "name",
        "cluster",
        "nodes",
        "model",
        "checkpoint",
        "replicas",
        "failures",
        "schedule",
        "kind",
        "process",
        "storage",
        "url",
        "domains",
        "sim",
        "real",
        "x",
        "targets",
        "seed",
    ]
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


@given(documents)
def test_fuzzed_documents_raise_only_scenario_errors(document: object) -> None:
    text = yaml.safe_dump(document)
    try:
        scenario = parse_scenario(text)
    except ScenarioError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
    else:
        assert isinstance(scenario, Scenario)


@given(st.text(max_size=200))
def test_fuzzed_text_raises_only_scenario_errors(text: str) -> None:
    try:
        parse_scenario(text)
    except ScenarioError as error:
        assert error.problems


sections = st.fixed_dictionaries(
    {"name": st.just("fuzz")},
    optional={
        "cluster": st.dictionaries(
            st.sampled_from(["nodes", "standby_nodes", "cpu_memory_gb", "domains"]),
            scalars,
            max_size=3,
        ),
        "checkpoint": st.dictionaries(
            st.sampled_from(["replicas", "placement", "traffic", "buffer_mb", "sub_buffers"]),
            scalars,
            max_size=3,
        ),
        "failures": st.fixed_dictionaries(
            {},
            optional={
                "schedule": st.lists(
                    st.dictionaries(
                        st.sampled_from(["kind", "nodes", "at_iteration", "at_time_s"]),
                        scalars | st.lists(st.integers(-2, 9), max_size=3),
                        max_size=4,
                    ),
                    max_size=2,
                )
            },
        ),
    },
)


@given(sections)
def test_fuzzed_near_valid_documents(document: dict[str, object]) -> None:
    try:
        parse_scenario(yaml.safe_dump(document))
    except ScenarioError as error:
        assert error.problems


def test_docs_list_every_field_and_are_up_to_date() -> None:
    from shared.scenario_rules_doc import schema_markdown

    text = schema_markdown()
    assert "| `cluster.nodes` |" in text and "| `failures.schedule[].kind` |" in text
    assert "|  |" not in text, "every field needs a description"
    docs = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"
    assert docs.read_text() == text, "regenerate: gemini-ckpt validate --schema > docs/scenarios.md"
