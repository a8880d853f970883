"""``python -m real.agent``: the same as ``gemini-ckpt agent``."""

import sys

from real.agent.command import command

sys.exit(command.main(prog_name="python -m real.agent", standalone_mode=True))
