"""The ``bnserve`` command: one dispatcher, owned by no package.

Each package contributes its own subcommands (``register(subparsers)`` in
``bnserve.training.cli``, ``bnserve.server.cli``, ``bnserve.client.predict_cli``), so the
thin client never imports the server or training to offer its own.
"""

from bnserve.cli.main import main

__all__ = ["main"]
