"""Datasets keyed by ``--dataset``: each loader returns raw inputs, class ids, labels.

    digits          (N, 1, 8, 8) float32 images         scikit-learn, bundled
    wine            (N, 13) float32 features            scikit-learn, bundled
    breast_cancer   (N, 30) float32 features            scikit-learn, bundled
    audio           (N, 1, 1024) float32 waveforms      generated (``synthetic.make_audio``)
    text            (N, 24) int64 token ids             generated (``synthetic.make_text``)
    --data x.npz    arrays ``x``, ``y`` (+ ``labels``,  a user's own (``load_npz``)
                    ``vocabulary``)

The layout of ``x`` says what a dataset holds (``Dataset.modality``): tabular (N, F),
audio/sequences (N, C, T), images (N, C, H, W), all float32, or text as int64 token ids
(N, L). Models declare which modalities they take. A token dataset may carry its
``tokenizer`` (``bnserve.proto.tokenizer``: the vocabulary and the rules that turn text into
its ids); the checkpoint keeps it and ``bnserve export`` writes it into the served graph.

Adding a dataset is one function::

    @register_dataset("mine")
    def load_mine() -> Dataset:
        return Dataset("mine", x=..., y=..., labels=(...))

Inputs stay raw (no scaling here): the training-data statistics become part of the
exported graph, so a client sends exactly what the dataset holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnserve.proto.tokenizer import Tokenizer, TokenizerError
from bnserve.training.errors import DatasetError, RegistryError

MODALITIES = {
    "tabular": "feature vectors (N, F)",
    "audio": "waveforms or sequences (N, C, T)",
    "image": "images (N, C, H, W)",
    "text": "int64 token ids (N, L)",
}


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray  # (N, *sample_shape) float32 raw features, or (N, L) int64 token ids
    y: np.ndarray  # (N,) int64 class ids in [0, len(labels))
    labels: tuple[str, ...]  # class id -> name
    vocab_size: int = 0  # token datasets: ids lie in [0, vocab_size); 0 for float inputs
    # Token datasets: the words behind the ids and how text becomes them (None: ids only).
    tokenizer: Tokenizer | None = None

    def __post_init__(self) -> None:
        tokens = self.x.dtype == np.int64
        if not (self.x.dtype == np.float32 or tokens) or self.y.dtype != np.int64:
            raise TypeError(f"dataset {self.name}: x must be float32 (or int64 token ids) and "
                            f"y int64, got {self.x.dtype} and {self.y.dtype}")
        if self.x.ndim < 2 or len(self.x) != len(self.y):
            raise ValueError(f"dataset {self.name}: x {self.x.shape} and y {self.y.shape} "
                             "must have the same number of rows")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.labels)):
            raise ValueError(f"dataset {self.name}: class ids outside [0, {len(self.labels)})")
        if tokens and (self.x.ndim != 2 or self.x.min() < 0 or self.x.max() >= self.vocab_size):
            raise ValueError(f"dataset {self.name}: token ids must be (N, L) in "
                             f"[0, vocab_size={self.vocab_size})")
        if self.tokenizer is not None and not (
                tokens and self.tokenizer.vocab_size == self.vocab_size
                and self.tokenizer.sequence_length == self.x.shape[1]):
            raise ValueError(f"dataset {self.name}: a tokenizer goes with token ids (N, L) and "
                             f"must have vocab_size={self.vocab_size} words and "
                             f"sequence_length L={self.x.shape[-1]}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def modality(self) -> str:
        """tabular, audio, image or text: what the layout of ``x`` says it holds."""
        if self.x.dtype == np.int64:
            return "text"
        return {2: "tabular", 3: "audio", 4: "image"}.get(self.x.ndim, f"{self.x.ndim - 1}-d")

    @property
    def num_classes(self) -> int:
        return len(self.labels)


DatasetLoader = Callable[[], Dataset]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a loader under ``name`` (the value of ``--dataset``)."""

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(name: str) -> Dataset:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise RegistryError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader()


@register_dataset("digits")
def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images, pixel values 0..16, 10 classes."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return Dataset("digits", x=x, y=y, labels=tuple(str(t) for t in bunch.target_names))


