"""``bnserve serve`` with a model run that never finishes in time, for the shutdown tests.

    python stuck_server.py --repository R --host H --port P [--port-file F]

Runs the same code as ``bnserve serve`` (``serve_until_signalled`` then
``_exit_without_waiting_for_runs``; every other setting from ``BNSERVE_<FIELD>``), with a
loader that wraps each loaded version's session: a run whose first input's first value is
``STUCK_VALUE`` logs ``STUCK_LINE`` and sleeps ``STUCK_SECONDS`` before running. The
wrapper goes on after ``load_version`` returns, so the load-time runs (independence check,
warm-up) use the real session; a real ONNX graph cannot be made to block.

The argument layout is ``SubprocessServer``'s, so a test swaps only the command in front.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

STUCK_VALUE = 7777.0
STUCK_SECONDS = 60.0
STUCK_LINE = "stuck run started"

log = logging.getLogger("stuck_server")


class StuckSession:
    """The real session, except that a flagged run sleeps first (in the executor thread)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def run(self, feeds: dict) -> dict:
        first = next(iter(feeds.values()))
        if first.size and first.flat[0] == STUCK_VALUE:
            log.warning("%s: sleeping %.0fs", STUCK_LINE, STUCK_SECONDS)
            time.sleep(STUCK_SECONDS)
        return self._session.run(feeds)

    def __getattr__(self, name: str) -> Any:  # providers, inputs, outputs, ...
        return getattr(self._session, name)


def stuck_loader(*args: Any) -> Any:
    from bnserve.server.loader import load_version

    model = load_version(*args)
    model.session = StuckSession(model.session)  # ServedModel._run reads it on every run
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stuck_server")
    parser.add_argument("--repository", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from bnserve.server.cli import _exit_without_waiting_for_runs, serve_until_signalled
    from bnserve.server.settings import ServerSettings

    settings = ServerSettings(repository=args.repository, host=args.host, port=args.port)
    drained = asyncio.run(serve_until_signalled(settings, port_file=args.port_file,
                                                loader=stuck_loader))
    return _exit_without_waiting_for_runs(0 if drained else 1)


if __name__ == "__main__":
    sys.exit(main())
