"""Strict loading of scenario YAML files.

``load_scenario`` reads a file, applies ``key.path=value`` overrides (the CLI's ``--set``), and
validates the document against ``shared.scenario.Scenario`` and the rules of
``shared.scenario_rules`` (those of every face, and those of the faces asked for). Whatever is
wrong, the caller gets one ``ScenarioError`` listing every problem as
``field.path: what is wrong (what is allowed)``, never a traceback from the YAML parser or the
validator.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from shared.errors import ScenarioError
from shared.scenario import Scenario
from shared.scenario_rules import Face, check_scenario, errors


def load_scenario(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    faces: Collection[Face] = (),
    with_targets: bool = False,
) -> Scenario:
    """Read, override and validate a scenario file.

    Args:
        path: the YAML file.
        overrides: ``dotted.key=value`` strings; the value is read as YAML (``8``, ``ring``,
            ``[0, 1]``).
        faces: the faces about to run it ("sim", "real"): their rules are errors too.
        with_targets: the rules of the faces the scenario's ``targets`` name apply too.

    Raises:
        ScenarioError: the file is missing or unreadable, is not YAML, or breaks the schema.
    """
    source = str(path)
    try:
        if not Path(path).is_file():  # a folder, a device, a pipe: never read endlessly
            what = "file not found" if not Path(path).exists() else "not a regular file"
            raise ScenarioError(source, [what])
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ScenarioError(
                source, [f"the file is larger than {MAX_FILE_BYTES // 2**20} MiB; not a scenario"]
            )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(source, [f"cannot read the file: {error}"]) from None
    return parse_scenario(
        text, source=source, overrides=overrides, faces=faces, with_targets=with_targets
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping: the plain one keeps
    the last silently, so `nodes: 4` then `nodes: 8` ran with 8 and no word. (PyYAML has no
    option for it; the check is a constructor of our own.)"""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
        except TypeError:  # a list or a mapping as a key: PyYAML's own error, with its place
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark
            ) from None
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_scenario(
    text: str,
    *,
    source: str = "<string>",
    overrides: Sequence[str] = (),
    faces: Collection[Face] = (),
    with_targets: bool = False,
) -> Scenario:
    """Validate a scenario given as YAML text; see ``load_scenario``."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ScenarioError(source, [f"not valid YAML: {where}{problem}"]) from None
    except RecursionError:
        raise ScenarioError(source, ["not valid YAML: nested too deeply"]) from None
    if document is None:
        document = {}
    _require_size(document, source)
    if not isinstance(document, dict):
        raise ScenarioError(
            source, [f"the top level must be a mapping of keys, got {_type_name(document)}"]
        )
    document = apply_overrides(document, overrides, source=source)
    if overrides:
        _require_size(document, source)
    return validate_document(document, source=source, faces=faces, with_targets=with_targets)


MAX_FILE_BYTES = 16 * 2**20
"""Largest scenario file read (an explicit placement of 100,000 nodes is a few MB)."""

MAX_DOCUMENT_VALUES = 2_000_000
"""Values a parsed document may hold once YAML aliases are expanded (each alias counts again):
a few aliases nested in each other expand to billions of values, which would stall the
validation ("billion laughs"); a self-referencing alias never ends."""


def _require_size(document: object, source: str) -> None:
    """Refuse a document with more than ``MAX_DOCUMENT_VALUES`` values, aliases expanded."""
    pending = [document]
    count = 0
    while pending:
        value = pending.pop()
        count += 1
        if count > MAX_DOCUMENT_VALUES:
            raise ScenarioError(
                source,
                [
                    f"the document holds more than {MAX_DOCUMENT_VALUES:,} values once its "
                    "YAML aliases (*name) are expanded, or an alias refers to itself; "
                    "write the values out"
                ],
            )
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def validate_document(
    document: Mapping[str, Any],
    *,
    source: str = "<string>",
    faces: Collection[Face] = (),
    with_targets: bool = False,
) -> Scenario:
    """Validate an already parsed document: its schema, then the rules of ``faces`` (and of
    its ``targets`` with ``with_targets``)."""
    try:
        scenario = Scenario.model_validate(document)
    except ValidationError as error:
        raise ScenarioError(source, [_describe(item) for item in error.errors()]) from None
    except RecursionError:
        raise ScenarioError(source, ["the document is nested too deeply"]) from None
    if with_targets:
        faces = {*faces, *scenario.targets}
    problems = errors(check_scenario(scenario, faces))
    if problems:
        raise ScenarioError(source, problems)
    return scenario


def apply_overrides(
    document: Mapping[str, Any], overrides: Iterable[str], *, source: str = "<string>"
) -> dict[str, Any]:
    """A copy of ``document`` with ``dotted.key=value`` overrides applied.

    Intermediate mappings are created as needed; list items are addressed by index
    (``failures.schedule.0.at_iteration=5``).
    """
    result: dict[str, Any] = _deep_copy(dict(document))
    problems: list[str] = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {override!r}: expected key.path=value")
            continue
        value = _value(raw)
        parts = key.strip().split(".")
        node: Any = result
        try:
            for part in parts[:-1]:
                node = _step(node, part, create=True)
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = value
            elif isinstance(node, dict):
                node[last] = value
            else:
                raise TypeError
        except (ValueError, IndexError, TypeError, KeyError):
            problems.append(f"override {override!r}: {key} does not name a settable field")
    if problems:
        raise ScenarioError(source, problems)
    return result


def with_strategy(
    overrides: Iterable[str], settings: Iterable[str], *, flag: str = "--strategy"
) -> tuple[str, ...]:
    """``overrides`` (``--set``) followed by the ``key=value`` settings a command's ``flag``
    stands for, in the same order for every command.

    Raises:
        ScenarioError: a ``--set`` gives one of those keys another value (the order of the
            two would otherwise decide, silently).
    """
    overrides, settings = tuple(overrides), tuple(settings)
    given: dict[str, Any] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if sep:
            given[key.strip()] = _value(raw)
    problems = []
    for setting in settings:
        key, _, raw = setting.partition("=")
        if key in given and given[key] != _value(raw):
            problems.append(
                f"{flag} sets {key}={raw.strip()}, --set gives {given[key]!r}: give one"
            )
    if problems:
        raise ScenarioError("the command line", problems)
    return (*overrides, *settings)


def _value(raw: str) -> Any:
    """An override's value as ``apply_overrides`` reads it."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _step(node: Any, part: str, *, create: bool) -> Any:
    if isinstance(node, list):
        return node[int(part)]
    if not isinstance(node, dict):
        raise TypeError(part)
    if part not in node or node[part] is None:
        if not create:
            raise KeyError(part)
        node[part] = {}
    return node[part]


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _describe(item: Mapping[str, Any]) -> str:
    """One line for one pydantic error: the field path, the problem, what is allowed."""
    location = tuple(part for part in item["loc"] if not _is_union_tag(part))
    path = ".".join(str(part) for part in location) or "(top level)"
    kind = item["type"]
    value = item.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(location[:-1])
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: required field is missing"
    message = str(item["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "value_error":
        # Cross-field checks on the whole scenario name their own field path first.
        return message if not location else f"{path}: {message}"
    if kind == "model_type" and value is None:  # `cluster:` with nothing under it
        return f"{path}: the section is empty; give its keys, or leave it out for the defaults"
    hint = ""
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()):
        # YAML 1.1, which PyYAML reads, takes 40e9 for text: a float needs a dot and a sign.
        mantissa, _, exponent = value.strip().lower().partition("e")
        signed = exponent if exponent[0] in "+-" else f"+{exponent}"
        hint = f"; YAML reads {value.strip()} as text: write {mantissa}.0e{signed}"
    return f"{path}: {message} (got {_short(value)}){hint}"


def _is_union_tag(part: object) -> bool:
    # pydantic adds the member type name ("list[str]", "function-after[...]") to union paths.
    return isinstance(part, str) and ("[" in part or part in {"int", "float", "str", "none"})


def _allowed_keys(location: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``location`` (list indices skipped)."""
    model: type[BaseModel] | None = Scenario
    for part in location:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_in(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None or get_args(annotation):
        for argument in get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
