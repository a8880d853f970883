"""``python -m real.agent``: the same as ``gemini-ckpt agent``."""

import sys

from gemini_ckpt.commands.agent import command

sys.exit(command.main(standalone_mode=True))
