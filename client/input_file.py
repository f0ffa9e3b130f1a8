"""What ``bnserve predict`` sends and the file it saves the answer to, checked before any
call: a wrong path or file is named in one line without waiting on a server.

    --input      one .npy array (``np.save``), numbers (bool, int, uint or float), rows first
    --text       one text (repeatable), with at least one non-space character
    --text-file  UTF-8 text, one text per line, no blank line
    --output     a file path in a folder that exists

Whether the array's shape fits the model is the server's to say (it answers
INVALID_ARGUMENT with the shape it takes); here only what no model could take is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnserve.cli.errors import UserError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive is a zip file
NUMERIC_KINDS = "biuf"  # the kinds the protocol's tensor datatypes hold


def _existing_file(flag: str, path: str, expected: str) -> Path:
    """``path`` as a Path; ``UserError`` naming ``flag`` when it is missing or a folder."""
    file = Path(path)
    if not file.exists():
        raise UserError(f"{flag}: no such file; {expected}")
    if file.is_dir():
        raise UserError(f"{flag}: is a directory; {expected}")
    return file


def _declared_dtype(handle) -> np.dtype | None:
    """The dtype in a .npy header, read without loading the data (None when unreadable)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    try:
        reader = readers.get(np.lib.format.read_magic(handle))
        return None if reader is None else reader(handle)[2]
    except ValueError:
        return None


def load_input_array(path: str, *, model: str) -> np.ndarray:
    """The array in ``path``; ``UserError`` naming ``--input`` and what it should hold."""
    flag = f"--input {path}"
    expected = f"expected a .npy array of numbers, rows first, for model {model}"
    file = _existing_file(flag, path, expected)
    try:
        with file.open("rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
            handle.seek(0)
            dtype = _declared_dtype(handle) if magic == NPY_MAGIC else None
    except OSError as exc:
        raise UserError(f"{flag}: cannot read: {exc.strerror or exc}") from exc
    if magic.startswith(ZIP_MAGIC):
        raise UserError(f"{flag}: is an .npz archive (several arrays); {expected} "
                        "(np.save one of them)")
    if magic != NPY_MAGIC:
        raise UserError(f"{flag}: not a .npy file (np.save writes one); {expected}")
    if dtype is not None and dtype.hasobject:
        # Loading it would unpickle, which runs code from the file: never done.
        raise UserError(f"{flag}: holds Python objects (dtype object, pickled); {expected}")
    if dtype is not None and dtype.kind not in NUMERIC_KINDS:
        raise UserError(f"{flag}: holds {_kind_name(dtype)} (dtype {dtype}); {expected}")
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{flag}: not a readable .npy array ({exc}); {expected}") from exc
    if array.ndim == 0:
        raise UserError(f"{flag}: holds a single value, not rows; {expected} (shape (N, ...))")
    if len(array) == 0:
        raise UserError(f"{flag}: holds no rows (shape {array.shape}); {expected}")
    return array


def _kind_name(dtype: np.dtype) -> str:
    return {"U": "strings", "S": "bytes", "c": "complex numbers", "M": "dates",
            "m": "time spans", "V": "structured records"}.get(dtype.kind, f"{dtype.kind!r} values")


def check_output_path(path: str) -> None:
    """``UserError`` when ``--output`` cannot be a file: checked before the call, so a typo in
    the folder does not cost the prediction."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"--output {path}: is a directory; expected a file path for the .npy output")
    folder = file.parent
    if not folder.is_dir():
        raise UserError(f"--output {path}: folder {folder} does not exist; expected a path in an "
                        "existing folder")


MAX_TEXT_FILE_BYTES = 64 * 1024 * 1024
TEXT_EXPECTED = "expected one text per line (UTF-8)"


def shown(text: str, limit: int = 40) -> str:
    """``text`` as a shell user would quote it in a message, cut to ``limit`` characters."""
    cut = text if len(text) <= limit else text[:limit - 3] + "..."
    return repr(cut)


def load_texts(texts: list[str] | None, text_file: str | None) -> list[tuple[str, str]]:
    """(what names it in a message, the text) for each ``--text`` or line of ``--text-file``;
    ``UserError`` for an empty text, a file that is missing, unreadable, not UTF-8 or empty."""
    if texts is not None:
        for text in texts:
            if not text.strip():
                raise UserError(f"--text {shown(text)}: empty; expected words to classify")
        return [(f"--text {shown(text)}", text) for text in texts]
    assert text_file is not None
    flag = f"--text-file {text_file}"
    file = _existing_file(flag, text_file, TEXT_EXPECTED)
    try:
        if file.stat().st_size > MAX_TEXT_FILE_BYTES:
            raise UserError(f"{flag}: over {MAX_TEXT_FILE_BYTES // (1024 * 1024)} MiB; "
                            f"{TEXT_EXPECTED} (split it)")
        content = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"{flag}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{flag}: not UTF-8 text (byte {exc.start}); {TEXT_EXPECTED}") from exc
    lines = content.splitlines()
    if not lines:
        raise UserError(f"{flag}: holds no lines; {TEXT_EXPECTED}")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise UserError(f"{flag}: line {number} is empty; {TEXT_EXPECTED}, no blank line")
    return [(f"{flag} line {number}", line) for number, line in enumerate(lines, start=1)]
