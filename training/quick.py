"""A real exported BatchNorm model in seconds, for tests elsewhere (server, client, e2e).

    version_dir = build_digits_repository(tmp_path / "models")   # .../digits/1
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bnserve.training.config import TrainConfig
from bnserve.training.export import export_run
from bnserve.training.train import train


def build_digits_repository(repository_dir: Path | str, *, name: str = "digits",
                            epochs: int = 4, width: int = 16, seed: int = 0,
                            version: int | None = None,
                            include_checkpoint: bool = False) -> Path:
    """Train a small digits CNN and export it into ``repository_dir``; return the version folder.

    The defaults (4 epochs, width 16) train in about a second to ~98% validation accuracy;
    the export and its verification take a few more. The run folder is temporary.
    ``include_checkpoint``: publish checkpoint.pt too (no data rows), for the torch engine.
    """
    config = TrainConfig(epochs=epochs, width=width, seed=seed)
    with tempfile.TemporaryDirectory(prefix="bnserve-quick-run-") as run_dir:
        train(config, run_dir, progress=False)
        return export_run(run_dir, repository_dir, name, version,
                          include_checkpoint=include_checkpoint).path
