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


def add_bad_image_argument(p: argparse.ArgumentParser) -> None:
    """``--on-bad-image {error,skip}``: the same flag on every command that decodes images."""
    p.add_argument(
        "--on-bad-image",
        choices=("error", "skip"),
        default=None,
        help="an image that is missing, unreadable, truncated or of another size than its annotation: "
        "stop naming the file (error), or leave it out and count it in the summary (skip); "
        "default: data.on_bad_image of the config (error)",
    )


def bad_image_overrides(args: argparse.Namespace) -> list[str]:
    """``args.overrides`` with ``--on-bad-image`` applied last (the flag wins over ``--set``)."""
    extra = [f"data.on_bad_image={args.on_bad_image}"] if getattr(args, "on_bad_image", None) else []
    return [*args.overrides, *extra]


def check_out_dir(args: argparse.Namespace, flag: str = "--out") -> None:
    """Fail before any work when ``args.out`` cannot be the output folder."""
    from sniper.outputs import check_output_dir

    check_output_dir(args.out, flag)
