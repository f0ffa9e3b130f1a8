"""Text models take text: the exporter writes the tokenizer into model.onnx (its one home),
the server checks it at load and reports it in ModelConfig (``parameters["bnserve.tokenizer"]``,
which tritonclient reads too), the client encodes with it, and ``bnserve predict --text``
prints each text's topic. The session's text model (``text_repository``) is the zoo's, trained
with its defaults."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bnserve.client import AsyncClient, Client
from bnserve.proto.tokenizer import TOKENIZER_KEY, Tokenizer
from bnserve.repository.graph_metadata import graph_tokenizer, set_graph_tokenizer
from bnserve.server.errors import ModelLoadError
from bnserve.server.loader import load_version
from bnserve.server.model_config import default_settings
from bnserve.server.repository import ModelRepository
from bnserve.server.settings import ServerSettings
from bnserve.training.datasets import load_dataset
from bnserve.training.synthetic import make_text, text_tokenizer
from support.cli import run_cli
from support.server_thread import ServerThread


def without_tokenizer(graph: onnx.ModelProto) -> onnx.ModelProto:
    kept = [p for p in graph.metadata_props if p.key != TOKENIZER_KEY]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    return graph


@pytest.fixture(scope="module")
def repository(text_repository, tmp_path_factory):
    """``text`` as exported, and ``ids``: the same graph with no tokenizer and no card."""
    root = tmp_path_factory.mktemp("text-models")
    shutil.copytree(text_repository / "text", root / "text")
    (root / "ids" / "1").mkdir(parents=True)
    graph = without_tokenizer(onnx.load(str(root / "text" / "1" / "model.onnx")))
    onnx.save(graph, str(root / "ids" / "1" / "model.onnx"))
    return root


@pytest.fixture(scope="module")
def server(repository):
    with ServerThread(ServerSettings(repository=repository)) as running:
        yield running


def test_export_writes_the_tokenizer_into_the_graph_and_nowhere_else(text_repository):
    version = text_repository / "text" / "1"
    assert graph_tokenizer(onnx.load(str(version / "model.onnx"))) == text_tokenizer()
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map[TOKENIZER_KEY] == text_tokenizer().to_json()
    assert not any("tokenizer" in p.name or "vocab" in p.name for p in version.iterdir())
    card = json.loads((version / "metadata.json").read_text())  # its checksum covers the spec
    assert card["sha256"] == hashlib.sha256((version / "model.onnx").read_bytes()).hexdigest()
    assert card["inputs"][0]["range"] == [0, text_tokenizer().vocab_size - 1]


async def test_the_server_reports_the_tokenizer_in_model_config(server):
    assert server.server.models["text"].plan.tokenizer == text_tokenizer()
    with Client(server.address) as client:
        parameters = client.model_config("text")["parameters"]
        assert parameters[TOKENIZER_KEY] == {"string_value": text_tokenizer().to_json()}
        assert client.tokenizer("text") == text_tokenizer()
        assert client.tokenizer("text", version="1") == text_tokenizer()
        assert client.tokenizer("ids") is None
        assert TOKENIZER_KEY not in client.model_config("ids")["parameters"]
    async with AsyncClient(server.address) as client:
        assert await client.tokenizer("text") == text_tokenizer()


def test_tritonclient_reads_the_tokenizer(server):
    # In a child process: tritonclient's `inference.*` messages and bnserve's cannot share one.
    code = ("import sys, tritonclient.grpc as t\n"
            "c = t.InferenceServerClient(url=sys.argv[1])\n"
            "config = c.get_model_config('text', as_json=True)['config']\n"
            f"print(config['parameters']['{TOKENIZER_KEY}']['string_value'])\n")
    done = subprocess.run([sys.executable, "-c", code, server.address], capture_output=True,
                          text=True, timeout=60, check=True)
    assert Tokenizer.from_json(done.stdout.strip()) == text_tokenizer()


def test_the_client_s_tokenizer_gives_the_training_ids_of_the_training_sentences(server):
    """Training and client must not drift apart: the corpus's rows, written out as sentences
    with the training vocabulary, encode to the very same ids with the tokenizer the server
    reports for the exported model."""
    dataset = load_dataset("text")
    words = make_text(seed=0)[3]  # the generator's own id -> word table
    sentences = [" ".join(words[i] for i in row if i).capitalize() + "." for row in dataset.x]
    with Client(server.address) as client:
        ids = client.tokenizer("text").encode(sentences)
    np.testing.assert_array_equal(ids, dataset.x)


def test_the_served_model_knows_unknown_words(text_repository):
    """Trained with some words replaced by <unk> (TrainConfig.unknown_word_rate): with one
    word in five outside the vocabulary, it still names the topic of unseen sentences."""
    x, y, _, _ = make_text(seed=1)
    unknown = (np.random.default_rng(0).uniform(size=x.shape) < 0.2) & (x > 0)
    session = ort.InferenceSession(str(text_repository / "text" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    clean = (session.run(None, {"input": x})[0].argmax(axis=1) == y).mean()
    noisy = (session.run(None, {"input": np.where(unknown, 1, x)})[0].argmax(axis=1) == y).mean()
    assert clean >= 0.85 and noisy >= 0.82, (clean, noisy)


def printed_rows(stdout: str) -> list[str]:
    """The label of each ``row N: label score`` line."""
    rows = [line.split() for line in stdout.splitlines() if line.startswith("row ")]
    assert [r[1] for r in rows] == [f"{n}:" for n in range(len(rows))], stdout
    return [r[2] for r in rows]


def test_bnserve_predict_text_prints_the_topics_of_generated_sentences(server, tmp_path):
    x, y, labels, words = make_text(seed=1)  # sentences the model never trained on
    picked = np.concatenate([np.flatnonzero(y == c)[:8] for c in range(len(labels))])
    sentences = [" ".join(words[i] for i in x[row] if i) for row in picked]
    truth = [labels[y[row]] for row in picked]
    with Client(server.address) as client:
        expected = [classes[0].label for classes in client.classify("text", x[picked])]
    flags = [a for s in sentences for a in ("--text", s)]
    done = run_cli("predict", "--model", "text", "--address", server.address, *flags)
    assert done.returncode == 0 and done.stderr == "", done
    assert printed_rows(done.stdout) == expected  # the same ids as the generator's
    right = sum(p == t for p, t in zip(expected, truth, strict=True))
    assert right >= 0.75 * len(truth), (expected, truth)  # the model is ~87% right
    (tmp_path / "lines.txt").write_text("\n".join(sentences) + "\n")
    from_file = run_cli("predict", "--model", "text", "--address", server.address,
                        "--text-file", tmp_path / "lines.txt")
    assert from_file.returncode == 0 and from_file.stdout == done.stdout, from_file


def test_bnserve_predict_text_names_unknown_words_and_the_model_without_a_vocabulary(server):
    done = run_cli("predict", "--model", "text", "--address", server.address,
                   "--text", "The referee blorped the match: a late goal for the team!")
    assert done.returncode == 0, done
    assert printed_rows(done.stdout) == ["sports"]
    assert done.error_lines == ["note: --text 'The referee blorped the match: a late...': 2 of "
                                "11 words not in the vocabulary, sent as '<unk>': blorped, late"]
    refused = run_cli("predict", "--model", "ids", "--address", server.address, "--text", "rain")
    assert refused.returncode == 1 and refused.error_lines == [
        "bnserve predict: error: --text: model ids ships no vocabulary (its model.onnx has no "
        "tokenizer: not a text model, or exported from token ids without a vocabulary); "
        "expected a text model, or token ids with --input FILE.npy"], refused
    wordless = run_cli("predict", "--model", "text", "--address", server.address,
                       "--text", "rain", "--text", "?!")
    assert wordless.returncode == 1 and wordless.error_lines == [
        "bnserve predict: error: --text '?!': has no words (the tokenizer keeps runs of "
        "letters, digits and _); expected at least one"], wordless


def load(root, name: str):
    server = ServerSettings(repository=root, drift_sample_rate=0)
    entry = ModelRepository(root).snapshot(name).versions[1]
    return load_version(name, entry, default_settings(server), server)


def broken(spec: dict) -> str:
    return json.dumps(spec)


@pytest.mark.parametrize(("change", "says"), [
    (lambda spec: "{not json", "model.onnx metadata 'bnserve.tokenizer' is not a tokenizer spec: "
                               "not JSON"),
    (lambda spec: broken({**spec, "format": 9}), "format 9 is newer than this bnserve reads"),
    (lambda spec: broken({**spec, "sequence_length": 30}),
     "input 'input' takes rows of 24 ids, but the tokenizer makes rows of 30"),
    (lambda spec: broken({**spec, "vocabulary": [*spec["vocabulary"], "zebra", "yak"]}),
     "input 'input' takes ids in [0, 117], but the tokenizer's 120 words have ids 0 to 119"),
    (lambda spec: broken({**spec, "input": "tokens"}),
     "input 'tokens' is not an integer input of the model (it has 'input')"),
])
def test_a_bad_tokenizer_refuses_the_version_with_the_reason(text_repository, tmp_path, change,
                                                             says):
    graph = onnx.load(str(text_repository / "text" / "1" / "model.onnx"))
    spec = text_tokenizer().to_dict()
    without_tokenizer(graph).metadata_props.add(key=TOKENIZER_KEY, value=change(spec))
    (tmp_path / "text" / "1").mkdir(parents=True)
    onnx.save(graph, str(tmp_path / "text" / "1" / "model.onnx"))
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path, "text")
    assert says in str(info.value)


def test_set_graph_tokenizer_replaces_the_entry(text_repository):
    graph = onnx.load(str(text_repository / "text" / "1" / "model.onnx"))
    other = Tokenizer(("<pad>", "<unk>", "a"), 24)
    set_graph_tokenizer(graph, other)
    assert graph_tokenizer(graph) == other
    assert [p.key for p in graph.metadata_props].count(TOKENIZER_KEY) == 1