@register_dataset("wine")
def load_wine() -> Dataset:
    """scikit-learn's bundled wine recognition data: 178 rows, 13 chemical features, 3 classes."""
    from sklearn.datasets import load_wine as sklearn_wine

    bunch = sklearn_wine()
    return Dataset("wine", x=bunch.data.astype(np.float32), y=bunch.target.astype(np.int64),
                   labels=tuple(str(t) for t in bunch.target_names))


@register_dataset("breast_cancer")
def load_breast_cancer() -> Dataset:
    """scikit-learn's bundled Wisconsin breast cancer data: 569 rows, 30 features, 2 classes."""
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    bunch = sklearn_breast_cancer()
    return Dataset("breast_cancer", x=bunch.data.astype(np.float32),
                   y=bunch.target.astype(np.int64),
                   labels=tuple(str(t) for t in bunch.target_names))


@register_dataset("audio")
def load_audio() -> Dataset:
    """Generated 128 ms clips at 8 kHz: 7 classes of tones, chirps, AM tones and noise."""
    from bnserve.training.synthetic import make_audio

    x, y, labels = make_audio(seed=0)
    return Dataset("audio", x=x, y=y, labels=labels)


@register_dataset("text")
def load_text() -> Dataset:
    """Generated sentences from 4 topics that share filler words, as 24 token ids each."""
    from bnserve.training.synthetic import make_text, text_tokenizer

    x, y, labels, vocabulary = make_text(seed=0)
    tokenizer = text_tokenizer()
    assert tokenizer.vocabulary == vocabulary
    return Dataset("text", x=x, y=y, labels=labels, vocab_size=len(vocabulary),
                   tokenizer=tokenizer)


ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive is a zip file
NPY_MAGIC = b"\x93NUMPY"
NPZ_EXPECTED = "expected an .npz archive with arrays x and y (np.savez(path, x=x, y=y))"


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """The .npz archive at ``path``, its arrays not yet read; ``DatasetError`` saying what
    the file is instead (missing, a folder, a single .npy array, not an archive)."""
    if not path.exists():
        raise DatasetError(f"cannot read {path}: no such file; {NPZ_EXPECTED}")
    if path.is_dir():
        raise DatasetError(f"cannot read {path}: is a directory; {NPZ_EXPECTED}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
        if magic == NPY_MAGIC:  # np.load would read it as one array
            raise DatasetError(f"cannot read {path}: a single .npy array; {NPZ_EXPECTED}")
        if not magic.startswith(ZIP_MAGIC):  # np.load would try to unpickle it, and say so
            raise DatasetError(f"cannot read {path}: not an .npz archive; {NPZ_EXPECTED}")
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}; {NPZ_EXPECTED}") from exc
    except ValueError as exc:  # a damaged archive
        raise DatasetError(f"cannot read {path}: {exc}; {NPZ_EXPECTED}") from exc


