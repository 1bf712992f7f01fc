"""The ``sniper`` command line (see :mod:`sniper.cli.main` for the table of subcommands)."""

from sniper.cli.main import main

__all__ = ["main"]
