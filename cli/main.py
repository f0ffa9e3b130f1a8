"""The ``bnserve`` command: one entry point, a subcommand per job.

Each package contributes its own subcommands through ``register(subparsers)``; those
modules import only the standard library at the top, so ``bnserve --help`` works with the
base install. A subcommand names the extra it needs (``set_defaults(extra="server")``);
before its handler runs, the dispatcher checks that extra is installed and otherwise
says which ``pip install`` brings it, in one line, without a traceback.

Every failure is one line on stderr (``bnserve.cli.errors``): a usage error exits 2, the
user's mistake or a bug exits 1; ``--log-level DEBUG`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib import metadata

from bnserve.cli.errors import report_failure
from bnserve.cli.extras import missing_for

# Modules that contribute subcommands, in the order --help lists them.
SUBCOMMAND_MODULES = (
    "bnserve.training.cli",
    "bnserve.server.cli",
    "bnserve.client.predict_cli",
    "bnserve.client.admin_cli",
    "bnserve.client.drift_cli",
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2. argparse would print the usage synopsis
    first, a dozen lines for ``train``; --help still has it. Subparsers are built with the
    parent's class, so every subcommand gets this."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def installed_version() -> str:
    try:
        return metadata.version("bnserve")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="bnserve",
        description="Train BatchNorm models, export them to ONNX, serve them over the "
        "Open Inference Protocol, and call them.",
    )
    parser.add_argument("--version", action="version", version=f"bnserve {installed_version()}")
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
        help="logging level (DEBUG also prints the traceback of a failure)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _needs_extra(command: str, extra: str, detail: str) -> int:
    print(f"bnserve {command}: needs the '{extra}' extra ({detail}): "
          f"pip install 'bnserve[{extra}]'", file=sys.stderr)
    return 1


def _command_name(args: argparse.Namespace) -> str:
    """``repository index`` for a command with actions, else ``predict``."""
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if isinstance(action, str) else args.command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    extra = getattr(args, "extra", None)
    if extra:
        missing = missing_for(extra)
        if missing:
            return _needs_extra(args.command, extra, f"{', '.join(missing)} not installed")
    try:
        return int(args.handler(args) or 0)
    except Exception as exc:  # the one place a failure becomes a line; KeyboardInterrupt passes
        # The metadata check passed but an import still failed (a broken or partial install).
        if (isinstance(exc, ModuleNotFoundError) and extra and exc.name
                and not exc.name.startswith("bnserve")):
            return _needs_extra(args.command, extra, f"cannot import {exc.name}")
        return report_failure(_command_name(args), exc, debug=args.log_level == "DEBUG")
