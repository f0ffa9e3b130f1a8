"""A real bnserve server on port 0, running in a background thread with its own event loop.

One per test module keeps the suite fast; sync and asyncio clients both talk to it over
loopback. Start-up is synchronised with an Event, never a sleep.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from bnserve.server.app import InferenceServer, build_server
from bnserve.server.settings import ServerSettings


class ServerThread:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": 0})
        self.server: InferenceServer | None = None
        self._loop = asyncio.new_event_loop()
        self._started: Future[InferenceServer] = Future()
        self._thread = threading.Thread(target=self._run, name="bnserve-test-server", daemon=True)

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            try:
                server = build_server(self.settings)
                await server.start()
            except BaseException as exc:
                self._started.set_exception(exc)
                return
            self._stop_requested = asyncio.Event()
            self._started.set_result(server)
            await self._stop_requested.wait()
            await server.stop(grace=1.0, drain_window=0)

        self._loop.run_until_complete(main())

    def call(self, coroutine, timeout: float = 30.0):
        """Run a coroutine on the server's loop (e.g. to inspect or stop it)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.server = self._started.result(timeout=60)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.server is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the test server did not stop within 30 s"
        self._loop.close()