def read_npz_array(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return data[key]
    except (OSError, ValueError) as exc:  # a damaged member, or object arrays (they would unpickle)
        raise DatasetError(f"cannot read {path}: array {key!r}: {exc}; {NPZ_EXPECTED}") from exc


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz file at ``path`` (``DatasetError`` as ``open_npz``)."""
    with open_npz(path) as data:
        return {key: read_npz_array(data, key, path) for key in data.files}


def rows_for_split(num_classes: int, val_fraction: float) -> int:
    """The fewest rows a stratified train/validation split takes: scikit-learn holds out
    ceil(val_fraction * n) rows and needs every class on both sides of the split."""
    rows = 2 * num_classes
    while (math.ceil(val_fraction * rows) < num_classes
           or rows - math.ceil(val_fraction * rows) < num_classes):
        rows += 1
    return rows


def check_npz_splits(path: Path | str, val_fraction: float) -> None:
    """``DatasetError`` when a user's .npz cannot be read or its ``y`` is too small for the
    train/validation split (naming the rows needed). Only ``y`` is read (an .npz member loads
    on its own), so this runs in a moment, before training imports torch; the rest of the
    file is ``load_npz``'s to check."""
    path = Path(path)
    with open_npz(path) as data:
        if "y" not in data.files:
            return  # load_npz names what is missing
        y = read_npz_array(data, "y", path)
    if y.ndim != 1:
        return
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return  # load_npz: a classifier needs two or more classes
    needed = rows_for_split(len(classes), val_fraction)
    if len(y) < needed:
        raise DatasetError(f"{path}: {len(y)} rows are too few for the train/validation split "
                           f"({val_fraction:.0%} held out, each of the {len(classes)} classes "
                           f"on both sides); it needs at least {needed} rows")
    if counts.min() < 2:
        rare = classes[counts.argmin()].item()
        raise DatasetError(f"{path}: class {rare!r} has 1 row; the train/validation split "
                           "needs at least 2 rows of every class")


def load_npz(path: Path | str, modalities: Sequence[str]) -> Dataset:
    """A user's dataset: ``x`` and ``y`` arrays (and optionally ``labels``) in one .npz file.

    ``modalities`` are what the model takes; ``x`` is reshaped to the first that fits:
    tabular (N, F); images (N, H, W) gain a channel axis -> (N, 1, H, W), or (N, C, H, W);
    audio (N, T) -> (N, 1, T), or (N, C, T); text: integer token ids (N, L). Without
    ``labels`` the distinct values of ``y`` become the classes, in sorted order. Token ids
    may come with ``vocabulary`` (strings, id -> word): see ``npz_tokenizer``.
    """
    path = Path(path)
    arrays = read_npz(path)
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise DatasetError(f"{path} has no array(s) {sorted(missing)}; it needs x and y "
                           f"(found: {sorted(arrays) or 'nothing'})")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DatasetError(f"{path}: x {x.shape} must have one row per entry of y {y.shape}")
    if y.dtype.kind == "f":
        check_finite_rows(y, f"{path}: array 'y'")
    if "labels" in arrays:
        labels = tuple(str(v) for v in arrays["labels"])
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(labels):
            raise DatasetError(f"{path}: y must hold integer class ids in [0, {len(labels)}) "
                               "to index labels")
        y = y.astype(np.int64)
    else:
        classes, y = np.unique(y, return_inverse=True)
        labels = tuple(str(c) for c in classes)
        y = y.astype(np.int64)
    if len(labels) < 2:
        raise DatasetError(f"{path}: y holds {len(labels)} class; a classifier needs two or more")
    name = path.name
    integer = np.issubdtype(x.dtype, np.integer)
    if "vocabulary" in arrays and not (integer and x.ndim == 2 and "text" in modalities):
        raise DatasetError(f"{path}: has a vocabulary, which goes with integer token ids "
                           f"(N, L) for a text model; x has shape {x.shape} and dtype {x.dtype}")
    for modality in modalities:
        if modality == "text" and integer and x.ndim == 2:
            if x.min() < 0:
                raise DatasetError(f"{path}: token ids must be >= 0, found {x.min()}")
            tokens = x.astype(np.int64)
            if "vocabulary" not in arrays:
                return Dataset(name, x=tokens, y=y, labels=labels,
                               vocab_size=int(tokens.max()) + 1)
            tokenizer = npz_tokenizer(arrays["vocabulary"], tokens, path)
            return Dataset(name, x=tokens, y=y, labels=labels, vocab_size=tokenizer.vocab_size,
                           tokenizer=tokenizer)
        if modality == "text":
            continue
        shaped = {"tabular": {2: x}, "audio": {2: x[:, None], 3: x},
                  "image": {3: x[:, None], 4: x}}[modality].get(x.ndim)
        if shaped is not None and np.issubdtype(x.dtype, np.number):
            with np.errstate(over="ignore"):  # what overflows becomes Inf, reported next
                features = np.ascontiguousarray(shaped, dtype=np.float32)
            check_finite_rows(features, f"{path}: array 'x'")  # after the cast: overflow is Inf
            return Dataset(name, x=features, y=y, labels=labels)
    wanted = " or ".join(MODALITIES[m] for m in modalities)
    raise DatasetError(f"{path}: x has shape {x.shape} and dtype {x.dtype}; this model takes "
                       f"{wanted}")


UNKNOWN_ENTRIES = ("<unk>", "[UNK]", "<UNK>")  # the names a vocabulary's unknown-word entry goes by
_ONE_WORD = re.compile(r"\w+")


def npz_tokenizer(vocabulary: np.ndarray, tokens: np.ndarray, path: Path) -> Tokenizer:
    """The tokenizer of a user's token ids (N, L) from their ``vocabulary`` (id -> word).

    Entry 0 is the padding (the zoo's embeddings use row 0 for it); the first entry named
    ``<unk>``, ``[UNK]`` or ``<UNK>`` is the unknown-word id (without one, a word outside
    the vocabulary is an error when encoding); words are lower-cased when no entry has a
    capital; split into ``\\w+`` runs when every entry is one, else on whitespace; rows of L
    ids, padded after the words (before them when the data's padding is all in front),
    longer texts cut after their first L words.
    """
    where = f"{path}: array 'vocabulary'"
    if vocabulary.ndim != 1 or vocabulary.dtype.kind != "U":
        raise DatasetError(f"{where} must be a 1-d array of strings (np.array(words)), got "
                           f"shape {vocabulary.shape} and dtype {vocabulary.dtype}")
    words = tuple(str(w) for w in vocabulary)
    if int(tokens.max()) >= len(words):
        raise DatasetError(f"{path}: x holds token id {int(tokens.max())}, but the vocabulary "
                           f"has {len(words)} entries (ids 0 to {len(words) - 1})")
    unknown = next((i for i, w in enumerate(words) if i > 0 and w in UNKNOWN_ENTRIES), None)
    plain = [w for i, w in enumerate(words) if i not in (0, unknown)]
    padded = tokens == 0  # (N, L)
    partly = padded[padded.any(axis=1) & ~padded.all(axis=1)].astype(np.int8)
    steps = np.diff(partly, axis=1)  # padding after the words: 0 -> 1 steps only
    front = len(partly) > 0 and bool((steps <= 0).all()) and not bool((steps >= 0).all())
    try:
        return Tokenizer(words, tokens.shape[1], pad_id=0, unknown_id=unknown,
                         lowercase=all(w == w.lower() for w in plain),
                         split="words" if all(_ONE_WORD.fullmatch(w) for w in plain)
                         else "whitespace",
                         truncation_side="right", padding_side="left" if front else "right")
    except TokenizerError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def check_finite_rows(a: np.ndarray, what: str) -> None:
    """``DatasetError`` naming ``what`` and the first row of ``a`` holding a NaN or an Inf.

    Checked before training: a NaN row otherwise trains "fine" to a NaN model that only the
    export's checks catch, and blame on BatchNorm.
    """
    if not np.issubdtype(a.dtype, np.floating):
        return
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)  # (N,) rows with a NaN or an Inf
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DatasetError(f"{what} holds NaN or Inf values: first in row {rows[0]} "
                           f"({len(rows)} of {len(a)} rows); drop or repair those rows")


