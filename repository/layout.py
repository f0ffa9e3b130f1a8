"""Names and rules of the on-disk layout (see the package docstring). No I/O but listing."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

MODEL_FILE = "model.onnx"
# The served graph before BatchNorm folding: what the drift monitor and recalibration read.
REFERENCE_FILE = "unfolded.onnx"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.pbtxt"
STAGING_PREFIX = ".staging-"  # a writer's temporary version folder (bnserve export)
PLATFORM = "onnxruntime_onnx"  # Triton's platform string for ONNX models; tritonclient knows it
BACKEND = "onnxruntime"

MAX_VERSION = 2**63 - 1  # Triton's versions are int64 (version_policy.specific.versions)
MAX_NAME_BYTES = 255  # a file name on every common filesystem
_VERSION = re.compile(r"[1-9][0-9]*", re.ASCII)


def parse_version(text: str) -> int | None:
    """The version a folder name stands for, or None.

    Only plain ASCII decimal positive integers without leading zeros ("7", never "007",
    "+7", " 7", "²" or "٧") up to 2**63-1: one folder name per version, so two folders can
    never claim the same number.
    """
    if not _VERSION.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_VERSION else None


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model name (one plain folder name), or None when it can.

    Checked before any path is built from a name, so a name can never reach outside the
    repository: no separators, no "." or "..", nothing hidden (a writer's staging folders
    start with "."), no NUL or control characters, at most 255 bytes of UTF-8.
    """
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name.startswith("."):
        return "starts with '.'"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return "contains a control character"
    if name != name.strip():
        return "starts or ends with whitespace"
    return None


@dataclass(frozen=True)
class VersionFolders:
    """What a model folder holds: its versions, and the entries that are not versions."""

    versions: dict[int, Path] = field(default_factory=dict)  # version -> folder
    ignored: tuple[str, ...] = ()  # folder names that are not versions (never staging ones)


def version_folders(model_dir: Path) -> VersionFolders:
    """The version folders of ``model_dir`` (a folder per version; its content is not checked).

    A staging folder is skipped silently: it is a version being written. Other folders whose
    name is not a version are returned in ``ignored`` for the caller to report.
    """
    versions: dict[int, Path] = {}
    ignored = []
    for child in sorted(model_dir.iterdir()):
        if not child.is_dir():
            continue
        version = parse_version(child.name)
        if version is not None:
            versions[version] = child
        elif not child.name.startswith(STAGING_PREFIX):
            ignored.append(child.name)
    return VersionFolders(dict(sorted(versions.items())), tuple(ignored))
