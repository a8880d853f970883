"""The launcher of the real harness: an emulated cluster, failure injection, results.

- :mod:`~real.launcher.cluster`: the cluster's processes (coordination store, one node agent
  per node, replacements from the cloud operator's orders), failing them, tearing them down;
- :mod:`~real.launcher.netns`: the ``netns`` mode (a network namespace per node, bridge, tc);
- :mod:`~real.launcher.progress`: follows the trainers' event files (iterations, checkpoints);
- :mod:`~real.launcher.injector`: the failure injector (one utility for the launcher and tests);
- :mod:`~real.launcher.results`: merged events, per-failure records, summary, the table;
- :mod:`~real.launcher.run`: ``gemini-ckpt real``, all of it in order.

See docs/cluster.md.
"""
