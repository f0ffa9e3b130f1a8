"""Training keeps a text dataset's tokenizer: the zoo corpus's, a user's .npz ``vocabulary``,
the checkpoint, and ``export_module(tokenizer=...)`` writing it into the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from bnserve.proto.tokenizer import Tokenizer
from bnserve.repository.graph_metadata import graph_tokenizer
from bnserve.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from bnserve.training.config import ModelSpec
from bnserve.training.datasets import Dataset, InputStatistics, load_dataset, load_npz
from bnserve.training.errors import DatasetError, ExportError
from bnserve.training.export import export_module
from bnserve.training.models import build_model
from bnserve.training.synthetic import TEXT_LENGTH, make_text, text_tokenizer, text_vocabulary
from support.topics_model import TOKENS, TOPICS, TOPICS_VOCAB, TinyTextNet, topics_net

TEXT = ("text",)


def test_the_zoo_corpus_carries_its_tokenizer_and_its_ids_are_that_tokenizer_s():
    dataset = load_dataset("text")
    tokenizer = dataset.tokenizer
    assert tokenizer == text_tokenizer()
    assert tokenizer.vocabulary == text_vocabulary() == make_text(seed=0)[3]
    assert (tokenizer.vocab_size, tokenizer.sequence_length) == (dataset.vocab_size, TEXT_LENGTH)
    assert tokenizer.vocabulary[tokenizer.pad_id] == "<pad>"
    assert tokenizer.vocabulary[tokenizer.unknown_id] == "<unk>"
    # Every sentence of the corpus, written out as text, encodes back to its row.
    sentences = [tokenizer.decode(row).capitalize() + "." for row in dataset.x]
    np.testing.assert_array_equal(tokenizer.encode(sentences), dataset.x)


def test_a_dataset_refuses_a_tokenizer_that_does_not_fit_its_ids():
    x, y = np.zeros((4, 3), np.int64), np.array([0, 1, 0, 1])
    fits = Tokenizer(("<pad>", "<unk>", "a"), 3)
    assert Dataset("d", x=x, y=y, labels=("a", "b"), vocab_size=3, tokenizer=fits).tokenizer
    for vocab_size, tokenizer in ((4, fits), (3, Tokenizer(("<pad>", "<unk>", "a"), 5))):
        with pytest.raises(ValueError, match="a tokenizer goes with token ids"):
            Dataset("d", x=x, y=y, labels=("a", "b"), vocab_size=vocab_size, tokenizer=tokenizer)


def npz(path: Path, x, vocabulary=None) -> Path:
    arrays = {"x": np.asarray(x), "y": np.arange(len(x)) % 2}
    if vocabulary is not None:
        arrays["vocabulary"] = np.asarray(vocabulary)
    np.savez(path, **arrays)
    return path


def test_an_npz_vocabulary_becomes_the_dataset_s_tokenizer(tmp_path):
    rows = [[2, 3, 0, 0], [4, 1, 2, 0]]
    dataset = load_npz(npz(tmp_path / "a.npz", rows, ["<pad>", "<unk>", "team", "won", "rain"]),
                       TEXT)
    t = dataset.tokenizer
    assert dataset.vocab_size == t.vocab_size == 5
    assert (t.pad_id, t.unknown_id, t.lowercase, t.split, t.sequence_length,
            t.padding_side, t.truncation_side) == (0, 1, True, "words", 4, "right", "right")
    np.testing.assert_array_equal(t.encode(["Team won", "rain, hail, team"]), rows)
    # [UNK] at another place, capitals (case kept), a word with a hyphen (whitespace split),
    # ids padded in front.
    other = load_npz(npz(tmp_path / "b.npz", [[0, 0, 2, 3], [0, 3, 4, 2]],
                         ["[PAD]", "Paris", "New-York", "[UNK]", "x"]), TEXT).tokenizer
    assert (other.unknown_id, other.lowercase, other.split, other.padding_side) == (
        3, False, "whitespace", "left")
    np.testing.assert_array_equal(other.encode(["New-York London"]), [[0, 0, 2, 3]])
    # Without an unknown entry, a word outside the vocabulary cannot be encoded.
    strict = load_npz(npz(tmp_path / "c.npz", rows, ["<pad>", "a", "b", "c", "d"]), TEXT)
    assert strict.tokenizer.unknown_id is None
    # Without a vocabulary: ids only, as before.
    assert load_npz(npz(tmp_path / "d.npz", rows), TEXT).tokenizer is None


@pytest.mark.parametrize(("x", "vocabulary", "says"), [
    ([[2, 7]], ["<pad>", "<unk>", "a"], "x holds token id 7, but the vocabulary has 3 entries"),
    ([[1, 2]], np.array([b"<pad>", b"a", b"b"]), "must be a 1-d array of strings"),
    ([[1, 2]], [["<pad>", "a", "b"]], "must be a 1-d array of strings"),
    ([[1, 2]], ["<pad>", "a", "a"], "entries 1 and 2 are both 'a'"),
    ([[1, 2]], ["<pad>", "new york", "b"], "no text could ever produce its id"),
    ([[0.5, 1.0]], ["<pad>", "a", "b"], "has a vocabulary, which goes with integer token ids"),
])
def test_an_npz_vocabulary_that_cannot_describe_x_is_refused(tmp_path, x, vocabulary, says):
    path = npz(tmp_path / "bad.npz", x * 2, vocabulary)  # two rows: a valid y
    with pytest.raises(DatasetError, match=says):
        load_npz(path, ("text", "tabular"))


def test_the_checkpoint_keeps_the_tokenizer(tmp_path):
    spec = ModelSpec(kind="text", sample_shape=(TEXT_LENGTH,), num_classes=4, width=4,
                     vocab_size=text_tokenizer().vocab_size)
    ckpt = Checkpoint(spec=spec, state_dict=build_model(spec).state_dict(),
                      statistics=InputStatistics.identity(), labels=("a", "b", "c", "d"),
                      dataset="text", config={}, metrics={},
                      samples=np.zeros((2, TEXT_LENGTH), np.int64), tokenizer=text_tokenizer())
    save_checkpoint(ckpt, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path).tokenizer == text_tokenizer()
    assert ckpt.without_rows().tokenizer == text_tokenizer()  # what --include-checkpoint publishes


@pytest.fixture(scope="module")
def net() -> TinyTextNet:
    return topics_net()


def topics_tokenizer(words: int = TOPICS_VOCAB, length: int = TOKENS.shape[1]) -> Tokenizer:
    return Tokenizer(("<pad>", "<unk>", *(f"w{i}" for i in range(2, words))), length)


def test_export_module_writes_the_tokenizer_into_the_graph(net, tmp_path):
    result = export_module(net, TOKENS[:64], tmp_path, "topics", labels=TOPICS,
                           tokenizer=topics_tokenizer())
    assert result.tokenizer == topics_tokenizer()
    assert graph_tokenizer(onnx.load(str(result.path / "model.onnx"))) == topics_tokenizer()
    assert sorted(p.name for p in result.path.iterdir()) == [
        "metadata.json", "model.onnx", "unfolded.onnx"]  # no second copy beside the graph


def test_export_module_refuses_a_tokenizer_that_does_not_fit_the_model(net, tmp_path):
    with pytest.raises(ExportError, match="makes rows of 9 token ids, but the model takes 6"):
        export_module(net, TOKENS[:64], tmp_path, "topics",
                      tokenizer=topics_tokenizer(length=9))
    with pytest.raises(ExportError, match="goes with a model taking token ids"):
        export_module(net, TOKENS[:64].astype(np.float32), tmp_path, "topics",
                      tokenizer=topics_tokenizer())
    with pytest.raises(ExportError, match="has 25 words, but the model takes token ids below 20"):
        export_module(net, TOKENS[:64], tmp_path, "topics",
                      tokenizer=topics_tokenizer(words=25))
    assert not (tmp_path / "topics").exists()  # nothing published


def test_word_dropout_replaces_words_never_padding_and_only_with_a_tokenizer():
    import torch

    from bnserve.training.config import TrainConfig
    from bnserve.training.train import WordDropout, word_dropout

    tokens = torch.tensor([[5, 6, 7, 0, 0]] * 2000)  # (B, L)
    dropout = WordDropout(rate=0.1, unknown_id=1, pad_id=0)
    out = dropout(tokens, torch.Generator().manual_seed(0))
    assert (out[:, 3:] == 0).all()  # padding stays padding
    replaced = (out[:, :3] == 1).float().mean().item()
    assert 0.08 < replaced < 0.12 and ((out == tokens) | (out == 1)).all()
    again = dropout(tokens, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # drawn from the run's generator: resumable
    text = load_dataset("text")
    assert word_dropout(TrainConfig(model="text"), text) == WordDropout(0.1, 1, 0)
    assert word_dropout(TrainConfig(model="text", unknown_word_rate=0), text) is None
    assert word_dropout(TrainConfig(model="rnn"), text) is None  # its default: none
    assert word_dropout(TrainConfig(model="rnn", unknown_word_rate=0.2), text).rate == 0.2
    assert word_dropout(TrainConfig(), load_dataset("digits")) is None
    ids_only = Dataset("ids", x=text.x, y=text.y, labels=text.labels, vocab_size=text.vocab_size)
    assert word_dropout(TrainConfig(model="text"), ids_only) is None
