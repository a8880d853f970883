"""Every ``GEMINI_*`` environment variable the project reads or sets, named once.

Code reads ``os.environ[GEMINI_TOKEN]``, never the string, so that this file is the list.
Who sets each variable, and who reads it:

The job
    GEMINI_TOKEN               the job's secret (hex): node stores, the embedded kv store and
                               the persistent tier's metadata key derive from it. Set by the
                               launcher (or by you on a cluster); never on a command line.
    GEMINI_RUN_DIR             the run's folder: events, logs, final weights.
    GEMINI_RUN_T0              the run's start (``time.time()``); event times count from it.
    GEMINI_SCENARIO            the scenario file the agents run.
    GEMINI_SCENARIO_SET        ``--set`` overrides of that scenario, one per line.

A trainer under a node agent (set by ``real.agent.trainer_processes``)
    GEMINI_AGENT_FD            the socket to its agent (in-process recovery's control channel).
    GEMINI_NODE                the node slot the trainer's rank belongs to.
    GEMINI_STORE_ADDRS         the node stores' addresses, one per node slot.
    GEMINI_RESTORE_PLAN        the attempt's recovery plan (JSON; empty: nothing to restore).
    GEMINI_FAILURE             the index of the failure this attempt recovers from.
    GEMINI_RDZV_PREFIX         the attempt's key prefix in the rendezvous store (a restart never
                               reads a previous attempt's addresses).

Failure injection in a trainer (``real.trainer.inject``)
    GEMINI_CRASH_AT_ITERATION  crash at this iteration (unset: never).
    GEMINI_CRASH_RANK          only this rank crashes (unset: every rank).
    GEMINI_CRASH_PHASE         where in the iteration (after_step, after_save, ...).
    GEMINI_CRASH_MODE          kill (SIGKILL) or exit (``os._exit``).
    GEMINI_CRASH_FAILURE       the failure's index in the run, for the events.
    GEMINI_HOLD_DIR            the harness injector's hold points: a rank holds after capturing
                               the iteration a file there names (``real.trainer.inject``).

The engine (``real.engine``)
    GEMINI_RUNTIME_DIR         the node store daemon under torchrun: where discovery files live
                               (else XDG_RUNTIME_DIR, else /tmp).
    GEMINI_VERIFY_LOCAL        1: a local restore checks every block against the manifest before
                               copying (default off).

The coordination kv store (``real.coord``)
    GEMINI_ETCD_PASSWORD       etcd's password (else the job's token).
    GEMINI_ETCD_PASSWORD_FILE  a file holding it.
    GEMINI_ETCD_CA             the CA that signs etcd's certificate (etcds://).
    GEMINI_ETCD_CERT           a client certificate for etcd, with:
    GEMINI_ETCD_KEY            its key.
    GEMINI_SETUP_APT           ``./setup.sh`` installs etcd-server with apt when set to 1.

The persistent tier (``real.persistent``)
    GEMINI_PERSISTENT_KEY      the key of DCP metadata sidecars (one that outlives a job).
    GEMINI_STORAGE_OPTIONS     fsspec storage options (JSON), e.g. an S3 endpoint and keys.
    GEMINI_STORAGE_RATE        emulated storage bandwidth of this process, bytes per second.

The calibration (``benchmarks.calibrate``)
    GEMINI_CALIBRATE_SCRATCH   the folder its rank processes keep their temporary files in
                               (their parent's; it removes it however they end).

Tests only (``tests/integration/test_cluster.py``)
    GEMINI_CHAOS_S, GEMINI_CHAOS_SEED  the chaos test's length and seed.
"""

from __future__ import annotations

GEMINI_TOKEN = "GEMINI_TOKEN"
GEMINI_RUN_DIR = "GEMINI_RUN_DIR"
GEMINI_RUN_T0 = "GEMINI_RUN_T0"
GEMINI_SCENARIO = "GEMINI_SCENARIO"
GEMINI_SCENARIO_SET = "GEMINI_SCENARIO_SET"
GEMINI_AGENT_FD = "GEMINI_AGENT_FD"
GEMINI_NODE = "GEMINI_NODE"
GEMINI_STORE_ADDRS = "GEMINI_STORE_ADDRS"
GEMINI_RESTORE_PLAN = "GEMINI_RESTORE_PLAN"
GEMINI_FAILURE = "GEMINI_FAILURE"
GEMINI_RDZV_PREFIX = "GEMINI_RDZV_PREFIX"
GEMINI_CRASH_AT_ITERATION = "GEMINI_CRASH_AT_ITERATION"
GEMINI_CRASH_RANK = "GEMINI_CRASH_RANK"
GEMINI_CRASH_PHASE = "GEMINI_CRASH_PHASE"
GEMINI_CRASH_MODE = "GEMINI_CRASH_MODE"
GEMINI_CRASH_FAILURE = "GEMINI_CRASH_FAILURE"
GEMINI_HOLD_DIR = "GEMINI_HOLD_DIR"
GEMINI_RUNTIME_DIR = "GEMINI_RUNTIME_DIR"
GEMINI_VERIFY_LOCAL = "GEMINI_VERIFY_LOCAL"
GEMINI_ETCD_PASSWORD = "GEMINI_ETCD_PASSWORD"
GEMINI_ETCD_PASSWORD_FILE = "GEMINI_ETCD_PASSWORD_FILE"
GEMINI_ETCD_CA = "GEMINI_ETCD_CA"
GEMINI_ETCD_CERT = "GEMINI_ETCD_CERT"
GEMINI_ETCD_KEY = "GEMINI_ETCD_KEY"
GEMINI_SETUP_APT = "GEMINI_SETUP_APT"
GEMINI_PERSISTENT_KEY = "GEMINI_PERSISTENT_KEY"
GEMINI_STORAGE_OPTIONS = "GEMINI_STORAGE_OPTIONS"
GEMINI_STORAGE_RATE = "GEMINI_STORAGE_RATE"
GEMINI_CALIBRATE_SCRATCH = "GEMINI_CALIBRATE_SCRATCH"
GEMINI_CHAOS_S = "GEMINI_CHAOS_S"
GEMINI_CHAOS_SEED = "GEMINI_CHAOS_SEED"

ALL = tuple(value for name, value in sorted(globals().items()) if name.startswith("GEMINI_"))
