"""Real harness: PyTorch training with in-memory checkpoints, agents, failure injection."""
