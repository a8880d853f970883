"""The in-memory checkpoint engine (Gemini): node stores, capture, replication, restore.

Pieces, in the order a checkpoint meets them:

- :mod:`~real.engine.store` / :mod:`~real.engine.process`: the node store, a process owning the
  node's checkpoint memory in ``/dev/shm`` (slots: :mod:`~real.engine.shm`) and serving it over
  authenticated TCP (:mod:`~real.engine.protocol`, :mod:`~real.engine.receiver`,
  :mod:`~real.engine.client`);
- :mod:`~real.engine.capture`: ``save()`` copies the state into the in-progress slot;
- :mod:`~real.engine.replication` with :mod:`~real.engine.profiler`: checksums, the JSON
  manifest (:mod:`~real.engine.manifest`), chunks to the peers inside idle spans, commit;
- :mod:`~real.engine.restore`: one iteration for everyone, each shard verified, tier by tier;
- :mod:`~real.engine.checkpointer`: ``GeminiCheckpointer``, the ``real.engine.api.Checkpointer``.

See docs/engine.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exports load lazily: ``python -m real.engine.store`` must start without importing torch.
_EXPORTS = {
    "GeminiCheckpointer": "real.engine.checkpointer",
    "NodeStore": "real.engine.store",
    "ReplicationManager": "real.engine.replication",
    "StoreProcess": "real.engine.process",
    "make_token": "real.engine.protocol",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'real.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
