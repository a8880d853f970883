"""The trainer process: one per rank, started by a node agent (warm, as a spare) or torchrun.

- ``main``: the built-in trainer's entry (``python -m real.trainer.main``, ``gemini-ckpt train``);
- ``checkpointer``: the public ``Checkpointer`` any training script holds
  (``from gemini_ckpt import Checkpointer``);
- ``inprocess``: in-process recovery: attempts, parking after a failure, warm spares;
- ``training_state``: a model's and optimizer's state out and in (DDP, FSDP2, none);
- ``inject``: failure injection at named points of an iteration (tests, the emulated cluster);
- ``workload``: the built-in GPT workload: model, data, schedule, RNG, the model step.
"""
