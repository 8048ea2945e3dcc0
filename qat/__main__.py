"""Command line: ``python -m qat <command> [options]``.

Each command is a module with ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
status), registered in ``COMMANDS``; a new one (train, export, inspect, ...) is one more entry.
Every command module is imported to build the parser, so keep their module-level imports light
(import heavy dependencies inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

# name -> (module under qat, one-line help)
COMMANDS = {
    "weights": ("weight_error", "fake-quantize a model's weights and print the error per bit width"),
    "inspect": ("export.inspect", "show a GGUF file's metadata, tensors, bits per weight and size per component"),
    "export": ("export.cli", "write a model as GGUF (llama.cpp layout for llama models), mixed precision per plan"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qat",
        description="qat: quantization-aware training tools.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"qat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __package__)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip().split("\n\n")[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:
        # The reader went away (`python -m qat inspect F | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
