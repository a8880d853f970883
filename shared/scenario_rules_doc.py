"""The scenario rules as Markdown, for docs/scenarios.md (after the field tables).

The limits in the text come from the rules' own constants (``shared.scenario_rules``,
``shared.storms``), so the page and the checks cannot drift apart;
``gemini-ckpt validate --schema`` writes the page.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from shared.failures import _MAX_EXPECTED_EVENTS
from shared.scenario import FailureProcessConfig, PhaseConfig, Scenario, ScheduledFailure
from shared.scenario_rules import (
    MAX_CHUNKS_PER_ITERATION,
    MAX_SIMULATED_FAILURES,
    MAX_SIMULATED_SAVES,
)
from shared.storms import STALL_FALSE_ALARM, stall_failure_limit


def _rule_rows() -> list[tuple[str, str, str, str]]:
    """(rule, field, faces, severity) of every rule, for the docs."""
    return [
        (
            "the placement can be built: group placement needs `replicas` to divide `nodes`; "
            "explicit holders are distinct nodes in range, the node's own first",
            "`checkpoint.placement`, `checkpoint.explicit_placement`",
            "all",
            "error",
        ),
        (
            "the staging buffer holds a byte per sub-buffer and cuts one iteration's checkpoint "
            f"copies into at most {MAX_CHUNKS_PER_ITERATION:,} chunks",
            "`checkpoint.buffer_mb`",
            "all",
            "error",
        ),
        (
            "`weibull_shape` other than 1 only with `distribution: weibull`; at most "
            f"{_MAX_EXPECTED_EVENTS:,} failures expected",
            "`failures.process`",
            "all",
            "error",
        ),
        (
            "checkpoints fit in the node's memory: Gemini keeps `local_slots` + 2 (m - 1) shards "
            "(2 m by default: two slots for its own, two per replica held; under DDP a node's "
            "shard is a full copy per rank), the baseline one serialised shard while it uploads "
            "(with `save_time_s`)",
            "`cluster.cpu_memory_gb`",
            "all",
            "error",
        ),
        (
            "`baseline_interval: young` or `daly` needs a failure process (the MTBF)",
            "`checkpoint.baseline_interval`",
            "all",
            "error",
        ),
        (
            f"at most {MAX_SIMULATED_FAILURES:,} process failures in the simulated duration",
            "`failures.process`",
            "sim",
            "error",
        ),
        ("no failure storm (below)", "`failures.process`", "sim", "error or warning"),
        (
            f"at most {MAX_SIMULATED_SAVES:,} persistent saves in the simulated duration",
            "`checkpoint.persist_every_iterations`, `checkpoint.persistent_*`",
            "sim",
            "error",
        ),
        (
            "a scheduled failure can fire: its `nodes` exist, `at_iteration` is below "
            "`training.iterations` (the last iteration ends the run), `at_time_s` below "
            "`real.timeout_s`; `during: recovery` is not on the first entry",
            "`failures.schedule.N`",
            "real",
            "error",
        ),
        (
            "scheduled failures do not lose every node of the job at once (a `group` of a "
            "cluster that is one placement group, every node named, or entries of one trigger "
            "that add up to all): the root agent runs on one of them and standby agents never "
            "lead, so nothing would recover it",
            "`failures.schedule.N`",
            "real",
            "error",
        ),
        (
            "the same for a simulation (which skips the failure): its `nodes` exist, "
            "`at_iteration` is reached in `sim.duration_days` (failure-free), `at_time_s` "
            "within it, `during: recovery` not first",
            "`failures.schedule.N`",
            "sim",
            "warning",
        ),
        (
            "the real harness injects only `failures.schedule`",
            "`failures.process`",
            "real",
            "warning",
        ),
        (
            "the emulated cluster fits this host (the size check, README)",
            "`cluster.nodes`",
            "real",
            "`gemini-ckpt real` refuses it without `--force`; `validate` warns",
        ),
    ]


def rules_markdown() -> str:
    """The rules as Markdown, for docs/scenarios.md (after the field tables)."""
    rows = "\n".join(f"| {' | '.join(row)} |" for row in _rule_rows())
    limits = ", ".join(str(stall_failure_limit(m, 0)) for m in (1, 1e3, 1e6))
    return f"""## Rules between fields

