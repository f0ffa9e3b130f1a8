"""The ``bnserve`` command: one entry point, a subcommand per job.

Each package contributes its own subcommands through ``register(subparsers)``; those
modules import only argparse at the top, so ``bnserve --help`` works with the base
install, and a subcommand whose extra is missing says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in the order --help lists them.
SUBCOMMAND_MODULES = (
    "bnserve.training.cli",
    "bnserve.server.cli",
    "bnserve.client.predict_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve",
        description="Train BatchNorm models, export them to ONNX, serve them over the "
        "Open Inference Protocol, and call them.",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ...)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except ModuleNotFoundError as exc:
        extra = getattr(args, "extra", None)
        if extra and exc.name and exc.name.split(".")[0] in {"torch", "onnxruntime", "onnx",
                                                            "sklearn", "pydantic_settings"}:
            print(f"bnserve {args.command}: needs `pip install 'bnserve[{extra}]'` ({exc})",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