@dataclass(frozen=True)
class InputStatistics:
    """Per-channel (axis 1) mean and std of the training inputs, shaped to broadcast on a sample.

    For images (N, C, H, W) they have shape (C, 1, 1); for waveforms (N, C, T), (C, 1); for
    feature vectors (N, F), shape (F,). Token ids are not standardized: their statistics are
    the identity (scalar mean 0, std 1; ``is_identity``) and ``standardize`` returns them as is.
    """

    mean: np.ndarray  # float32
    std: np.ndarray  # float32, > 0

    @classmethod
    def identity(cls) -> InputStatistics:
        return cls(np.zeros((), dtype=np.float32), np.ones((), dtype=np.float32))

    @property
    def is_identity(self) -> bool:
        return self.mean.ndim == 0 and float(self.mean) == 0.0 and float(self.std) == 1.0

    @classmethod
    def from_data(cls, x: np.ndarray) -> InputStatistics:
        if np.issubdtype(x.dtype, np.integer):  # token ids
            return cls.identity()
        axes = (0, *range(2, x.ndim))  # everything but the channel axis
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = x.std(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = np.where(std > 1e-6, std, 1.0)  # a constant channel is left unscaled
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def standardize(self, x: np.ndarray) -> np.ndarray:
        if self.is_identity:
            return x
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "shape": list(self.mean.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputStatistics:
        return cls(np.asarray(data["mean"], dtype=np.float32),
                   np.asarray(data["std"], dtype=np.float32))
