"""Scenario schema: one YAML file describes a run for the simulator and the real harness.

A scenario names the cluster (nodes, accelerators, standby pool, bandwidths, storage), the model
and training settings, the checkpoint strategy (Gemini in-memory checkpoints or a persistent-
storage baseline), the failures to inject (an explicit schedule or a stochastic process), the
detection and recovery settings, and which faces (``sim``, ``real``) it targets.

Every field has a default and a unit in its name (``_s`` seconds, ``_gbit_s`` gigabits per
second, ``_gbyte_s`` gigabytes per second, ``_gb`` gigabytes, ``_mb`` megabytes). The schema is
strict: an unknown key, a value of the wrong type or out of range is an error that names the
field; ``shared.scenario_loader`` turns those errors into one message per field with the file.

The models are pydantic models (frozen, ``extra="forbid"``, strict types) so that the checks,
the field paths in errors and the defaults come from one well-kept library instead of a loader
of our own.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import costs

GBIT = 1e9 / 8  # bytes per second in one Gbit/s
GBYTE = 1e9

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class StorageConfig(_Strict):
    """Persistent storage shared by all nodes (NFS, FSx, S3)."""

    url: str = Field(
        "",
        description="fsspec URL of the persistent tier for the real harness; "
        "empty means a folder inside the run's output folder.",
    )
    bandwidth_gbit_s: PositiveFloat = Field(
        20.0, description="Aggregate bandwidth shared by all writers and readers, Gbit/s."
    )
    save_time_s: NonNegativeFloat | None = Field(
        None,
        description="Time to serialise one full checkpoint to storage (the paper's 81 s "
        "with torch.save); default: checkpoint bytes over the aggregate bandwidth.",
    )
    save_overhead_s: NonNegativeFloat = Field(
        0.0,
        description="Fixed cost of one save to storage beyond moving its bytes (planning, "
        "files, metadata), s: a save without save_time_s takes this plus checkpoint bytes "
        "over the aggregate bandwidth. gemini-ckpt calibrate measures it.",
    )
    emulate_bandwidth: bool = Field(
        False,
        description="Real harness: pace every byte the trainers write to or read from the "
        "persistent tier (DCP files, JSON sidecars, index) to bandwidth_gbit_s, each of the W "
        "ranks getting bandwidth_gbit_s / W (an application-level limit: the emulated "
        "cluster's storage is a local folder, which the page cache makes as fast as memory).",
    )


class ClusterConfig(_Strict):
    """The machines: nodes, their links, memory, and the standby pool."""

    nodes: int = Field(4, ge=1, le=100_000, description="Number of training nodes N.")
    accelerators_per_node: int = Field(1, ge=1, le=64, description="Trainer ranks per node.")
    standby_nodes: int = Field(2, ge=0, description="Healthy spare nodes kept ready.")
    replacement_s: NonNegativeFloat = Field(
        0.0, description="Time to bring a standby node into the job, s."
    )
    replacement_jitter_s: NonNegativeFloat = Field(
        0.0, description="Uniform extra replacement time in [0, jitter], s (paper: 4-7 min)."
    )
    provisioning_delay_s: NonNegativeFloat = Field(
        300.0, description="Time to provision a new node when the standby pool is empty, s."
    )
    cpu_memory_gb: PositiveFloat = Field(24.0, description="CPU memory per node, GB.")
    network_bandwidth_gbit_s: PositiveFloat = Field(
        16.0, description="Per-node network link, shared by training and checkpoint traffic."
    )
    network_alpha_s: NonNegativeFloat = Field(
        2e-5, description="Per-message latency of the network (alpha of the alpha-beta model)."
    )
    copy_bandwidth_gbyte_s: PositiveFloat = Field(
        6.0, description="Accelerator-to-CPU (or memory) copy bandwidth per node, GB/s."
    )
    domains: list[str] | None = Field(
        None, description="Failure domain (rack, switch) of each node; length must be nodes."
    )
    nodes_per_domain: int | None = Field(
        None, ge=1, description="Alternative to domains: consecutive nodes per domain."
    )
    single_host: bool = Field(
        False,
        description="Every node is a group of processes on one host (the real harness's "
        "emulated cluster): CPU-bound starts share its CPUs, so k replacement nodes starting "
        "together take k x recovery.node_start_s.",
    )
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _check_domains(self) -> Self:
        if self.domains is not None and self.nodes_per_domain is not None:
            raise ValueError("give either domains or nodes_per_domain, not both")
        if self.domains is not None and len(self.domains) != self.nodes:
            raise ValueError(
                f"domains lists {len(self.domains)} entries; it needs one per node ({self.nodes})"
            )
        return self

    def domain_names(self) -> list[str] | None:
        """The failure domain of every node, or None when no domains are configured."""
        if self.domains is not None:
            return list(self.domains)
        if self.nodes_per_domain is not None:
            return [f"d{i // self.nodes_per_domain}" for i in range(self.nodes)]
        return None

    @property
    def network_bytes_per_s(self) -> float:
        return self.network_bandwidth_gbit_s * GBIT

    @property
    def copy_bytes_per_s(self) -> float:
        return self.copy_bandwidth_gbyte_s * GBYTE

    @property
    def ranks(self) -> int:
        return self.nodes * self.accelerators_per_node


class ModelConfig(_Strict):
    """The model being trained: its size, and its shape for the real harness's GPT decoder."""

    name: str = Field("gpt-tiny", description="Label of the model in reports.")
    parameters: PositiveFloat | None = Field(
        None, description="Parameter count; default: derived from layers, hidden and vocab."
    )
    layers: int = Field(2, ge=1, le=512, description="Decoder layers (real harness).")
    hidden: int = Field(64, ge=8, le=65_536, description="Model width (real harness).")
    heads: int = Field(4, ge=1, le=512, description="Attention heads; must divide hidden.")
    context: int = Field(64, ge=2, le=131_072, description="Context length in tokens.")
    vocab_size: int = Field(256, ge=2, description="Vocabulary (the byte tokenizer has 256).")
    checkpoint_bytes_per_parameter: PositiveFloat = Field(
        12.0, description="Checkpoint bytes per parameter (fp32 master weights + Adam: 12)."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> Self:
        if self.hidden % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        return self

    @property
    def parameter_count(self) -> float:
        """Parameters: the given count, else a GPT decoder's count from its shape."""
        if self.parameters is not None:
            return self.parameters
        per_layer = 12 * self.hidden * self.hidden + 13 * self.hidden
        embeddings = (self.vocab_size + self.context) * self.hidden
        return float(self.layers * per_layer + embeddings + 2 * self.hidden)

    @property
    def checkpoint_bytes(self) -> float:
        """Bytes of one full checkpoint of the whole job (all shards together)."""
        return self.parameter_count * self.checkpoint_bytes_per_parameter


class PhaseConfig(_Strict):
    """One phase of a measured iteration profile."""

    kind: Literal["compute", "communication"] = Field(
        description="compute leaves the network idle; communication keeps it busy."
    )
    duration_s: PositiveFloat = Field(description="Length of the phase, s.")


class TrainingConfig(_Strict):
    """How the model trains: parallelism, batch, speed and the iteration profile."""

    parallelism: Literal["ddp", "zero3"] = Field(
        "ddp",
        description="ddp: replicated model (DistributedDataParallel); zero3: sharded "
        "model and optimizer (ZeRO-3 / FSDP2), about 1.5x the traffic of DDP.",
    )
    iterations: int = Field(40, ge=1, description="Iterations to train (real harness).")
    batch_size_per_rank: int = Field(4, ge=1, description="Sequences per rank per iteration.")
    learning_rate: PositiveFloat = Field(3e-3, description="Peak learning rate (AdamW).")
    warmup_iterations: int = Field(5, ge=0, description="Linear warm-up, then cosine decay.")
    iteration_time_s: PositiveFloat | None = Field(
        None, description="Measured iteration time; default: derived from FLOPs and traffic."
    )
    phases: list[PhaseConfig] | None = Field(
        None, description="Measured profile of one iteration; network idle spans follow."
    )
    phases_with_checkpoint: bool = Field(
        False,
        description="The phases add up to an iteration measured with Gemini's checkpoint "
        "running (a run profile): the simulator scales them so that its iteration, with "
        "the checkpoint traffic it adds itself, lasts as long.",
    )
    iteration_no_ckpt_s: PositiveFloat | None = Field(
        None,
        description="The iteration without checkpointing, measured, where the phases (or "
        "iteration_time_s) carry Gemini's checkpoint: on a host without accelerators its "
        "capture and replication take CPU from training, and a calibration's profile times "
        "the iteration with them. The reference of the checkpoint's overhead and of the "
        "ETTR's ideal under Gemini (the baseline's phases carry no checkpoint); a "
        "calibration sets it from the step without its save where it timed one (as the "
        "harness reports a run's: the replication still shares the CPU), else from the "
        "iteration without the engine, never above the iteration with it. Default: the "
        "iteration of the phases.",
    )
    accelerator_tflops: PositiveFloat = Field(312.0, description="Peak TFLOP/s per accelerator.")
    efficiency: Annotated[float, Field(gt=0, le=1)] = Field(
        0.4, description="Fraction of peak FLOP/s reached."
    )
    bucket_cap_mb: PositiveFloat = Field(
        1.0, description="DDP bucket size; fixed across restarts for reproducible results."
    )
    corpus: str | None = Field(
        None,
        description="Text corpus for the real harness: a file, a folder of text files, "
        "or a Hugging Face datasets cache folder; default: CPython's shipped documentation.",
    )
    entrypoint: list[str] | None = Field(
        None,
        min_length=1,
        description="The trainer the agents run, a program and its arguments, started with "
        "torchrun's environment (a first item ending in .py runs with the agents' Python; "
        "relative paths are taken from the agents' working directory, for gemini-ckpt real "
        "the one it was started in: give absolute ones on a cluster); "
        "it checkpoints with `from gemini_ckpt import Checkpointer`; training.iterations "
        "still gives the iterations it runs, against which scheduled failures are placed. "
        "Default: the built-in GPT trainer (python -m real.trainer.main).",
    )


# The old names a scenario may still use, with a DeprecationWarning.
RENAMED_CHECKPOINT_FIELDS = {
    "persistent_every_iterations": "baseline_every_iterations",
    "persistent_interval": "baseline_interval",
    "persistent_interval_s": "baseline_interval_s",
}


class CheckpointConfig(_Strict):
    """The checkpoint strategy: Gemini in memory, or persistent storage only (the baseline)."""

    strategy: Literal["gemini", "persistent"] = Field(
        "gemini",
        description="gemini: every iteration to CPU memory with m replicas; "
        "persistent: the baseline, checkpoints to persistent storage only.",
    )
    replicas: int = Field(2, ge=1, description="m: copies of each node's checkpoint, own included.")
    placement: Literal["auto", "group", "ring", "mixed", "explicit"] = Field(
        "auto",
        description="Who holds replicas: group, ring, mixed, explicit; auto: group "
        "when replicas divide nodes, else mixed. Domains (cluster) are honoured when possible.",
    )
    explicit_placement: list[list[int]] | None = Field(
        None, description="With placement: explicit, the holders of each node's checkpoint."
    )
    traffic: Literal["interleaved", "blocking"] = Field(
        "interleaved",
        description="interleaved: checkpoint traffic in the idle spans of "
        "training traffic; blocking: sent after the step while training waits.",
    )
    commit: Literal["on_arrival", "next_iteration_end"] = Field(
        "on_arrival",
        description="When an in-memory checkpoint counts for recovery. on_arrival: once its "
        "local copy is sealed and its last replica stored (two-phase commit). "
        "next_iteration_end: only when the next iteration ends, the paper's accounting "
        "(t_ckpt = T_iter for a checkpoint every iteration).",
    )
    local_slots: Literal[1, 2] = Field(
        2,
        description="Gemini: slots per rank for its own checkpoint in its node's memory. 2: a "
        "capture never overwrites the newest iteration every rank committed (4 bytes of memory "
        "per state byte at m=2). 1: 3 bytes per state byte at m=2; from the start of a capture "
        "until every rank has captured, a recovery reads the previous iteration from the "
        "peers' replicas instead of local memory. Needs commit: on_arrival.",
    )
    buffer_mb: PositiveFloat = Field(128.0, description="Staging buffer R for checkpoint chunks.")
    sub_buffers: int = Field(4, ge=1, description="p: the buffer is split into p sub-buffers.")
    safety_factor: Annotated[float, Field(gt=0, le=1)] = Field(
        0.9, description="mu: fraction of each idle span that checkpoint traffic may use."
    )
    profiling_iterations: int = Field(20, ge=1, description="Iterations profiled for idle spans.")
    persist_every_iterations: int | None = Field(
        None, ge=1, description="Gemini: background persistence every K iterations (none: never)."
    )
    baseline_interval: Literal["fixed", "strawman", "highfreq", "young", "daly"] = Field(
        "fixed",
        description="Baseline interval rule: fixed (baseline_every_iterations or "
        "baseline_interval_s), strawman (every 3 h), highfreq (every ceil(t_save/T_iter) "
        "iterations), young or daly (optimal for the failure rate).",
    )
    baseline_every_iterations: int | None = Field(
        None, ge=1, description="Baseline with a fixed interval: save every K iterations."
    )
    baseline_interval_s: float | None = Field(
        None, gt=0, description="Baseline with a fixed interval: save every this many s."
    )
    interval: Annotated[int, Field(ge=1)] | Literal["adaptive"] = Field(
        1,
        description="Gemini: checkpoint every this many iterations (1: every iteration), or "
        "adaptive: every k iterations, k the least whose idle spans carry the checkpoint's "
        "replicas at the measured replication throughput (shared.adaptive), re-chosen when "
        "the profile or the throughput changes; multiples of persist_every_iterations are "
        "always checkpointed.",
    )
    persist_interval: Literal["fixed", "young", "daly"] = Field(
        "fixed",
        description="Gemini: the background persistence interval. fixed: "
        "persist_every_iterations; young or daly: sqrt(2 t_save MTBF) (Daly's refinement), "
        "t_save the upload of one checkpoint to storage, the MTBF estimated from the failures "
        "observed so far with failures.process's rate as a prior worth one failure, "
        "re-chosen after every failure (shared.adaptive).",
    )
    compression: Literal["off", "on", "auto"] = Field(
        "off",
        description="Gemini: compress replication chunks losslessly (byte planes + zstd). "
        "auto: only when the link, not the CPU, is the bottleneck, judged from the codec "
        "measured on the real state (shared.compression); the simulator judges from "
        "compression_ratio and compression_gbyte_s.",
    )
    compression_ratio: PositiveFloat | None = Field(
        None,
        description="Simulator: measured raw over compressed bytes of the state "
        "(benchmarks/compression.py); none: incompressible (1).",
    )
    compression_gbyte_s: PositiveFloat | None = Field(
        None,
        description="Simulator: measured codec throughput, the slower of compression and "
        "decompression, raw GB/s; none: never the bottleneck.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        """Accept the fields' old names, with a warning (scenario files written before the
        rename keep working)."""
        if isinstance(data, dict):
            for old, new in RENAMED_CHECKPOINT_FIELDS.items():
                if old in data:
                    if new in data:
                        raise ValueError(f"{old} is the old name of {new}: give only {new}")
                    warnings.warn(
                        f"checkpoint.{old} is deprecated: it is now checkpoint.{new}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    data = {**data, new: data[old]}
                    del data[old]
        return data

    @field_validator("compression", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        # YAML 1.1 reads a bare on / off as a boolean.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    @field_validator("interval", mode="before")
    @classmethod
    def _check_interval(cls, value: object) -> object:
        ok = value == "adaptive" or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        )
        if not ok:
            raise ValueError(f"must be an integer >= 1 or 'adaptive', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.placement == "explicit" and self.explicit_placement is None:
            raise ValueError("placement: explicit needs explicit_placement")
        if self.explicit_placement is not None and self.placement != "explicit":
            raise ValueError("explicit_placement is only used with placement: explicit")
        if (
            self.strategy == "persistent"
            and self.baseline_interval == "fixed"
            and self.baseline_every_iterations is None
            and self.baseline_interval_s is None
        ):
            raise ValueError(
                "a fixed persistent interval needs baseline_every_iterations or baseline_interval_s"
            )
        if self.strategy == "persistent" and self.interval != 1:
            raise ValueError("interval applies to strategy gemini; the baseline has its own")
        if self.strategy == "persistent" and self.compression != "off":
            raise ValueError("compression applies to strategy gemini (replication)")
        if self.persist_interval != "fixed" and self.strategy != "gemini":
            raise ValueError(
                "persist_interval applies to strategy gemini; the baseline's is baseline_interval"
            )
        if self.persist_interval != "fixed" and self.persist_every_iterations is not None:
            raise ValueError(
                f"persist_interval: {self.persist_interval} chooses the interval; "
                "drop persist_every_iterations"
            )
        if self.local_slots == 1 and self.commit != "on_arrival":
            raise ValueError(
                "local_slots: 1 needs commit: on_arrival (with next_iteration_end the one slot "
                "is overwritten by the next capture before its checkpoint ever counts)"
            )
        if self.interval == "adaptive" and self.traffic != "interleaved":
            raise ValueError(
                "interval: adaptive needs traffic: interleaved (k is chosen from the idle spans)"
            )
        return self

    @property
    def buffer_bytes(self) -> int:
        return int(self.buffer_mb * 1e6)

    @property
    def persists_from_memory(self) -> bool:
        """Whether the in-memory engine also writes checkpoints to the persistent tier."""
        return self.persist_every_iterations is not None or self.persist_interval != "fixed"


FailureKindName = Literal["software", "hardware", "network", "root_agent", "group"]


class ScheduledFailure(_Strict):
    """One failure of the explicit schedule, at an iteration or at a time."""

    kind: FailureKindName = Field(
        description="software: a trainer crashes (CPU memory survives); hardware: the node is "
        "lost with its memory; network: the node's link goes down (lost); root_agent: the node "
        "running the root agent is lost; group: every node of one placement group is lost."
    )
    nodes: list[int] = Field(
        min_length=1, description="Nodes failing together (group: any node of the group)."
    )
    at_iteration: int | None = Field(
        None,
        ge=0,
        description="Fail the nodes named as this iteration ends: every rank has ended it, "
        "none has begun the next (the harness holds every rank there until it strikes).",
    )
    at_time_s: float | None = Field(
        None,
        ge=0,
        description="Fail this long after training began (the first iteration's start; "
        "the real harness's start-up before it is not counted), s.",
    )
    during: Literal["training", "replication", "recovery"] = Field(
        "training",
        description="replication: while a checkpoint is being replicated (with at_time_s, the "
        "first checkpoint after that time); recovery: while the previous failure is being "
        "recovered (then neither at_iteration nor at_time_s).",
    )

    @model_validator(mode="after")
    def _check_when(self) -> Self:
        if self.during == "recovery":
            if self.at_iteration is not None or self.at_time_s is not None:
                raise ValueError(
                    "during: recovery strikes in the recovery of the entry before it; give "
                    "neither at_iteration nor at_time_s"
                )
        elif (self.at_iteration is None) == (self.at_time_s is None):
            raise ValueError("give exactly one of at_iteration or at_time_s")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"nodes lists a node twice: {self.nodes}")
        return self


class FailureProcessConfig(_Strict):
    """A stochastic failure process per node (and per failure domain)."""

    distribution: Literal["exponential", "weibull"] = Field(
        "exponential", description="Time between a node's failures."
    )
    failures_per_node_per_day: PositiveFloat | None = Field(
        None, description="Rate per node; 1.5% of instances per day is 0.015."
    )
    failures_per_day: PositiveFloat | None = Field(
        None, description="Rate for the whole cluster, split evenly over nodes."
    )
    weibull_shape: PositiveFloat = Field(
        1.0, description="Weibull shape k (< 1: infant mortality); the mean stays 1/rate."
    )
    hardware_fraction: Fraction = Field(0.5, description="Share of failures losing the node.")
    domain_failures_per_day: NonNegativeFloat = Field(
        0.0, description="Rate at which a whole domain fails at once (per domain)."
    )

    @model_validator(mode="after")
    def _check_rate(self) -> Self:
        if (self.failures_per_node_per_day is None) == (self.failures_per_day is None):
            raise ValueError("give exactly one of failures_per_node_per_day or failures_per_day")
        return self

    def node_mtbf_s(self, nodes: int) -> float:
        """Mean time between failures of one node, s."""
        per_node = self.failures_per_node_per_day
        if per_node is None:
            assert self.failures_per_day is not None
            per_node = self.failures_per_day / nodes
        return 86_400.0 / per_node


class FailuresConfig(_Strict):
    """Failures to inject: an explicit schedule, a stochastic process, or both."""

    schedule: list[ScheduledFailure] = Field(
        default_factory=list, description="Explicit failures (see failures.schedule items)."
    )
    process: FailureProcessConfig | None = Field(
        None, description="Stochastic failures (see failures.process)."
    )


ROOT_POLL_S = 0.05
"""The root agent's failure detector reads the store at least this often, s (the harness's
root waits on a store watch between reads, ``real.agent.root.POLL_S``). What no write announces
is noticed only at one of these reads: a heartbeat key gone with its lease, a heartbeat
standing still, a silence probe that has ended. The simulator's rules for those detections
count the half period each such read adds on average (``sim.simulation.detection_delay_s``,
``silence_detection_s``)."""


class DetectionConfig(_Strict):
    """How failures are noticed."""

    heartbeat_interval_s: PositiveFloat = Field(0.5, description="Agent heartbeat period.")
    lease_timeout_s: PositiveFloat = Field(
        3.0, description="A node whose heartbeat lease expires is lost (hardware detection)."
    )
    exit_report_s: NonNegativeFloat = Field(
        0.05, description="Time for an agent to report a trainer exit (software detection)."
    )
    probe_timeout_s: PositiveFloat = Field(
        1.0,
        description="When a trainer reports a broken collective, the root probes every "
        "member's agent; one that refuses the connection, or does not answer within this, "
        "is lost at once (the lease stays the backstop for silent partitions).",
    )
    silence_probe_s: PositiveFloat | None = Field(
        None,
        description="A member whose heartbeat has not advanced for this long is probed at "
        "once (lost_node: probe): a node whose links went silent (a power loss, a partition) "
        "breaks no collective, its peers only wait, so without this only its lease would find "
        "it. One that does not answer within probe_timeout_s is lost; one that answers is "
        "probed again after as long a silence. Default: twice heartbeat_interval_s.",
    )
    collective_timeout_s: PositiveFloat = Field(
        120.0,
        description="A trainer's collective waiting this long for a peer fails (gloo cannot "
        "abort a collective whose peer hangs rather than dies: this bounds the wait).",
    )
    abort_timeout_s: PositiveFloat = Field(
        2.0,
        description="A trainer that has not left its failed attempt this long after its agent "
        "told it to is killed, and the node's warm spare takes its place.",
    )
    lost_node: Literal["probe", "lease"] = Field(
        "probe",
        description="How a lost node is found: probe (the survivors' next collective breaks "
        "and the root probes the agents: the time until that collective or "
        "collective_failure_s, whichever is longer, plus probe_detection_s; a node whose "
        "links went silent, or one lost while the job is stopped, is probed once its "
        "heartbeat stands still for silence_probe_s), or lease "
        "(its heartbeat lease runs out: lease_timeout_s - heartbeat_interval_s / 2 on "
        "average, seen at the root's next read of the store; the paper's system). "
        "Whichever comes first; the lease is the backstop. The loss of the root's own node "
        "waits for a new root either way.",
    )
    collective_failure_s: NonNegativeFloat = Field(
        0.03,
        description="From a node's loss until a survivor in a collective with it sees that "
        "collective fail: the lost processes' connections close only once they are torn down, "
        "s (lost_node: probe).",
    )
    probe_detection_s: NonNegativeFloat = Field(
        0.01,
        description="From a survivor's collective raising to the root's verdict on a lost "
        "node: the trainer tells its agent, the root reads it and probes every member's agent, "
        "s (lost_node: probe).",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.lease_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"lease_timeout_s ({self.lease_timeout_s}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s})"
            )
        if self.silence_probe_s is not None and self.silence_probe_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"silence_probe_s ({self.silence_probe_s}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s}): every beat would be late"
            )
        return self

    @property
    def silence_s(self) -> float | None:
        """How long a member's heartbeat may stand still before the root probes it; None when
        lost nodes are left to their lease (``lost_node: lease``)."""
        if self.lost_node == "lease":
            return None
        if self.silence_probe_s is not None:
            return self.silence_probe_s
        return 2 * self.heartbeat_interval_s


class RecoveryConfig(_Strict):
    """What a restart costs beyond detection and replacement, and when to give up."""

    max_restarts: int | None = Field(
        None,
        ge=0,
        description="Recoveries the job may go through before it gives up (torchrun's "
        "--max-restarts); none: unlimited.",
    )
    crash_loop_restarts: int = Field(
        3,
        ge=1,
        description="A rank whose trainer dies this many restarts in a row, each time within "
        "crash_loop_window_s of its restart, is in a crash loop: the job stops with that reason. "
        "So do this many restarts in a row from the iteration the one before restored, each "
        "after an attempt broken that soon, no node lost (an attempt loop).",
    )
    crash_loop_window_s: PositiveFloat = Field(
        30.0,
        description="How soon after a restart a crash counts toward a crash loop (or a "
        "broken attempt toward an attempt loop), s.",
    )

    start_timeout_s: PositiveFloat = Field(
        600.0,
        description="How long the root agent waits for a live agent on every slot before the "
        "job's first attempt; past it the job fails, naming the slots without one "
        "(torchrun's rendezvous waits 600 s too), s.",
    )
    stop_s: NonNegativeFloat = Field(
        1.0,
        description="From detection to the job stopped: the agents abort the attempt, the "
        "surviving trainers park (leave the failed process group, keep model and optimizer) "
        "and every live agent acknowledges, s.",
    )
    stop_parked_s: NonNegativeFloat | None = Field(
        None,
        description="The stop when the survivors parked already: a lost node found by a probe "
        "that the survivors' broken collectives started (they left the failed group before it "
        "was detected), so only the agents' acknowledgements remain, s. Default: stop_s.",
    )
    restart_s: NonNegativeFloat = Field(
        5.0,
        description="Restart begins to process group ready: survivors rejoin in process (a "
        "fresh group, DDP re-wrapped, the checkpoint engine rebuilt) and a warm spare "
        "(interpreter up, torch imported) takes each dead rank, s; no process start "
        "(the paper's cold restart: 253 s).",
    )
    warm_spares: int = Field(
        1,
        ge=1,
        le=8,
        description="Warm spare trainer processes each node agent keeps per local rank "
        "(interpreter up, torch and the checkpoint modules imported, waiting for an attempt; "
        "on a GPU no model on the device). A dead rank's process is replaced by one, and a new "
        "spare warms up in the background once the node trains again, below the trainers: "
        "seconds of CPU, which a busy host gives it slowly. 2 covers a rank that fails again "
        "before that new spare is warm, at the memory of one more trainer process per rank "
        "(the size check counts it). The simulator follows each node's spares "
        "(spare_warmup_s, spare_background_share).",
    )
    spare_warmup_s: NonNegativeFloat = Field(
        0.0,
        description="What a new spare takes to become warm with a CPU to itself (interpreter "
        "start, torch and the checkpoint modules imported, the trainer's objects built, a first "
        "optimizer step), s. A crash whose rank finds only a spare still warming waits for the "
        "rest of it (the spare is raised to the trainers' priority), and for all of it when "
        "no spare is left. 0: every spare is always warm. `gemini-ckpt calibrate` and `run` "
        "measure it by starting a spare of the scenario's trainer as an agent does.",
    )
    spare_background_share: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="How fast a spare warms in the background while the job trains, as a "
        "share of spare_warmup_s's pace: a spare warming below the trainers (niceness 19) gets "
        "only the CPU they leave idle; 1 on a node whose cores the trainers leave free (GPU "
        "training), near 0 where the ranks fill the host's cores (the emulated cluster). "
        "`gemini-ckpt calibrate` and `run` measure the CPU a process at that niceness gets "
        "beside the calibration's ranks.",
    )
    node_start_s: NonNegativeFloat = Field(
        0.0,
        description="Starting a cold replacement node's own software (agent, checkpoint store, "
        "warm trainers) once the machine is there, s: paid only when no warm standby agent "
        "(cluster.standby_nodes) is left; a warm one costs replacement_s + jitter alone.",
    )
    retrieval_overhead_s: NonNegativeFloat = Field(
        0.0,
        description="Fixed cost of every restore beyond moving bytes (connecting to the "
        "stores, agreeing on the plan, verifying checksums), s.",
    )
    peer_retrieval_overhead_s: NonNegativeFloat | None = Field(
        None,
        description="Fixed cost of a restore in which a node fetches its shard from a peer's "
        "store, beyond moving bytes (the connection to the holder's store, its request and "
        "the holder's reply, the replica's verification), s. Default: retrieval_overhead_s.",
    )
    persistent_retrieval_overhead_s: NonNegativeFloat | None = Field(
        None,
        description="Fixed cost of a restore from persistent storage beyond moving bytes "
        "(agreeing on the iteration, DCP's metadata, planning and collectives, deserialising "
        "into the live state), s. Default: retrieval_overhead_s.",
    )


class SimConfig(_Strict):
    """Simulator settings."""

    duration_days: Annotated[float, Field(gt=0, le=3650)] = Field(
        1.0, description="Simulated training time, days (at most ten years)."
    )
    replications: int = Field(1, ge=1, le=10_000, description="Seeds to run (CI over seeds).")


class RealConfig(_Strict):
    """Real-harness settings."""

    mode: Literal["local", "netns"] = Field(
        "local",
        description="local: every node's processes on loopback (no privileges); "
        "netns: every node a network namespace with tc bandwidth limits (root).",
    )
    store: Literal["embedded", "etcd"] = Field(
        "embedded", description="Key-value store: embedded (torch TCPStore) or etcd."
    )
    timeout_s: PositiveFloat = Field(900.0, description="Give up on the run after this long.")


Target = Literal["sim", "real"]


def _sim_only() -> list[Target]:
    return ["sim"]


class Scenario(_Strict):
    """A whole scenario: what to run, where, and which failures to survive."""

    name: str = Field(min_length=1, description="Short name; result folders carry it.")
    description: str = Field("", description="One line saying what the scenario shows.")
    targets: list[Target] = Field(
        default_factory=_sim_only, min_length=1, description="Faces that run it: sim, real."
    )
    seed: int = Field(0, ge=0, description="Seed of every random choice (data, failures).")
    cluster: ClusterConfig = ClusterConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    failures: FailuresConfig = FailuresConfig()
    detection: DetectionConfig = DetectionConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    sim: SimConfig = SimConfig()
    real: RealConfig = RealConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Self:
        nodes = self.cluster.nodes
        if self.checkpoint.replicas > nodes:
            raise ValueError(
                f"checkpoint.replicas: {self.checkpoint.replicas} cannot exceed cluster.nodes "
                f"({nodes})"
            )
        explicit = self.checkpoint.explicit_placement
        if explicit is not None and len(explicit) != nodes:
            raise ValueError(
                f"checkpoint.explicit_placement: lists {len(explicit)} nodes; "
                f"cluster.nodes is {nodes}"
            )
        # Scheduled failures on nodes that do not exist: an error for a real run, a warning
        # for a simulation (shared.scenario_rules.schedule_reach).
        return self

    @property
    def checkpoint_bytes_per_node(self) -> float:
        """Bytes each node checkpoints: its share of a ZeRO-3 job's state, or under DDP, where
        every rank holds the whole state, a full copy per rank
        (``shared.costs.node_checkpoint_bytes``)."""
        return costs.node_checkpoint_bytes(
            self.model.checkpoint_bytes,
            nodes=self.cluster.nodes,
            ranks_per_node=self.cluster.accelerators_per_node,
            parallelism=self.training.parallelism,
        )

    def replace(self, **changes: object) -> Scenario:
        """A copy with some top-level sections replaced, validated again."""
        data = self.model_dump()
        data.update(changes)
        return Scenario.model_validate(data, strict=False)
