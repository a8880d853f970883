"""``gemini-ckpt agent``: the node agent's command, defined in ``real.agent.command``."""

from real.agent.command import command

__all__ = ["command"]
