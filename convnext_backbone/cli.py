"""``convnext-backbone`` command line.

Every subcommand is one row of ``COMMANDS``: its name, a one-line help, and the module that
implements it. The module is imported only when its subcommand runs (so ``--help`` stays
fast and a broken optional dependency breaks only its own subcommand) and provides:

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int | None      # exit status; None means 0

To add a subcommand, add a row. Errors and Ctrl-C end every subcommand the same way
(``cli_errors.run_cli``): one line, exit status 2 for a user mistake and 130 for Ctrl-C.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from .cli_errors import run_cli


class Command(NamedTuple):
    name: str
    help: str
    module: str


COMMANDS: tuple[Command, ...] = (
    Command("doctor", "check the installed stack and say what is unavailable", "convnext_backbone.doctor"),
    Command("convert", "convert any supported ConvNeXt checkpoint to ours (safetensors + config.json)", "convnext_backbone.convert.command"),
    Command("export", "export multi-scale features of many images (resumable, torchrun-shardable)", "convnext_backbone.export.run"),
    Command("export-onnx", "export the backbone to ONNX (dynamic batch/height/width), verified in onnxruntime", "convnext_backbone.export.onnx_export"),
    Command("show", "picture of an image beside a PCA-to-RGB view of each feature level", "convnext_backbone.export.show"),
)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``selected``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="convnext-backbone",
        description="ConvNeXt V1/V2 backbone for Detectron2, MMSegmentation, MMDetection and transformers: convert checkpoints, export multi-scale features.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.set_defaults(_module=cmd.module)
        if cmd.name == selected:
            importlib.import_module(cmd.module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The subcommand is the first positional word (the top level has no options but -h).
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    # one line exactly (CONVNEXT_DEBUG=1 still shows the traceback)
    return run_cli(f"convnext-backbone {args.command}", lambda: importlib.import_module(args._module).run(args), debug_hint=False)


if __name__ == "__main__":
    sys.exit(main())
