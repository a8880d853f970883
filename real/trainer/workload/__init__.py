"""The training workload of the real harness: a small GPT decoder, its data and its trainer.

``model`` builds the decoder, ``data`` turns a text corpus into deterministic per-rank batches,
``schedule`` gives the learning rate as a pure function of the step, ``rng`` captures the random
number generators as tensors and JSON, and ``trainer`` ties them to DDP or FSDP2 and exposes
the training state that checkpointers save and restore.
"""