Each field is checked on its own by the tables above. These rules relate fields to each other
and to the face that runs the scenario (`shared/scenario_rules.py`); `gemini-ckpt validate`
applies those of every face the scenario `targets` (and of `--target FACE`), `gemini-ckpt sim`
those of `sim`, `gemini-ckpt real` those of `real`. Errors refuse the scenario (exit 2, one line
per problem: the file, the field path, what is allowed); warnings are printed and the run goes
on.

| rule | field | faces | severity |
| --- | --- | --- | --- |
{rows}

### Failure storms

A failure process fails the whole job at the rate lambda = N / node MTBF (plus
`domain_failures_per_day` per failure domain). Every recovery takes at least
R = detection + `recovery.restart_s` + `recovery.retrieval_overhead_s` (+ one iteration when
`training.iteration_time_s` or `training.phases` give it); detection is
`detection.exit_report_s` when the process has software failures, else
`detection.collective_failure_s + detection.probe_detection_s` (`lost_node: probe`) or
`lease_timeout_s - heartbeat_interval_s`.
With failures arriving at random (Poisson), a recovery finishes before the next failure with
probability exp(-lambda R), which is also about the best effective training time ratio (ETTR)
the job can reach.

- When lambda R > 1, failures arrive faster than recoveries finish. Of the
  M = lambda x `sim.duration_days` failures of the simulation, M exp(-lambda R) are then
  expected to be followed by a finished recovery: below one, training would make no progress at
  all and the scenario is refused (typically a rate in the wrong unit: 1.5% of nodes failing a
  day is `failures_per_node_per_day: 0.015`); otherwise it runs, with a warning giving
  exp(-lambda R).
- While it runs, the simulator stops with exit 2 as soon as k failures in a row strike with no
  training progress between them, naming the rate, the recovery time and how far it got. The
  bound k comes from the scenario: a run whose recoveries keep up (lambda R <= 1) sees a
  failure strike before progress with probability at most 1 - 1/e, so k such failures in a row
  happen somewhere among its M failures with probability at most M (1 - 1/e)^k; k is the
  smallest value keeping that below {STALL_FALSE_ALARM:g}, and never below the scheduled
  failures plus one (an explicit schedule may chain failures on purpose). For M = 1, 1,000
  and 1,000,000 expected failures k is {limits}.

A long simulation shows its progress on stderr (simulated time, failures so far, events per
second): a live line on a terminal, a printed line every 10 s otherwise.
"""


def schema_markdown() -> str:
    """Every scenario field as Markdown tables, one per section, then the rules between them
    (for docs/scenarios.md)."""
    lines = [
        "# Scenario fields",
        "",
        "Generated from `shared/scenario.py` by "
        "`gemini-ckpt validate --schema`; do not edit by hand.",
        "",
    ]
    _section_markdown(Scenario, "", lines)
    from shared.scenario_rules_doc import rules_markdown  # it imports this module's users

    return "\n".join(lines) + "\n" + rules_markdown()


def _section_markdown(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    title = prefix.rstrip(".") or "top level"
    doc = (model.__doc__ or "").strip().splitlines()[0]
    lines += [
        f"## {title}",
        "",
        doc,
        "",
        "| field | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((name, annotation))
            continue
        type_name = _type_text(annotation)
        if info.default_factory is not None:
            default = repr(info.default_factory())  # type: ignore[call-arg]
        elif info.is_required():
            default = "required"
        else:
            default = repr(info.default)
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | {type_name} | `{default}` | {description} |")
    lines.append("")
    for name, child in nested:
        _section_markdown(child, f"{prefix}{name}.", lines)
    if model is Scenario:
        _section_markdown(ScheduledFailure, "failures.schedule[].", lines)
        _section_markdown(FailureProcessConfig, "failures.process.", lines)
        _section_markdown(PhaseConfig, "training.phases[].", lines)


def _type_text(annotation: object) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
