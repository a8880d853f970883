"""What every process of the harness shares: its environment (``env``), local processes and
ports (``processes``), and leaving a torch.distributed process group (``procgroup``)."""
