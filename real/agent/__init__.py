"""Node agents and the root agent of the real harness (docs/design.md section 4).

- :mod:`~real.agent.jobkeys`: the job's keys in the coordination store (the attempt record the
  root writes and the agents follow, acknowledgements, store addresses, injected failures);
- :mod:`~real.agent.trainer_processes`: the trainer processes of one node (torchrun-style
environment);
- :mod:`~real.agent.node_agent`: the node agent (``gemini-ckpt agent``);
- :mod:`~real.agent.root`: the root agent, run by whichever node agent wins the election.

See docs/cluster.md.
"""
