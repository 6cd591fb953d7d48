"""One module per ``lgrnet`` subcommand (see lgrnet.cli)."""
