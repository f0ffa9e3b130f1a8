"""Plain dataclasses that describe a model and a training run (stdlib only).

The CLI reads the defaults from here for ``--help`` without importing torch; the
checkpoint stores them as dicts so the exporter can rebuild the exact model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bnserve.training.errors import ConfigError

NORMS = ("batch", "none")  # --norm: BatchNorm where it belongs, or the same network without
# The dataset each zoo model trains on when --dataset and --data are not given.
DEFAULT_DATASETS = {"mlp": "wine", "cnn": "digits", "audio": "audio", "text": "text",
                    "rnn": "text"}
# TrainConfig.unknown_word_rate when not given, per model (0 for the others). On the zoo
# corpus the text CNN keeps its val accuracy with 0.1 and learns what <unk> is; the GRU
# (rnn) lost 5-11 points of val accuracy at every seed tried (0, 1, 2) at 10 epochs and
# gained little on unknown words, so it trains without.
UNKNOWN_WORD_RATES = {"text": 0.1}


@dataclass(frozen=True)
class BatchNormOptions:
    """How every BatchNorm layer of a model is built."""

    # PyTorch's default; the exporter folds it into the Conv/Gemm, so it only matters in training.
    eps: float = 1e-5
    # PyTorch's default: running stats average the last ~10 batches, enough for ~20 steps/epoch.
    momentum: float = 0.1
    # Learned scale and shift; folded into the preceding layer's weights at export.
    affine: bool = True
    # Running statistics are what the exported graph freezes; export refuses a model without.
    track_running_stats: bool = True


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model before loading its state_dict."""

    kind: str  # key in models.MODELS
    sample_shape: tuple[int, ...]  # one input without the batch axis, e.g. (1, 8, 8)
    num_classes: int
    width: int = 32  # channels of the first stage (hidden units for non-conv models)
    batchnorm: BatchNormOptions = field(default_factory=BatchNormOptions)
    norm: str = "batch"  # "none": the same network with every BatchNorm left out
    vocab_size: int = 0  # token-id inputs: the embedding's rows; 0 for float inputs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            kind=str(data["kind"]),
            sample_shape=tuple(int(d) for d in data["sample_shape"]),
            num_classes=int(data["num_classes"]),
            width=int(data["width"]),
            batchnorm=BatchNormOptions(**data["batchnorm"]),
            norm=str(data.get("norm", "batch")),  # checkpoints from before --norm
            vocab_size=int(data.get("vocab_size", 0)),
        )


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run; the defaults train the digits CNN."""

    # Which builder in models.MODELS; adding a model is one registered function.
    model: str = "cnn"
    # Which loader in datasets.DATASETS.
    dataset: str = "digits"
    # digits passes 98% val accuracy by epoch 4 and stays ~99% after; 10 leaves margin for
    # other seeds and trains in ~4 s on one core.
    epochs: int = 10
    # 22 full batches per epoch over 1,437 training images; 64 rows give BatchNorm stable
    # batch statistics. The last partial batch is dropped so no batch is tiny.
    batch_size: int = 64
    # Peak LR of the one-cycle schedule: 1e-3 to 3e-2 all end near 99% on digits, but 1e-2 and
    # up swing in mid-run (val accuracy dips to 55-90%); 3e-3 climbs steadily.
    lr: float = 3e-3
    # AdamW decay: 0 to 1e-2 all end at ~99% here; a small value guards bigger zoo models.
    weight_decay: float = 1e-4
    # 20% held out (360 digits, stratified): enough to read 95% accuracy to about +-1%.
    val_fraction: float = 0.2
    # First-stage channels of the CNN: 32 reaches ~99%; 16 trains faster (quick builds).
    width: int = 32
    # Seeds weight init, dropout, the split and the shuffling: same seed, same weights.
    seed: int = 0
    # 8x8 convs are too small to split: one thread trained 10 epochs in 3.8 s, two in 5.0 s
    # on a 2-core machine. Results are deterministic for a fixed thread count.
    num_threads: int = 1
    # --dry-run: one epoch of a few steps, for tests; the run folder is still written.
    dry_run: bool = False
    # Optimizer steps per epoch under --dry-run.
    dry_run_steps: int = 3
    # How every BatchNorm layer is built (--bn-eps, --bn-momentum, --no-affine).
    batchnorm: BatchNormOptions = field(default_factory=BatchNormOptions)
    # "none" builds the same network without BatchNorm: the baseline BN is measured against.
    norm: str = "batch"
    # A user's .npz (arrays x, y, optional labels) instead of a registered dataset.
    data: str | None = None
    # Early stopping: stop after this many epochs without a lower val loss. None trains every
    # epoch. Either way the checkpoint keeps the best epoch: the one with the lowest val loss
    # (with one-cycle usually the last, since the rate ends near zero).
    patience: int | None = None
    # Token datasets with a tokenizer: this share of a training batch's words (never its
    # padding) is replaced by the unknown-word id, fresh each step, so the model learns
    # what <unk> means. The zoo corpus holds no unknown word: without this, a word outside
    # the vocabulary at serving time (bnserve predict --text) goes through an embedding row
    # no training step touched. None: the model's UNKNOWN_WORD_RATES entry (text 0.1, which
    # holds the served model up with 1 word in 5 unknown: tests/test_text_models.py).
    # Ignored for other data.
    unknown_word_rate: float | None = None

    @property
    def word_dropout_rate(self) -> float:
        """``unknown_word_rate``, or the model's default when it is None."""
        if self.unknown_word_rate is not None:
            return self.unknown_word_rate
        return UNKNOWN_WORD_RATES.get(self.model, 0.0)

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ConfigError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["batchnorm"] = BatchNormOptions(**data.get("batchnorm", {}))
        values.setdefault("unknown_word_rate", 0.0)  # runs from before the knob: none
        return cls(**values)


