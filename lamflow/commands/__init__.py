"""Subcommands of the ``lamflow`` CLI: argument parsing only, the work is in the library packages."""
