"""The ``bnserve`` command: one entry point, a subcommand per job.

Each package contributes its own subcommands through ``register(subparsers)``; those
modules import only the standard library at the top, so ``bnserve --help`` works with the
base install. A subcommand names the extra it needs (``set_defaults(extra="server")``);
before its handler runs, the dispatcher checks that extra is installed and otherwise
says which ``pip install`` brings it, in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from bnserve.cli.extras import missing_for

# Modules that contribute subcommands, in the order --help lists them.
SUBCOMMAND_MODULES = (
    "bnserve.training.cli",
    "bnserve.server.cli",
    "bnserve.client.predict_cli",
    "bnserve.client.admin_cli",
    "bnserve.client.drift_cli",
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


def _needs_extra(command: str, extra: str, detail: str) -> int:
    print(f"bnserve {command}: needs the '{extra}' extra ({detail}): "
          f"pip install 'bnserve[{extra}]'", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    extra = getattr(args, "extra", None)
    if extra:
        missing = missing_for(extra)
        if missing:
            return _needs_extra(args.command, extra, f"{', '.join(missing)} not installed")
    try:
        return int(args.handler(args) or 0)
    except ModuleNotFoundError as exc:
        # The metadata check passed but an import still failed (a broken or partial install).
        if extra and exc.name and not exc.name.startswith("bnserve"):
            return _needs_extra(args.command, extra, f"cannot import {exc.name}")
        raise
