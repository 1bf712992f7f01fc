"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--config`` and repeated ``--set key=value`` (shared by all config-driven commands)."""
    p.add_argument(
        "--config",
        default=None,
        help="YAML config file, or the name of a shipped config (e.g. paper_resnet101); "
        "only keys that differ from the defaults",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=0.01 (repeatable)",
    )
