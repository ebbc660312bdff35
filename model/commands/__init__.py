"""Command-line subcommands of the model package (loaded lazily by ``flows.cli``)."""
