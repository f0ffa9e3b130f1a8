"""Generated datasets for the audio and text zoo models: deterministic, small, not trivial.

    make_audio(seed) -> x (N, 1, 1024) float32 waveforms at 8 kHz, y (N,), labels
    make_text(seed)  -> x (N, 24) int64 token ids (0 = padding), y (N,), labels, vocabulary
    text_tokenizer() -> the rules that turn a sentence into make_text's ids

Both draw every random choice from one ``numpy.random.Generator`` seeded by ``seed``, so a
seed always gives the same bytes. Classes overlap on purpose (tone bands cover part of the
chirps' sweep, topics share filler words and a few topic words) so a model has to learn.
"""

from __future__ import annotations

import numpy as np

from bnserve.proto.tokenizer import Tokenizer

SAMPLE_RATE = 8000  # Hz
AUDIO_SAMPLES = 1024  # 128 ms per clip
AUDIO_PER_CLASS = 200
AUDIO_LABELS = ("low_tone", "high_tone", "up_chirp", "down_chirp", "am_tone", "white_noise",
                "pink_noise")

TEXT_LENGTH = 24  # tokens per sentence, padded with 0 or truncated
TEXT_PER_CLASS = 300
PAD, UNKNOWN = "<pad>", "<unk>"
FILLER = ("the a an and or but of to in on at for with from by is are was were be been it this "
          "that these those we you they he she i my our your their very really just so then "
          "today yesterday about some many more most new old good bad big small").split()
TOPICS = {
    "sports": "team match goal score player coach season league win lost ball referee "
              "stadium fans final run race training".split(),
    "weather": "rain snow wind storm sunny cloudy forecast cold warm temperature humid fog "
               "season sky degrees run heat".split(),
    "cooking": "recipe oven bake salt pepper flour butter sauce boil fry dinner taste "
               "kitchen heat spoon onion".split(),
    "computing": "server code bug compile memory network laptop software update install "
                 "python data cloud run training keyboard".split(),
}


def make_audio(seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Tones in two pitch bands, up/down chirps, AM tones, white and pink noise.

    Each clip has a random amplitude (0.2-1), phase, onset and length (50-100% of the clip),
    and background white noise 10-25 dB below the signal. The tone bands (150-600 Hz and
    1-2.5 kHz) lie inside the chirps' sweep (200-3000 Hz), so pitch alone does not decide.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(AUDIO_SAMPLES) / SAMPLE_RATE  # (T,) seconds
    xs, ys = [], []
    for label in range(len(AUDIO_LABELS)):
        for _ in range(AUDIO_PER_CLASS):
            xs.append(_audio_clip(label, t, rng))
            ys.append(label)
    x = np.stack(xs).astype(np.float32)[:, None, :]  # (N, 1, T)
    return x, np.asarray(ys, dtype=np.int64), AUDIO_LABELS


def _audio_clip(label: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi)
    name = AUDIO_LABELS[label]
    if name in ("low_tone", "high_tone", "am_tone"):
        lo, hi = {"low_tone": (150, 600), "high_tone": (1000, 2500), "am_tone": (300, 1500)}[name]
        signal = np.sin(2 * np.pi * rng.uniform(lo, hi) * t + phase)
        if name == "am_tone":  # 30-80 Hz modulation, 60-100% deep
            depth, rate = rng.uniform(0.6, 1.0), rng.uniform(30, 80)
            signal *= 1 - depth * 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)))
    elif name in ("up_chirp", "down_chirp"):
        f0, f1 = rng.uniform(200, 600), rng.uniform(1800, 3000)
        if name == "down_chirp":
            f0, f1 = f1, f0
        duration = t[-1]
        signal = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * duration)) + phase)
    else:
        white = rng.standard_normal(len(t))
        if name == "pink_noise":  # 1/f power: scale the spectrum by 1/sqrt(f)
            spectrum = np.fft.rfft(white)
            spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
            white = np.fft.irfft(spectrum, n=len(t))
        signal = white / (white.std() + 1e-8) * 0.5
    length = int(len(t) * rng.uniform(0.5, 1.0))  # the sound lasts 50-100% of the clip
    start = rng.integers(0, len(t) - length + 1)
    envelope = np.zeros(len(t))
    envelope[start:start + length] = 1.0
    clip = rng.uniform(0.2, 1.0) * signal * envelope
    noise_db = rng.uniform(10, 25)
    return clip + rng.standard_normal(len(t)) * clip.std() * 10 ** (-noise_db / 20)


def text_vocabulary() -> tuple[str, ...]:
    """Token id -> word: padding, unknown, filler words, then every topic word once."""
    words = [PAD, UNKNOWN, *FILLER]
    for topic_words in TOPICS.values():
        words += [w for w in topic_words if w not in words]
    return tuple(words)


def text_tokenizer() -> Tokenizer:
    """What ``make_text``'s ids mean as text: its vocabulary, lower-case words (punctuation
    dropped), ``<pad>`` = 0 after the words, ``<unk>`` = 1 for any other word, rows of
    ``TEXT_LENGTH`` ids, longer texts cut after their first ``TEXT_LENGTH`` words."""
    vocabulary = text_vocabulary()
    return Tokenizer(vocabulary, TEXT_LENGTH, pad_id=vocabulary.index(PAD),
                     unknown_id=vocabulary.index(UNKNOWN), lowercase=True, split="words",
                     truncation_side="right", padding_side="right")


def make_text(seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Sentences of 10-24 words: ~64% shared filler, ~30% topic words, ~6% another topic's.

    A few topic words belong to two topics ("season", "heat", "run", "training"), and a
    sentence sometimes borrows words from another topic, so single words mislead.
    """
    rng = np.random.default_rng(seed)
    vocabulary = text_vocabulary()
    index = {w: i for i, w in enumerate(vocabulary)}
    labels = tuple(TOPICS)
    x = np.zeros((len(labels) * TEXT_PER_CLASS, TEXT_LENGTH), dtype=np.int64)  # (N, L)
    y = np.repeat(np.arange(len(labels), dtype=np.int64), TEXT_PER_CLASS)
    for row, label in enumerate(y):
        own = TOPICS[labels[label]]
        other = TOPICS[labels[(label + rng.integers(1, len(labels))) % len(labels)]]
        for pos in range(rng.integers(10, TEXT_LENGTH + 1)):
            draw = rng.uniform()
            pool = FILLER if draw < 0.64 else own if draw < 0.94 else other
            x[row, pos] = index[pool[rng.integers(len(pool))]]
    return x, y, labels, vocabulary
