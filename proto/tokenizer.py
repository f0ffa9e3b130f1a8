"""A text model's tokenizer: the rules that turn a sentence into the token ids it was
trained on, one schema for the exporter, the server and the client.

    {"format": 1, "input": "input", "vocabulary": ["<pad>", "<unk>", "the", ...],
     "lowercase": true, "split": "words", "pad_id": 0, "unknown_id": 1,
     "sequence_length": 24, "truncation_side": "right", "padding_side": "right"}

Where it travels: training keeps it with the dataset and the checkpoint; ``bnserve export``
writes it into ``model.onnx`` (``metadata_props`` key ``bnserve.tokenizer``, see
``bnserve.repository.graph_metadata``); the server checks it when it loads the version and
reports it in its ModelConfig answer (``parameters["bnserve.tokenizer"]``, the JSON text,
which tritonclient's ``get_model_config`` shows too); ``Client.tokenizer(model)`` builds a
``Tokenizer`` from that answer and encodes with it.

Encoding one text (``Tokenizer.encode``):
    1. ``lowercase``: the text is lower-cased (``str.lower``)
    2. ``split``: ``"words"`` takes the runs of letters, digits and underscores (Python's
       ``\\w+``, Unicode-aware; punctuation and spaces separate words and are dropped);
       ``"whitespace"`` splits on whitespace only (``str.split()``)
    3. each word becomes its index in ``vocabulary``; a word outside it (or one spelling the
       padding entry) becomes ``unknown_id``; with ``unknown_id`` null, such a word is an
       error naming it
    4. more than ``sequence_length`` words: ``truncation_side`` ``"right"`` keeps the first
       ones, ``"left"`` the last ones
    5. fewer: ``pad_id`` fills the rest of the row, after the words (``padding_side``
       ``"right"``) or before them (``"left"``)
A text with no word at all is refused: the model would see a row of padding.

Every vocabulary entry other than the padding and unknown ones must come out of steps 1-2
as itself (one word, already lower-case when ``lowercase``): otherwise no text could ever
produce its id, and the spec is refused as inconsistent.

The spec comes from a file anyone may have written, so every parse is bounded and checked
(``TokenizerError`` names the field): the JSON at most ``MAX_SPEC_BYTES`` (2 MiB; a
50,000-word vocabulary of ordinary words takes about 0.5 MB), at most ``MAX_WORDS`` entries
of at most ``MAX_WORD_CHARS`` characters each, unique, and ``sequence_length`` at most
``MAX_SEQUENCE_LENGTH``. Plain Python and numpy: the thin client imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOKENIZER_KEY = "bnserve.tokenizer"  # the graph's metadata_props key and the ModelConfig parameter
FORMAT = 1
MAX_SPEC_BYTES = 2 * 1024 * 1024
MAX_WORDS = 200_000
MAX_WORD_CHARS = 256
MAX_SEQUENCE_LENGTH = 65_536
MAX_INPUT_NAME_CHARS = 256
SPLITS = ("words", "whitespace")
SIDES = ("right", "left")
_WORD = re.compile(r"\w+")
_FIELDS = ("format", "input", "vocabulary", "lowercase", "split", "pad_id", "unknown_id",
           "sequence_length", "truncation_side", "padding_side")


class TokenizerError(ValueError):
    """A tokenizer spec that is malformed, too large or inconsistent; the message names the
    field and why."""


class TextEncodingError(ValueError):
    """A text ``Tokenizer.encode`` cannot encode: ``index`` is its position in the list,
    ``reason`` says why (no word; a word outside a vocabulary without an unknown id)."""

    def __init__(self, index: int, text: str, reason: str) -> None:
        super().__init__(f"text {index} ({_short(text)}) {reason}")
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class Tokenizer:
    """Words -> token ids by the rules of the module docstring; the spec and its encoder."""

    vocabulary: tuple[str, ...]  # token id -> word; entry pad_id is the padding
    sequence_length: int  # ids per row: the model's input is (N, sequence_length)
    pad_id: int = 0
    unknown_id: int | None = 1  # None: a word outside the vocabulary is an error
    lowercase: bool = True
    split: str = "words"  # "words" (\w+ runs) or "whitespace"
    truncation_side: str = "right"  # "right": keep the first words; "left": the last
    padding_side: str = "right"  # "right": padding after the words; "left": before
    input: str = "input"  # the model input the ids go to
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", _vocabulary(self.vocabulary))
        words = len(self.vocabulary)
        _integer(self.sequence_length, "sequence_length", 1, MAX_SEQUENCE_LENGTH)
        _integer(self.pad_id, "pad_id", 0, words - 1)
        if self.unknown_id is not None:
            _integer(self.unknown_id, "unknown_id", 0, words - 1)
            if self.unknown_id == self.pad_id:
                raise TokenizerError("unknown_id must differ from pad_id (padding is not a word)")
        if not isinstance(self.lowercase, bool):
            raise TokenizerError("lowercase must be true or false")
        for name, value, allowed in (("split", self.split, SPLITS),
                                     ("truncation_side", self.truncation_side, SIDES),
                                     ("padding_side", self.padding_side, SIDES)):
            if value not in allowed:
                raise TokenizerError(f"{name} must be one of {', '.join(allowed)}, got "
                                     f"{_short(value)}")
        if (not isinstance(self.input, str) or not self.input
                or len(self.input) > MAX_INPUT_NAME_CHARS):
            raise TokenizerError(f"input must be the name of a model input (1 to "
                                 f"{MAX_INPUT_NAME_CHARS} characters)")
        special = {self.pad_id, self.unknown_id}
        index = {}
        for token_id, word in enumerate(self.vocabulary):
            if token_id in special:
                continue
            if self.words(word) != [word]:
                raise TokenizerError(
                    f"vocabulary entry {token_id} ({_short(word)}) is not one "
                    f"{'lower-case ' if self.lowercase else ''}word by the tokenizer's own "
                    f"rules (split {self.split!r}): no text could ever produce its id")
            index[word] = token_id
        object.__setattr__(self, "_index", index)
        # Written once: the server answers every ModelConfig call with it.
        object.__setattr__(self, "_json", json.dumps(self.to_dict(), ensure_ascii=False,
                                                     separators=(",", ":")))
        size = len(self._json.encode())
        if size > MAX_SPEC_BYTES:
            raise TokenizerError(f"the spec takes {size:,} bytes as JSON, over the limit of "
                                 f"{MAX_SPEC_BYTES:,}")

    @property
    def vocab_size(self) -> int:
        """Ids lie in [0, vocab_size): the rows of the model's embedding table it needs."""
        return len(self.vocabulary)

    def words(self, text: str) -> list[str]:
        """``text`` lower-cased (if ``lowercase``) and split into words: steps 1 and 2."""
        if self.lowercase:
            text = text.lower()
        return text.split() if self.split == "whitespace" else _WORD.findall(text)

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that are not in the vocabulary, in order."""
        return [w for w in self.words(text) if w not in self._index]

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        """One row of ``sequence_length`` int64 ids per text: (len(texts), sequence_length).

        ``TextEncodingError`` (a ValueError; ``.index``: the text's position) for a text with
        no word, or with a word outside the vocabulary when the tokenizer has no
        ``unknown_id``; ``TypeError`` for a bare string (pass a list of texts) or an item
        that is not a string.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode takes a list of texts, not one string: encode([text])")
        texts = list(texts)
        rows = np.full((len(texts), self.sequence_length), self.pad_id, dtype=np.int64)  # (N, L)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {row}: expected a str, got {type(text).__name__}")
            ids = self._ids(text, row)
            if len(ids) > self.sequence_length:
                ids = (ids[:self.sequence_length] if self.truncation_side == "right"
                       else ids[-self.sequence_length:])
            if self.padding_side == "right":
                rows[row, :len(ids)] = ids
            else:
                rows[row, self.sequence_length - len(ids):] = ids
        return rows

    def _ids(self, text: str, row: int) -> list[int]:
        words = self.words(text)
        if not words:
            kept = ("runs of letters, digits and _" if self.split == "words"
                    else "what whitespace separates")
            raise TextEncodingError(row, text, f"has no words (the tokenizer keeps {kept}); "
                                    "expected at least one")
        ids = []
        for word in words:
            token_id = self._index.get(word, self.unknown_id)
            if token_id is None:
                raise TextEncodingError(row, text, f"has the word {_short(word)}, which is not "
                                        "in the vocabulary (and this tokenizer has no "
                                        "unknown-word id)")
            ids.append(token_id)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """One row of ids back to its words, joined by spaces; padding is left out."""
        return " ".join(self.vocabulary[int(i)] for i in ids if int(i) != self.pad_id)

    # -- the spec as data ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "input": self.input, "vocabulary": list(self.vocabulary),
                "lowercase": self.lowercase, "split": self.split, "pad_id": self.pad_id,
                "unknown_id": self.unknown_id, "sequence_length": self.sequence_length,
                "truncation_side": self.truncation_side, "padding_side": self.padding_side}

    def to_json(self) -> str:
        """The spec as compact JSON (UTF-8 text, words as they are)."""
        return self._json

    @classmethod
    def from_dict(cls, data: Any) -> Tokenizer:
        if not isinstance(data, dict):
            raise TokenizerError("the spec must be a JSON object")
        unknown = sorted(str(k) for k in data if k not in _FIELDS)
        if unknown:
            raise TokenizerError(f"unknown field(s) {', '.join(_short(k) for k in unknown[:5])}; "
                                 f"a format {FORMAT} spec has {', '.join(_FIELDS)}")
        version = data.get("format")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise TokenizerError("format must be a positive integer")
        if version > FORMAT:
            raise TokenizerError(f"format {version} is newer than this bnserve reads "
                                 f"({FORMAT}); upgrade bnserve")
        missing = [k for k in ("vocabulary", "sequence_length") if k not in data]
        if missing:
            raise TokenizerError(f"missing field(s) {', '.join(missing)}")
        vocabulary = data["vocabulary"]
        if not isinstance(vocabulary, list):
            raise TokenizerError("vocabulary must be a list of strings")
        defaults = {k: f.default for k, f in cls.__dataclass_fields__.items()}
        optional = ("input", "lowercase", "split", "pad_id", "unknown_id", "truncation_side",
                    "padding_side")
        return cls(vocabulary=tuple(vocabulary), sequence_length=data["sequence_length"],
                   **{k: data.get(k, defaults[k]) for k in optional})

    @classmethod
    def from_json(cls, text: str | bytes) -> Tokenizer:
        """Parse and check a spec; ``TokenizerError`` says what is wrong (size first, so an
        oversized one is never parsed)."""
        size = len(text.encode() if isinstance(text, str) else text)
        if size > MAX_SPEC_BYTES:
            raise TokenizerError(f"the spec is {size:,} bytes, over the limit of "
                                 f"{MAX_SPEC_BYTES:,}")
        try:
            data = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes
            raise TokenizerError(f"not JSON: {exc}") from None
        return cls.from_dict(data)


def _vocabulary(words: Any) -> tuple[str, ...]:
    if isinstance(words, (str, bytes)) or not isinstance(words, (list, tuple)):
        raise TokenizerError("vocabulary must be a list of strings")
    if not 2 <= len(words) <= MAX_WORDS:
        raise TokenizerError(f"vocabulary must hold 2 to {MAX_WORDS:,} entries (the padding "
                             f"and at least one word), got {len(words):,}")
    seen: dict[str, int] = {}
    for token_id, word in enumerate(words):
        if not isinstance(word, str) or len(word) > MAX_WORD_CHARS:
            raise TokenizerError(f"vocabulary entry {token_id} must be a string of at most "
                                 f"{MAX_WORD_CHARS} characters")
        if word in seen:
            raise TokenizerError(f"vocabulary entries {seen[word]} and {token_id} are both "
                                 f"{_short(word)}; each word must have one id")
        seen[word] = token_id
    return tuple(words)


def _integer(value: Any, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TokenizerError(f"{name} must be an integer from {low} to {high:,}, got "
                             f"{_short(value)}")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
