"""A user's ordinary mistakes with the `bnserve` command: one line on stderr naming the flag
or file and what was expected, exit status 1 (2 for usage errors), never a traceback; under
--log-level DEBUG a bug shows its traceback.

Every case is cheap: nothing trains, and a call that needs a server goes to an address where
none listens. File mistakes must be named before any connection is tried."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np
import pytest

from support.cli import CliResult, run_cli

DOWN = "127.0.0.1:1"  # nothing listens on port 1: "the server is not running"


def one_error_line(result: CliResult, code: int = 1) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.error_lines
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-errors")
    images = np.zeros((2, 1, 8, 8), np.float32)
    np.save(folder / "images.npy", images)
    (folder / "folder.npy").mkdir()
    np.savez(folder / "arrays.npz", x=images)
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "scalar.npy", np.float32(3))
    np.save(folder / "strings.npy", np.array([["a", "b"]]))
    (folder / "text.npy").write_text("not an array\n")
    np.save(folder / "table.npy", np.zeros((10, 4), np.float32))
    rng = np.random.default_rng(0)
    np.savez(folder / "five_rows.npz", x=rng.random((5, 4), np.float32), y=np.array([0, 1, 0, 1, 0]))
    (folder / "empty_run").mkdir()
    return folder


def unreadable(folder: Path) -> Path:
    locked = folder / "locked.npy"
    np.save(locked, np.zeros((2, 1, 8, 8), np.float32))
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads any file: one whose read fails instead
        if not Path("/proc/self/mem").exists():
            pytest.skip("no file this user cannot read")
        return Path("/proc/self/mem")  # opens, but reading offset 0 is an I/O error
    return locked


def predict(path: str | Path, *more: str) -> CliResult:
    return run_cli("predict", "--model", "digits", "--input", path, "--address", DOWN,
                   "--timeout", "5", *more)


@pytest.mark.parametrize(("name", "says"), [
    ("missing.npy", "no such file"),
    ("folder.npy", "is a directory"),
    ("arrays.npz", "is an .npz archive"),
    ("objects.npy", "holds Python objects"),
    ("scalar.npy", "holds a single value, not rows"),  # a shape no model takes
    ("strings.npy", "holds strings (dtype <U1)"),
    ("text.npy", "not a .npy file"),
])
def test_predict_names_a_wrong_input_file_before_connecting(files: Path, name: str, says: str):
    path = files / name
    line = one_error_line(predict(path))
    assert line.startswith(f"bnserve predict: error: --input {path}: {says}"), line
    assert "expected a .npy array of numbers, rows first, for model digits" in line
    assert DOWN not in line  # said before any connection


def test_predict_names_an_unreadable_input_file(files: Path):
    path = unreadable(files)
    line = one_error_line(predict(path))
    assert f"--input {path}: cannot read: " in line, line


def test_predict_names_an_output_folder_that_does_not_exist(files: Path):
    output = files / "no-such-folder" / "out.npy"
    line = one_error_line(predict(files / "images.npy", "--output", str(output)))
    assert f"--output {output}: folder {output.parent} does not exist" in line, line
    assert "expected a path in an existing folder" in line


def text_file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("args", "says"), [
    (("--text", "rain", "--text", " "), "--text ' ': empty; expected words to classify"),
    (("--text", ""), "--text '': empty; expected words to classify"),
    (("--text-file", "{folder}/missing.txt"),
     "--text-file {folder}/missing.txt: no such file; expected one text per line (UTF-8)"),
    (("--text-file", "{folder}/blank.txt"),
     "--text-file {folder}/blank.txt: line 2 is empty; expected one text per line (UTF-8), "
     "no blank line"),
    (("--text-file", "{folder}/latin1.txt"),
     "--text-file {folder}/latin1.txt: not UTF-8 text (byte 3); expected one text per line"),
    (("--text-file", "{folder}/empty.txt"),
     "--text-file {folder}/empty.txt: holds no lines; expected one text per line (UTF-8)"),
], ids=["blank-text", "empty-text", "missing-file", "blank-line", "not-utf8", "empty-file"])
def test_predict_names_a_wrong_text_before_connecting(tmp_path: Path, args, says):
    text_file(tmp_path, "blank.txt", b"the team won\n\nrain\n")
    text_file(tmp_path, "latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"))
    text_file(tmp_path, "empty.txt", b"")
    line = one_error_line(run_cli("predict", "--model", "text", "--address", DOWN,
                                  *(a.format(folder=tmp_path) for a in args)))
    assert line.startswith("bnserve predict: error: " + says.format(folder=tmp_path)), line
    assert DOWN not in line  # said before any connection


@pytest.mark.parametrize(("args", "says"), [
    (("--text", "rain", "--input", "x.npy"), "argument --input: not allowed with argument --text"),
    (("--text-file", "t.txt", "--text", "rain"),
     "argument --text: not allowed with argument --text-file"),
    ((), "one of the arguments --input --text --text-file is required"),
])
def test_predict_takes_one_source_of_rows(args, says):
    line = one_error_line(run_cli("predict", "--model", "text", *args), code=2)
    assert line == f"bnserve predict: error: {says} (see bnserve predict --help)"


@pytest.mark.parametrize("command", [
    ("predict", "--model", "digits", "--input", "{images}"),
    ("drift", "--model", "digits"),
    ("repository", "index"),
])
def test_no_server_at_the_address_is_one_line(files: Path, command: tuple[str, ...]):
    args = [arg.format(images=files / "images.npy") for arg in command]
    line = one_error_line(run_cli(*args, "--address", DOWN, "--timeout", "5"))
    assert f"--address {DOWN}: no server answered (UNAVAILABLE: " in line, line
    assert "expected a running `bnserve serve` there" in line


def test_health_of_a_server_that_is_not_running():
    result = run_cli("health", "--address", DOWN, "--timeout", "2")
    assert result.returncode == 1 and result.stdout.strip() == "not ready"
    assert "Traceback" not in result.stderr


def test_a_model_the_server_does_not_have_names_the_flag():
    # The words for the client's own error classes (a server answers NOT_FOUND with these).
    from bnserve.client import InvalidRequestError, ModelNotFoundError
    from bnserve.client.call_errors import explain_call_error

    unknown = ModelNotFoundError(grpc.StatusCode.NOT_FOUND, "unknown model 'nope'; served models: digits")
    assert explain_call_error(unknown, address="a:1", model="nope") == (
        "--model nope: unknown model 'nope'; served models: digits")
    version = ModelNotFoundError(grpc.StatusCode.NOT_FOUND, "model 'digits' has no version '7'")
    assert explain_call_error(version, address="a:1", model="digits", version="7") == (
        "--model digits --version 7: model 'digits' has no version '7'")
    shape = InvalidRequestError(grpc.StatusCode.INVALID_ARGUMENT, "shape [3, 5] does not fit")
    assert explain_call_error(shape, address="a:1", subject="--input x.npy") == (
        "--input x.npy: refused by the server: INVALID_ARGUMENT: shape [3, 5] does not fit")


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--lr", "-1", "argument --lr: must be a finite number > 0, got -1"),
    ("--lr", "0", "argument --lr: must be a finite number > 0, got 0"),
    ("--lr", "nan", "argument --lr: must be a finite number > 0, got nan"),
    ("--bn-eps", "0", "argument --bn-eps: must be a finite number > 0, got 0"),
    ("--bn-momentum", "1.5", "argument --bn-momentum: must be in [0, 1], got 1.5"),
    ("--bn-momentum", "-0.1", "argument --bn-momentum: must be in [0, 1], got -0.1"),
])
def test_train_hyperparameters_are_usage_errors(tmp_path: Path, flag: str, value: str, says: str):
    line = one_error_line(run_cli("train", "--run-dir", tmp_path / "run", f"{flag}={value}"), code=2)
    assert line == f"bnserve train: error: {says} (see bnserve train --help)"


@pytest.mark.parametrize(("name", "says"), [
    ("table.npy", "cannot read {path}: a single .npy array; expected an .npz archive with arrays x and y"),
    ("missing.npz", "cannot read {path}: no such file; expected an .npz archive with arrays x and y"),
    ("five_rows.npz", "{path}: 5 rows are too few for the train/validation split (20% held out, "
     "each of the 2 classes on both sides); it needs at least 6 rows"),
], ids=["npy-not-npz", "missing", "too-few-rows"])
def test_train_names_data_it_cannot_use(files: Path, tmp_path: Path, name: str, says: str):
    path = files / name
    line = one_error_line(run_cli("train", "--model", "mlp", "--data", path,
                                  "--run-dir", tmp_path / "run", "--dry-run"))
    assert line.startswith("bnserve train: error: " + says.format(path=path)), line
    assert not (tmp_path / "run").exists()


def test_train_batches_of_one_row_need_norm_none(tmp_path: Path):
    line = one_error_line(run_cli("train", "--run-dir", tmp_path / "run", "--batch-size", "1",
                                  "--dry-run"))
    assert line == ("bnserve train: error: invalid training configuration: batch_size "
                    "(--batch-size) must be >= 2 with BatchNorm "
                    "(one row has no batch statistics; --norm none trains on single rows), got 1")
    assert not (tmp_path / "run").exists()


def test_train_without_the_training_extra_says_how_to_install_it(tmp_path: Path):
    hide_torch = "import sys\nsys.modules['torch'] = None  # `import torch` now fails"
    line = one_error_line(run_cli("train", "--model", "mlp", "--run-dir", tmp_path / "run",
                                  before=hide_torch))
    assert line == ("bnserve train: needs the 'training' extra (cannot import torch): "
                    "pip install 'bnserve[training]'")


def test_export_names_a_run_folder_that_is_missing_or_has_no_checkpoint(files: Path, tmp_path: Path):
    missing = tmp_path / "no-run"
    line = one_error_line(run_cli("export", "--run-dir", missing, "--repository", tmp_path / "m",
                                  "--name", "digits"))
    assert line == (f"bnserve export: error: --run-dir {missing}: no such folder; expected a "
                    "run folder written by `bnserve train --run-dir` (with checkpoint.pt)")
    empty = files / "empty_run"
    line = one_error_line(run_cli("export", "--run-dir", empty, "--repository", tmp_path / "m",
                                  "--name", "digits"))
    assert f"no checkpoint at {empty / 'checkpoint.pt'}; train first" in line, line
    assert line.endswith("; nothing was written to the repository")


def test_serve_names_a_repository_that_does_not_exist(tmp_path: Path):
    missing = tmp_path / "missing"
    line = one_error_line(run_cli("serve", "--repository", missing, "--port", "0"))
    assert line.startswith(f"bnserve serve: error: --repository {missing} is not a directory; "
                           "expected a model repository folder"), line


def test_usage_errors_are_one_line_with_exit_status_2():
    line = one_error_line(run_cli("predict", "--input", "x.npy"), code=2)
    assert line == ("bnserve predict: error: the following arguments are required: --model "
                    "(see bnserve predict --help)")
    line = one_error_line(run_cli("--log-level", "LOUD", "health"), code=2)
    assert "argument --log-level: invalid choice: 'LOUD'" in line
    for flag, value, low in (("--batch-size", "0", 1), ("--classes", "-1", 0)):
        line = one_error_line(predict("x.npy", flag, value), code=2)
        assert line == (f"bnserve predict: error: argument {flag}: must be an integer >= {low}, "
                        f"got {value} (see bnserve predict --help)")


def test_version_is_the_installed_distributions():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bnserve {metadata.version('bnserve')}"


BROKEN_DRIFT = """
import bnserve.client.drift_cli as drift_cli
def broken(args):
    raise KeyError("layers")  # a bug, not the user's mistake
