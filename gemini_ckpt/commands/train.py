"""``gemini-ckpt train``: the trainer's command, defined in ``real.trainer.main``."""

from real.trainer.main import command

__all__ = ["command"]
