"""Reads a model repository: ``<root>/<model>/<version>/model.onnx`` (+ ``metadata.json``).

Versions are positive integers. Folders that are not (for instance a writer's temporary
``.staging-*`` folder, renamed into place only when complete) are ignored, and so is a
version folder without ``model.onnx``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    directory: Path
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE


def _versions(model_dir: Path) -> list[tuple[int, Path]]:
    """(version, folder) pairs, lowest first; "007" is version 7 in folder "007"."""
    found = []
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
            if (child / MODEL_FILE).is_file():
                found.append((int(child.name), child))
    return sorted(found)


def _metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def latest_versions(root: Path) -> list[ModelVersion]:
    """The highest complete version of every model under ``root``, sorted by name."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    models = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if model_dir.name.startswith("."):
            continue
        versions = _versions(model_dir)
        if not versions:
            log.warning("model folder %s has no <version>/%s; skipped", model_dir, MODEL_FILE)
            continue
        version, directory = versions[-1]
        models.append(ModelVersion(model_dir.name, version, directory, _metadata(directory)))
    return models
