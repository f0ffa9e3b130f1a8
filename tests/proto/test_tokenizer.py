"""The tokenizer spec and its encoder (``bnserve.proto.tokenizer``): the rules, the
round trip through JSON, and the limits that make a spec from a file safe to read."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from bnserve.proto.tokenizer import (
    MAX_SPEC_BYTES,
    TextEncodingError,
    Tokenizer,
    TokenizerError,
)

WORDS = ("<pad>", "<unk>", "the", "team", "won", "rain", "cold", "42", "naïve")


def tokenizer(**changes) -> Tokenizer:
    return replace(Tokenizer(WORDS, sequence_length=5), **changes)


def test_words_are_lower_cased_split_on_punctuation_and_looked_up():
    t = tokenizer()
    assert t.words("The TEAM won, 42-0! Naïve?") == ["the", "team", "won", "42", "0", "naïve"]
    ids = t.encode(["The team WON.", "rain"])
    assert ids.dtype == np.int64 and ids.shape == (2, 5)
    np.testing.assert_array_equal(ids, [[2, 3, 4, 0, 0], [5, 0, 0, 0, 0]])
    assert t.decode(ids[0]) == "the team won"
    assert t.encode([]).shape == (0, 5)


def test_unknown_words_take_the_unknown_id_and_are_named():
    t = tokenizer()
    np.testing.assert_array_equal(t.encode(["the blorp team <pad>"]), [[2, 1, 3, 1, 0]])
    assert t.unknown_words("the blorp team <pad>") == ["blorp", "pad"]
    # Whitespace split: "<pad>" is one word, and still not the padding id.
    spaces = tokenizer(split="whitespace")
    np.testing.assert_array_equal(spaces.encode(["<pad> team"]), [[1, 3, 0, 0, 0]])
    strict = tokenizer(unknown_id=None, vocabulary=("<pad>", *WORDS[2:]))
    with pytest.raises(TextEncodingError, match="word 'blorp', which is not in the vocabulary") as info:
        strict.encode(["the team", "the blorp"])
    assert info.value.index == 1


def test_truncation_and_padding_sides():
    long = "the team won the rain cold"  # 6 words, rows of 5
    np.testing.assert_array_equal(tokenizer().encode([long]), [[2, 3, 4, 2, 5]])
    np.testing.assert_array_equal(tokenizer(truncation_side="left").encode([long]),
                                  [[3, 4, 2, 5, 6]])
    np.testing.assert_array_equal(tokenizer(padding_side="left").encode(["team won"]),
                                  [[0, 0, 0, 3, 4]])
    np.testing.assert_array_equal(tokenizer(pad_id=8, unknown_id=0, vocabulary=(
        "<unk>", "a", "the", "team", "won", "rain", "cold", "42", "<pad>")).encode(["team x"]),
        [[3, 0, 8, 8, 8]])


def test_case_is_kept_when_lowercase_is_off():
    t = Tokenizer(("<pad>", "<unk>", "Paris", "paris"), 3, lowercase=False)
    np.testing.assert_array_equal(t.encode(["Paris paris PARIS"]), [[2, 3, 1]])


def test_a_text_without_words_and_a_bare_string_are_refused():
    t = tokenizer()
    for text in ("", "   ", "?!"):
        with pytest.raises(TextEncodingError, match="has no words") as info:
            t.encode(["team", text])
        assert info.value.index == 1
    with pytest.raises(TypeError, match="not one string"):
        t.encode("the team")
    with pytest.raises(TypeError, match="text 0: expected a str"):
        t.encode([b"team"])


def test_the_spec_round_trips_through_json():
    t = tokenizer(unknown_id=None, split="whitespace", truncation_side="left", input="ids")
    text = t.to_json()
    assert json.loads(text)["format"] == 1 and "naïve" in text  # UTF-8, not \\u escapes
    assert Tokenizer.from_json(text) == t
    assert Tokenizer.from_json(text.encode()) == t
    assert Tokenizer.from_dict(t.to_dict()) == t
    # The optional fields default as the dataclass does.
    assert Tokenizer.from_json('{"format": 1, "vocabulary": ["<pad>", "<unk>", "a"], '
                               '"sequence_length": 3}') == Tokenizer(("<pad>", "<unk>", "a"), 3)


@pytest.mark.parametrize(("spec", "says"), [
    ("[1, 2]", "must be a JSON object"),
    ("{", "not JSON"),
    ('{"vocabulary": ["<pad>", "a"], "sequence_length": 3}', "format must be a positive integer"),
    ('{"format": 2, "vocabulary": ["<pad>", "a"], "sequence_length": 3}', "format 2 is newer"),
    ('{"format": 1, "vocabulary": ["<pad>", "a"]}', "missing field(s) sequence_length"),
    ('{"format": 1, "vocabulary": ["<pad>", "a"], "sequence_length": 3, "bpe": 1}',
     "unknown field(s) 'bpe'"),
    ('{"format": 1, "vocabulary": "abc", "sequence_length": 3}', "vocabulary must be a list"),
    ('{"format": 1, "vocabulary": ["<pad>"], "sequence_length": 3}', "2 to 200,000 entries"),
    ('{"format": 1, "vocabulary": ["<pad>", "a", 3], "sequence_length": 3}',
     "entry 2 must be a string"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>", "a", "a"], "sequence_length": 3}',
     "entries 2 and 3 are both 'a'"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>", "A"], "sequence_length": 3}',
     "entry 2 ('A') is not one lower-case word"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>", "new york"], "sequence_length": 3}',
     "no text could ever produce its id"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": 0}',
     "sequence_length must be an integer from 1 to 65,536"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": true}',
     "sequence_length must be an integer"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": 3, "pad_id": 2}',
     "pad_id must be an integer from 0 to 1"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": 3, "unknown_id": 0}',
     "unknown_id must differ from pad_id"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": 3, "split": "bpe"}',
     "split must be one of words, whitespace"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": 3, '
     '"padding_side": "up"}', "padding_side must be one of right, left"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": 3, "lowercase": 1}',
     "lowercase must be true or false"),
    ('{"format": 1, "vocabulary": ["<pad>", "<unk>"], "sequence_length": 3, "input": ""}',
     "input must be the name of a model input"),
])
def test_a_malformed_spec_is_refused_naming_the_field(spec, says):
    with pytest.raises(TokenizerError, match=re.escape(says)):
        Tokenizer.from_json(spec)


def test_the_size_limits_hold_before_and_after_parsing():
    # A 50,000-word vocabulary of ordinary words is well inside the limit.
    words = ("<pad>", "<unk>", *(f"word{i}" for i in range(50_000)))
    big = Tokenizer(words, 128)
    assert len(big.to_json().encode()) < MAX_SPEC_BYTES / 2
    assert Tokenizer.from_json(big.to_json()) == big
    with pytest.raises(TokenizerError, match="over the limit of 2,097,152"):
        Tokenizer.from_json(" " * (MAX_SPEC_BYTES + 1))  # refused unparsed
    long_words = ("<pad>", "<unk>", *(f"{'w' * 250}{i}" for i in range(9_000)))
    with pytest.raises(TokenizerError, match=r"takes 2,\d{3},\d{3} bytes as JSON, over the limit"):
        Tokenizer(long_words, 8)
    with pytest.raises(TokenizerError, match="at most 256 characters"):
        Tokenizer(("<pad>", "w" * 257), 8)
