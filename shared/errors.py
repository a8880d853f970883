"""The project's own exceptions, in one place.

Built-in exceptions (ValueError for bad arguments) are used wherever they fit; the project's own
errors all derive from ``GeminiError`` and live here, whichever layer raises them, so that
callers can tell them apart (the CLI maps ``ScenarioError`` to exit code 2). Each also keeps
the built-in base its callers catch (``ValueError``, ``ConnectionError``, ``RuntimeError``).
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


class HostCapacityError(GeminiError):
    """A run of the emulated cluster would not fit on this host (the CLI exits 2).

    Attributes:
        scenario: the scenario's name.
        estimate: what the run needs, in words.
        problems: one line per limit exceeded, with the need and the limit.
    """

    def __init__(self, scenario: str, estimate: str, problems: list[str]) -> None:
        self.scenario = scenario
        self.estimate = estimate
        self.problems = list(problems)
        super().__init__(scenario, estimate, self.problems)

    def __str__(self) -> str:
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        return (
            f"scenario {self.scenario} does not fit on this host:\n{lines}\n"
            f"  estimate: {self.estimate}\n"
            "  run fewer or smaller nodes (--set cluster.nodes=4), or start it anyway with "
            "--force"
        )


class KVError(GeminiError):
    """The coordination kv store (etcd, or the embedded one) failed or refused an operation."""


class NodeStoreError(GeminiError, RuntimeError):
    """A node store (the node's checkpoint memory) refused a request, or replication was
    abandoned."""


class VerificationError(GeminiError, ValueError):
    """Checkpoint bytes or manifest do not match their checksums (corruption, torn write)."""


class ProtocolError(GeminiError, ConnectionError):
    """The peer broke the wire format or failed authentication."""


class TokenRefused(ProtocolError):
    """The two ends of a connection do not share the job's secret: the server refused our
    proof, or could not prove it knows the token."""


class CredentialsRefused(KVError):
    """The coordination store refused this client's credentials (a wrong ``GEMINI_TOKEN``, etcd
    user or password): a setting to correct, not a failure to retry (the CLI exits 2)."""


class ReadCancelled(GeminiError):
    """A read of a checkpoint out of its slot stopped between two tensors because the job
    stopped (a failure): nothing it read is used."""


class MetadataVerificationError(GeminiError, ValueError):
    """A persistent checkpoint's DCP metadata has no valid keyed sidecar: it is not unpickled."""


class AttemptAborted(GeminiError, RuntimeError):
    """The agent stopped this attempt (a failure somewhere in the job); the trainer parks."""


class PeerLost(GeminiError, ConnectionError):
    """A collective of this attempt failed (a peer is gone); the trainer parks.

    Raised at the training thread's next abort check once a collective it launched failed,
    so a survivor leaves without computing the rest of its forward or backward pass first.
    """


class RunFolderError(GeminiError, ValueError):
    """A run folder is missing or does not hold a valid run (the message names the file)."""


class TrainerStartError(GeminiError, RuntimeError):
    """A node agent's trainer processes ended before they were ready (a wrong
    ``training.entrypoint``, an import error in the script), or never got ready: the message
    names the trainer, its exit and the end of its log."""


class AgentIdentityError(GeminiError):
    """A node agent started with the node id or slot of a live agent of the job, or with a
    scenario other than the job's."""


class CheckpointMismatchError(GeminiError):
    """A checkpoint this job cannot restore however often it tries (written by a job of
    another world size): raised at once, not retried as a tier that failed."""
