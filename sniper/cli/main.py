"""The ``sniper`` command line: one entry point, one module per subcommand in this package.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``: it parses,
calls into the library and prints. The table below is the complete list; there is no
registration by import side effect. Nothing outside ``sniper.cli`` imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sniper import __version__
from sniper.errors import SniperError
from sniper.runtime import configure_threads, tune_malloc

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-dataset": ("sniper.cli.make_dataset", "generate the embedded synthetic detection dataset"),
    "plan": ("sniper.cli.plan", "derive chip size, scales, anchors and schedule from a dataset"),
    "chips": ("sniper.cli.chips", "mine positive/negative chips from COCO annotations"),
    "export": ("sniper.cli.export", "write chips as images + COCO JSON for any detector"),
    "train": ("sniper.cli.train", "run the SNIPER training pipeline"),
    "predict": ("sniper.cli.predict", "multi-scale inference with Soft-NMS"),
    "evaluate": ("sniper.cli.evaluate", "COCO AP or proposal recall"),
    "demo": ("sniper.cli.demo", "end-to-end demo on the synthetic dataset"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (the others may pull in torch)."""
    parser = argparse.ArgumentParser(prog="sniper", description="SNIPER: efficient multi-scale training.")
    parser.add_argument("--version", action="version", version=f"sniper {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # First, before any command module can import torch: thread counts for the cores this
    # process may use and a passive OpenMP wait, so two jobs on one machine do not spin against
    # each other (docs/performance.md; SNIPER_THREADS=N|off overrides).
    configure_threads()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    tune_malloc()
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        message, code = describe_error(e)
        print(f"sniper {args.command}: {message}", file=sys.stderr)
        return code


# Exceptions that user input can cause, besides ``SniperError``: file system problems
# (the OSError family, which also holds PIL's UnidentifiedImageError and pyarrow's
# ArrowIOError) and malformed values (ValueError: JSON and Unicode decode errors, pyarrow's
# ArrowInvalid, bad numbers). Their library messages are kept, made one line, and named by
# file where the exception carries one.
def describe_error(e: BaseException) -> tuple[str, int]:
    """``(one-line message, exit code)`` for an exception that reached the command line:
    2 for bad input or configuration, 1 for an internal error (a bug: the message says so)."""
    if isinstance(e, SniperError):
        return f"error: {e}", 2
    if isinstance(e, OSError):
        if e.filename is not None and e.strerror:
            return f"error: {e.filename}: {e.strerror}", 2
        return f"error: {_first_line(e)}", 2
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return (
            "error: out of memory; lower train.batch_size or infer.batch_size, or data.max_image_pixels "
            f"({_first_line(e)})",
            2,
        )
    if isinstance(e, ValueError) or type(e).__module__.split(".")[0] in ("yaml", "PIL"):
        return f"error: {_first_line(e)}", 2
    return (
        f"internal error: {type(e).__name__}: {_first_line(e)} "
        "(a bug in sniper: rerun with --debug for the traceback and please report it)",
        1,
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
