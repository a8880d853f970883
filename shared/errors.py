"""The project's own exceptions, in one place.

Built-in exceptions (ValueError for bad arguments) are used wherever they fit; these few exist
because callers need to tell them apart: the CLI maps ``ScenarioError`` to exit code 2.
"""

from __future__ import annotations


class GeminiError(Exception):
    """Base class of the project's own errors."""


class ScenarioError(GeminiError):
    """A scenario file is missing, not YAML, or breaks the schema.

    Attributes:
        source: the file (or "<string>") the scenario came from.
        problems: one line per problem, each naming the field path and what is allowed.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        # The arguments themselves, so that the error can be rebuilt from ``args`` (SimPy does
        # that when it passes an error out of a process; pickling between processes too).
        super().__init__(source, self.problems)

    def __str__(self) -> str:
        lines = "\n".join(f"  {self.source}: {problem}" for problem in self.problems)
        return f"invalid scenario {self.source}:\n{lines}"
