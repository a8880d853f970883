"""One module per ``gemini-ckpt`` subcommand, imported only when that subcommand runs."""