def config_problems(config: TrainConfig) -> list[str]:
    """What is wrong with ``config``'s hyperparameters, one phrase each (empty: nothing).

    Each phrase names the field, its flag and the value, so one line tells what to change.
    """
    problems = []

    def at_least(name: str, flag: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{name} ({flag}) must be an integer >= {low}, got {value!r}")

    def positive(name: str, flag: str, value: Any, *, zero: bool = False) -> None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and (value >= 0 if zero else value > 0))
        if not ok:
            problems.append(f"{name} ({flag}) must be a finite number {'>=' if zero else '>'} 0, "
                            f"got {value!r}")

    at_least("epochs", "--epochs", config.epochs, 1)
    at_least("batch_size", "--batch-size", config.batch_size, 1)
    # A BatchNorm layer normalizes by the batch's own statistics while training: one row has
    # none (its variance is 0), and torch would refuse it mid-epoch. Without BatchNorm 1 is fine.
    if config.norm == "batch" and config.batch_size == 1:
        problems.append("batch_size (--batch-size) must be >= 2 with BatchNorm (one row has no "
                        "batch statistics; --norm none trains on single rows), got 1")
    positive("lr", "--lr", config.lr)
    positive("weight_decay", "no flag", config.weight_decay, zero=True)
    at_least("width", "--width", config.width, 1)
    at_least("num_threads", "--threads", config.num_threads, 1)
    at_least("dry_run_steps", "dry_run_steps", config.dry_run_steps, 1)
    if config.patience is not None:
        at_least("patience", "--patience", config.patience, 1)
    rate = config.unknown_word_rate
    if rate is not None and (isinstance(rate, bool)
                             or not (isinstance(rate, (int, float)) and 0 <= rate < 1)):
        problems.append(f"unknown_word_rate (--unknown-word-rate) must be in [0, 1), got "
                        f"{rate!r}")
    fraction = config.val_fraction
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        problems.append(f"val_fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if config.norm not in NORMS:
        problems.append(f"norm (--norm) must be one of {', '.join(NORMS)}, got {config.norm!r}")
    bn = config.batchnorm
    positive("batchnorm.eps", "--bn-eps", bn.eps)
    momentum = bn.momentum
    if momentum is not None and not (isinstance(momentum, (int, float))
                                     and math.isfinite(momentum) and 0 <= momentum <= 1):
        problems.append(f"batchnorm.momentum (--bn-momentum) must be in [0, 1], got {momentum!r}")
    return problems
