"""The repository writer: versions only grow, nothing is overwritten, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnserve.repository.layout import parse_version
from bnserve.repository.publish import (
    list_versions,
    next_version,
    stage_version,
)
from bnserve.training.errors import InvalidVersionError, VersionExistsError


def publish(repository: Path, version: int | None = None, text: str = "model") -> Path:
    with stage_version(repository, "m", version) as staged:
        (staged.path / "model.onnx").write_text(text)
    return staged.final_path


def test_empty_repository_starts_at_version_1(tmp_path: Path) -> None:
    assert list_versions(tmp_path, "m") == []
    assert next_version(tmp_path, "m") == 1
    assert publish(tmp_path) == tmp_path / "m" / "1"
    assert (tmp_path / "m" / "1" / "model.onnx").read_text() == "model"


def test_versions_only_grow(tmp_path: Path) -> None:
    publish(tmp_path)
    publish(tmp_path, version=5)
    assert publish(tmp_path) == tmp_path / "m" / "6"  # highest + 1, not the first gap
    assert list_versions(tmp_path, "m") == [1, 5, 6]


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    publish(tmp_path, text="first")
    with pytest.raises(VersionExistsError, match="version 1 already exists.*next free version: 2"):
        publish(tmp_path, version=1, text="second")
    assert (tmp_path / "m" / "1" / "model.onnx").read_text() == "first"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_version_published_while_staged_is_not_replaced(tmp_path: Path) -> None:
    with pytest.raises(VersionExistsError, match="published by another writer"):
        with stage_version(tmp_path, "m") as slow:  # picks version 1
            (slow.path / "model.onnx").write_text("slow")
            assert publish(tmp_path, text="fast") == slow.final_path  # also version 1
    assert (tmp_path / "m" / "1" / "model.onnx").read_text() == "fast"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_staging_is_invisible_until_published(tmp_path: Path) -> None:
    with stage_version(tmp_path, "m") as staged:
        (staged.path / "model.onnx").write_text("model")
        assert staged.path.parent == tmp_path / "m"  # same filesystem: rename is atomic
        assert list_versions(tmp_path, "m") == []
        assert not staged.final_path.exists()
    assert list_versions(tmp_path, "m") == [1]
    assert not staged.path.exists()


def test_failure_while_staging_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with stage_version(tmp_path, "m"):
            raise RuntimeError("boom")
    assert list((tmp_path / "m").iterdir()) == []  # no version, no staging leftovers
    assert list_versions(tmp_path, "m") == []


def test_only_plain_decimal_folders_are_versions(tmp_path: Path) -> None:
    for name in ("1", "3", "0", "007", "-2", "latest", ".staging-abc", "²"):
        (tmp_path / "m" / name).mkdir(parents=True)
    (tmp_path / "m" / "9").write_text("a file, not a version")
    assert list_versions(tmp_path, "m") == [1, 3]  # "007" is no version: the server skips it too
    assert next_version(tmp_path, "m") == 4
    with pytest.raises(VersionExistsError, match="version 3 already exists"):
        publish(tmp_path, version=3)
    names = ("12", "0", "01", "x", "²", "٧", "+7", " 7", "7 ", "9223372036854775807",
             "9223372036854775808")
    assert [parse_version(t) for t in names] == [12, None, None, None, None, None, None, None,
                                                 None, 2**63 - 1, None]


@pytest.mark.parametrize("version", [0, -1, True, 1.5])
def test_version_must_be_a_positive_integer(tmp_path: Path, version: object) -> None:
    with pytest.raises(InvalidVersionError, match="positive integer"):
        publish(tmp_path, version=version)  # type: ignore[arg-type]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", " m"])
def test_model_name_must_be_a_plain_folder_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidVersionError, match="invalid model name"):
        with stage_version(tmp_path, name):
            pass
    assert list(tmp_path.iterdir()) == []
