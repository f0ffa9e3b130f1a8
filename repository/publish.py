"""Publish model versions into a model repository on disk, atomically, never overwriting.

Shared by the exporter (``bnserve.training``) and the server's in-place recalibration, so
both write versions the same way; it needs nothing but the standard library.

    REPOSITORY/NAME/1/model.onnx
                     /metadata.json
    REPOSITORY/NAME/2/...
    REPOSITORY/NAME/.staging-XXXX/    (being written; a reader skips names that are not
                                       positive integers)

A version is written into a staging folder inside REPOSITORY/NAME and renamed into place
in one step, so a server scanning the folder sees a version whole or not at all::

    with stage_version(repository, "digits") as staged:    # version = highest + 1
        write_files(staged.path, staged.version)
    staged.final_path                                       # REPOSITORY/digits/<version>

Leaving the block with an exception removes the staging folder and publishes nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bnserve.repository.layout import (
    CONFIG_FILE,
    MAX_VERSION,
    STAGING_PREFIX,
    model_name_problem,
    parse_version,
    version_folders,
)


class PublishError(Exception):
    """A version could not be published as asked."""


class InvalidVersionError(PublishError):
    """A version that is not a positive integer, or a model name that is not a plain name."""


class VersionExistsError(PublishError):
    """The version is already in the repository; published versions are never overwritten."""


def check_model_name(name: str) -> None:
    """A model name is one plain folder name (``bnserve.repository.layout``'s rule)."""
    problem = model_name_problem(name)
    if problem:
        raise InvalidVersionError(f"invalid model name {name[:64]!r}: it {problem}; use a "
                                  "plain folder name")


def list_versions(repository: Path | str, name: str) -> list[int]:
    """Published versions of ``name``, ascending; [] when the model has none."""
    check_model_name(name)
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return []
    return list(version_folders(model_dir).versions)


def next_version(repository: Path | str, name: str) -> int:
    """Highest published version + 1 (1 for a new model): versions only grow."""
    return max(list_versions(repository, name), default=0) + 1


def check_new_version(repository: Path | str, name: str, version: int) -> None:
    """Raise unless ``version`` is a positive integer not yet published for ``name``."""
    if (isinstance(version, bool) or not isinstance(version, int)
            or parse_version(str(version)) != version):
        raise InvalidVersionError(f"version must be a positive integer up to {MAX_VERSION}, "
                                  f"got {version!r}")
    taken = version in list_versions(repository, name)
    if taken or (Path(repository) / name / str(version)).exists():
        raise VersionExistsError(
            f"{name} version {version} already exists in {repository}; published versions "
            f"are never overwritten (next free version: {next_version(repository, name)})"
        )


@dataclass(frozen=True)
class StagedVersion:
    path: Path  # the staging folder to write into
    version: int
    final_path: Path  # where it appears once the block exits cleanly


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            with open(os.path.join(dirpath, filename), "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def stage_version(repository: Path | str, name: str,
                  version: int | None = None) -> Iterator[StagedVersion]:
    """Stage a new version of ``name``; publish it by renaming when the block exits cleanly.

    ``version`` defaults to ``next_version``. Raises ``VersionExistsError`` before the block
    when the version is taken, and after it when another writer published it meanwhile.
    """
    check_model_name(name)
    repository = Path(repository)
    if version is None:
        version = next_version(repository, name)
    check_new_version(repository, name, version)
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    final = model_dir / str(version)
    try:
        yield StagedVersion(path=staging, version=version, final_path=final)
        staging.chmod(0o755)  # mkdtemp makes it 0700; a server may run as another user
        _fsync_tree(staging)
        if final.exists():  # rename() would silently replace an empty folder
            raise VersionExistsError(f"{name} version {version} was published by another "
                                     f"writer while this one was staged")
        try:
            staging.rename(final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise VersionExistsError(f"{name} version {version} was published by another "
                                         "writer while this one was staged") from exc
            raise
        _fsync_dir(model_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def serving_note(model_dir: Path, version: int) -> str:
    """What a running server will do with a newly published version: no surprise replacement."""
    if (model_dir / CONFIG_FILE).exists():
        return (f"{model_dir.name}/{CONFIG_FILE}'s version_policy decides whether version "
                f"{version} serves")
    older = [v for v in version_folders(model_dir).versions if v < version]
    if not older:
        return (f"a server loads version {version} at its next poll (--model-control-mode "
                "poll) or start")
    return (f"with no {CONFIG_FILE}, a server serves the highest version: version {version} "
            "replaces the previous one at its next poll (--model-control-mode poll) or restart; "
            f"to pin a version: echo 'version_policy {{ specific {{ versions: [N] }} }}' > "
            f"{model_dir / CONFIG_FILE}")
