"""What the benchmarks share: a bnserve server subprocess on 127.0.0.1, a model to serve."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PORT_LINE = re.compile(r"on port (\d+)")


def start_server(repository: Path, *args: str, env: dict[str, str] | None = None,
                 module: str = "bnserve.cli") -> tuple[subprocess.Popen, int]:
    """``bnserve serve`` on a free port of 127.0.0.1; returns the process and its port.

    ``env``/``module``: another build of bnserve (``bench/compare_revisions.py``).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module, "serve", "--repository", str(repository),
         "--host", "127.0.0.1", "--port", "0", *args],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    for line in process.stderr:
        match = PORT_LINE.search(line)
        if match:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, int(match.group(1))
    raise RuntimeError("server did not start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_repository(repository: Path, model: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """``repository`` if it holds ``model``; else a temporary one with ``model`` built by
    bench/bench_models.py when it is one of those (digits, resnet, mlp), or a quick digits
    CNN under that name."""
    if (repository / model).is_dir():
        return repository, None
    scratch = tempfile.TemporaryDirectory()
    from bench_models import MODELS, build_model

    if model in MODELS:
        build_model(Path(scratch.name), model)
    else:
        from bnserve.training.quick import build_digits_repository

        build_digits_repository(Path(scratch.name), name=model)
    print(f"no {model} model in {repository}: built one in {scratch.name}")
    return Path(scratch.name), scratch


def latest_version(repository: Path, model: str) -> int:
    from bnserve.repository.layout import version_folders

    return max(version_folders(repository / model).versions)


async def rows_per_second(address: str, model: str, x, requests: int, concurrency: int) -> float:
    """``requests`` calls of ``x`` from ``concurrency`` asyncio clients; rows answered per second."""
    import asyncio
    import time

    from bnserve.client import AsyncClient

    async with AsyncClient(address) as client:
        name = (await client.metadata(model)).inputs[0].name
        left = [requests]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                await client.infer(model, {name: x})

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests * len(x) / (time.perf_counter() - started)
