"""`bnserve serve` as a real subprocess on port 0; the bound port is read from its log line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

PORT_LINE = re.compile(r"serving \d+ model\(s\) .* on port (\d+)")


class SubprocessServer:
    def __init__(self, repository: Path, *extra_args: str, env: dict[str, str] | None = None):
        self.args = [
            sys.executable, "-m", "bnserve.cli", "serve",
            "--repository", str(repository), "--host", "127.0.0.1", "--port", "0", *extra_args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.port: int | None = None
        self._port_found = threading.Event()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            match = PORT_LINE.search(line)
            if match:
                self.port = int(match.group(1))
                self._port_found.set()
        self._port_found.set()  # the process ended: stop waiting

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> SubprocessServer:
        self.process = subprocess.Popen(
            self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=self.env
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        if not self._port_found.wait(timeout=60) or self.port is None:
            self.process.kill()
            raise RuntimeError(f"bnserve serve did not start:\n{self.log}")
        return self

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
