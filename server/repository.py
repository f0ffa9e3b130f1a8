"""Reads a model repository from disk, trusting nothing in it (the layout is
``bnserve.repository``).

``ModelRepository.models()`` lists the model folders; ``snapshot(name)`` reads one model's
config text and version folders, each with a fingerprint of its files, so a poller can
tell a version that changed (or is still being copied) from one that did not. Nothing
here opens a model file; ``bnserve.server.loader`` checks the files before onnxruntime
sees them.

- A model name is checked before any path is built from it (``model_name_problem``).
- A model or version folder that is a symlink leading out of the repository is refused
  with a reason; one that stays inside is followed.
- A folder whose name is not a version ("007", "²", "latest") is ignored with one log
  line per name, never an error; a version folder without ``model.onnx`` is not a version
  yet (a copy in progress, say).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bnserve.repository.layout import MODEL_FILE, model_name_problem, version_folders
from bnserve.server.errors import InvalidInputError, ModelNotFoundError, quoted
from bnserve.server.model_config import read_config_text

log = logging.getLogger(__name__)

MAX_FINGERPRINT_ENTRIES = 10_000  # files per version folder looked at; more is refused
MAX_FINGERPRINT_DEPTH = 8


@dataclass(frozen=True)
class VersionOnDisk:
    version: int
    directory: Path
    fingerprint: tuple  # (relative path, size, mtime_ns, inode) of every file; () if unreadable
    problem: str | None = None  # set: this version must not be loaded, and why


@dataclass(frozen=True)
class ModelSnapshot:
    """One model folder as it is on disk at one moment."""

    name: str
    directory: Path
    config_text: bytes | None = None
    versions: dict[int, VersionOnDisk] = field(default_factory=dict)
    problem: str | None = None  # set: the whole model cannot be loaded, and why


def check_model_name(name: str) -> None:
    """InvalidInputError unless ``name`` is one plain folder name (checked before any I/O)."""
    problem = model_name_problem(name)
    if problem:
        raise InvalidInputError(f"model name {quoted(name)} {problem}; a model name is one plain "
                                "folder name")


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._reported: set[tuple[str, str]] = set()  # (model, entry) already logged

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")

    def _report_once(self, model: str, entry: str, message: str, *args: object) -> None:
        if (model, entry) not in self._reported:
            self._reported.add((model, entry))
            log.warning(message, *args)

    def models(self) -> list[str]:
        """Names of the model folders, sorted; other entries are skipped (odd names logged once)."""
        names = []
        for child in sorted(self.root.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            problem = model_name_problem(child.name)
            if problem:
                self._report_once("", child.name, "ignoring folder %r in the repository: as a "
                                  "model name it %s", child.name, problem)
                continue
            names.append(child.name)
        return names

    def model_dir(self, name: str) -> Path:
        """The folder of model ``name``; InvalidInputError for a bad name, NOT_FOUND if absent."""
        check_model_name(name)
        directory = self.root / name
        if not directory.is_dir():
            raise ModelNotFoundError(f"model {name!r} is not in the repository")
        return directory

    def _leads_out(self, path: Path, inside: Path) -> bool:
        if not path.is_symlink():
            return False
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling or a loop
            return True
        return not target.is_relative_to(inside.resolve())

    def snapshot(self, name: str) -> ModelSnapshot:
        directory = self.model_dir(name)
        if self._leads_out(directory, self.root):
            return ModelSnapshot(name, directory,
                                 problem="the model folder is a symlink that leads out of the "
                                 "repository")
        try:
            config_text = read_config_text(directory)
        except Exception as exc:  # ConfigError: a config.pbtxt we refuse to read
            return ModelSnapshot(name, directory, problem=str(exc))
        found = version_folders(directory)
        for ignored in found.ignored:
            self._report_once(name, ignored, "model %r: ignoring folder %r: a version folder "
                              "is a positive decimal number without leading zeros", name, ignored)
        versions = {}
        for version, path in found.versions.items():
            if not (path / MODEL_FILE).exists() and not (path / MODEL_FILE).is_symlink():
                continue  # not a version yet: a folder being filled
            problem = None
            if self._leads_out(path, self.root):
                problem = "the version folder is a symlink that leads out of the repository"
            fingerprint, trouble = _fingerprint(path)
            versions[version] = VersionOnDisk(version, path, fingerprint, problem or trouble)
        return ModelSnapshot(name, directory, config_text, versions)


def _fingerprint(directory: Path) -> tuple[tuple, str | None]:
    """(what the files of a version folder look like, a problem if they cannot be listed).

    Path, size, modification time and inode of every file, without following symlinks: a
    file still being written, or replaced, changes it.
    """
    entries = []
    root = str(directory)
    try:
        for dirpath, dirnames, filenames in os.walk(root):
            depth = dirpath[len(root):].count(os.sep)
            if depth >= MAX_FINGERPRINT_DEPTH:
                dirnames[:] = []
            for filename in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                info = os.lstat(os.path.join(dirpath, filename))
                relative = os.path.relpath(os.path.join(dirpath, filename), root)
                kind = "l" if stat.S_ISLNK(info.st_mode) else "f"
                entries.append((relative, kind, info.st_size, info.st_mtime_ns, info.st_ino))
                if len(entries) > MAX_FINGERPRINT_ENTRIES:
                    return (), f"the version folder holds over {MAX_FINGERPRINT_ENTRIES} files"
    except OSError:
        return (), "the version folder cannot be listed"
    return tuple(sorted(entries)), None