drift_cli.run = broken
"""


def test_a_bug_is_one_line_and_its_traceback_is_shown_under_debug():
    line = one_error_line(run_cli("drift", "--model", "digits", before=BROKEN_DRIFT))
    assert line == ("bnserve drift: internal error: KeyError: 'layers' "
                    "(run with --log-level DEBUG for the traceback)")
    debug = run_cli("--log-level", "DEBUG", "drift", "--model", "digits", before=BROKEN_DRIFT)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "in broken" in debug.stderr
    assert debug.error_lines[-1] == "bnserve drift: internal error: KeyError: 'layers'"


@pytest.mark.parametrize("command", [("predict", "--model", "digits", "--input"),
                                     ("drift", "--model", "digits"), ("repository", "index")],
                         ids=["predict", "drift", "repository"])
def test_connection_flags_that_cannot_be_used_are_one_line(files: Path, tmp_path: Path,
                                                           command: tuple[str, ...]):
    """Every client subcommand reads its TLS and token files the same way (security_cli)."""
    args = [*command, files / "images.npy"] if command[0] == "predict" else list(command)
    half = one_error_line(run_cli(*args, "--address", DOWN, "--tls-certificate", tmp_path / "c.pem"))
    assert half.endswith("error: --tls-certificate and --tls-private-key go together"), half
    if command[0] == "repository":  # its token is the admin token, read by the subcommand
        return
    missing = tmp_path / "no.token"
    line = one_error_line(run_cli(*args, "--address", DOWN, "--auth-token-file", missing))
    assert line.endswith(f"error: cannot read {missing}: No such file or directory"), line
    empty = tmp_path / "empty.token"
    empty.write_text("# no token yet\n")
    line = one_error_line(run_cli(*args, "--address", DOWN, "--auth-token-file", empty))
    assert line.endswith(f"error: the auth token file {empty} holds no token"), line
