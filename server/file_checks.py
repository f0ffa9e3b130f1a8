"""What must hold of a version's files before onnxruntime opens any of them.

``read_checked_graph(version_dir)`` returns the graph (without external data) once:

- ``model.onnx`` (or the file named: the card's unfolded reference graph) is a regular file
  in the version folder: not a symlink, not a hard link;
- every external-data ``location`` the graph names is a relative path that resolves inside
  the version folder with no symlink on the way, to a regular file with one link
  (``st_nlink == 1``): a hard link could make a file outside the repository look like one
  inside it.

A failure is a ``ModelLoadError`` whose reason names the rule, never a path: the client
sees the reason, the log sees the path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import onnx

from bnserve.repository.graph import external_data_locations
from bnserve.repository.layout import MODEL_FILE
from bnserve.server.errors import ModelLoadError


def _check_plain_file(path: Path, what: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{what} is missing", f"{path} is missing") from None
    except OSError as exc:
        raise ModelLoadError(f"{what} cannot be read", f"{path}: {exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ModelLoadError(f"{what} is a symlink", f"{path} is a symlink")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{what} is not a regular file", f"{path} is not a regular file")
    if info.st_nlink != 1:
        raise ModelLoadError(f"{what} is a hard link",
                             f"{path} has {info.st_nlink} links; bnserve reads only files "
                             "with one link")


def _check_location(version_dir: Path, location: str) -> None:
    what = "external data file"
    if not location or "\x00" in location:
        raise ModelLoadError(f"an {what} location is empty or holds NUL")
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if PurePosixPath(location).is_absolute() or location.startswith(("/", "\\")) or ".." in parts:
        raise ModelLoadError(f"an {what} location leads out of the version folder",
                             f"external data location {location!r} in {version_dir}")
    current = version_dir
    for part in parts[:-1]:  # no symlinked folder on the way
        current = current / part
        if current.is_symlink() or not current.is_dir():
            raise ModelLoadError(f"an {what} location passes through a symlink or a non-folder",
                                 f"{current} (location {location!r})")
    _check_plain_file(version_dir.joinpath(*parts), what)
    resolved = version_dir.joinpath(*parts).resolve()
    if not resolved.is_relative_to(version_dir.resolve()):
        raise ModelLoadError(f"an {what} location leads out of the version folder",
                             f"{location!r} resolves to {resolved}")


def read_checked_graph(version_dir: Path, file_name: str = MODEL_FILE) -> onnx.ModelProto:
    """The graph of ``version_dir/file_name`` (external data not loaded), all checks passed.
    ``file_name`` is a plain name (the card's checked it), never a path."""
    model_path = version_dir / file_name
    _check_plain_file(model_path, file_name)
    try:
        graph = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends for a file that is not ONNX
        raise ModelLoadError(f"{file_name} is not a valid ONNX model",
                             f"{model_path}: {exc}") from exc
    for location in external_data_locations(graph):
        _check_location(version_dir, location)
    return graph
