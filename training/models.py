"""Model builders keyed by ``--model``: the zoo, each with BatchNorm where it belongs.

    mlp    tabular (F,)      [Linear -> BatchNorm1d -> ReLU] x 2 -> Linear
    cnn    images (C, H, W)  ResNet-style Conv2d -> BatchNorm2d blocks, BatchNorm1d head
    audio  (C, T) waveforms  strided Conv1d -> BatchNorm1d stack, mean+max pool over time
    text   (L,) token ids    Embedding -> Conv1d -> BatchNorm1d x 2, max pool over time
    rnn    text or audio     GRU with sequence-wise BatchNorm1d on W_x x (Laurent et al. 2016)

``spec.norm == "none"`` builds the same network with every BatchNorm replaced by Identity
(and a bias put back on the layer before it). Adding a model is one function that turns a
``ModelSpec`` into an ``nn.Module`` mapping (B, *spec.sample_shape) standardized inputs to
(B, spec.num_classes) logits; ``inputs`` names the dataset modalities it takes::

    @register_model("mine", inputs=("tabular",))
    def build_mine(spec: ModelSpec) -> nn.Module:
        ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnserve.training.config import NORMS, BatchNormOptions, ModelSpec
from bnserve.training.errors import DatasetError, RegistryError, RunningStatisticsError

ModelBuilder = Callable[[ModelSpec], nn.Module]
MODELS: dict[str, ModelBuilder] = {}
MODEL_INPUTS: dict[str, tuple[str, ...]] = {}  # model -> modalities it takes; () = any


def register_model(name: str, *, inputs: tuple[str, ...] = ()) -> Callable[[ModelBuilder],
                                                                            ModelBuilder]:
    """Register a builder under ``name`` (the value of ``--model``).

    ``inputs``: the dataset modalities (``datasets.MODALITIES``) the model takes, in order
    of preference for reading a user's .npz; empty means the builder checks shapes itself.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        MODEL_INPUTS[name] = inputs
        return builder

    return decorator


def check_model_takes(kind: str, modality: str, dataset: str) -> None:
    """Raise ``DatasetError`` unless model ``kind`` can take a dataset of ``modality``."""
    from bnserve.training.datasets import MODALITIES

    if kind not in MODELS:
        raise RegistryError(f"unknown model {kind!r}; known: {', '.join(sorted(MODELS))}")
    takes = MODEL_INPUTS[kind]
    if takes and modality not in takes:
        fits = sorted(k for k, v in MODEL_INPUTS.items() if modality in v)
        raise DatasetError(
            f"model {kind!r} takes {' or '.join(MODALITIES[m] for m in takes)}, but dataset "
            f"{dataset!r} holds {MODALITIES.get(modality, modality)}"
            + (f"; models for it: {', '.join(fits)}" if fits else "")
        )


def build_model(spec: ModelSpec) -> nn.Module:
    try:
        builder = MODELS[spec.kind]
    except KeyError:
        raise RegistryError(
            f"unknown model {spec.kind!r}; known: {', '.join(sorted(MODELS))}"
        ) from None
    if spec.norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {spec.norm!r}")
    return builder(spec)


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm1d/2d/3d (and subclass) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def require_running_statistics(module: nn.Module) -> None:
    """Raise ``RunningStatisticsError`` unless every BatchNorm layer has running statistics.

    Without them BatchNorm normalizes each batch by its own statistics even in eval mode,
    so a row's answer would depend on the other rows sent with it.
    """
    missing = [
        name for name, m in module.named_modules()
        if isinstance(m, _BatchNorm)
        and (not m.track_running_stats or m.running_mean is None or m.running_var is None)
    ]
    if missing:
        raise RunningStatisticsError(
            f"{len(missing)} BatchNorm layer(s) have no running statistics "
            f"(track_running_stats=False): {', '.join(missing)}; their eval output would "
            "depend on the batch, so there is nothing to freeze into the graph"
        )


def norm_layer(dims: int, features: int, opts: BatchNormOptions, norm: str = "batch") -> nn.Module:
    """BatchNorm{dims}d over ``features`` channels built from ``opts``; Identity for norm none."""
    if norm == "none":
        return nn.Identity()
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
    return bn(features, eps=opts.eps, momentum=opts.momentum, affine=opts.affine,
              track_running_stats=opts.track_running_stats)


class ConvBN(nn.Sequential):
    """Conv without bias, then BatchNorm2d: the pair the exporter folds into one Conv.

    With norm "none" the conv keeps its bias and the BatchNorm slot holds an Identity.
    """

    def __init__(self, cin: int, cout: int, opts: BatchNormOptions, *, kernel_size: int = 3,
                 stride: int = 1, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2,
                      bias=norm == "none"),
            norm_layer(2, cout, opts, norm),
        )


class ConvBN1d(nn.Sequential):
    """Conv1d without bias, then BatchNorm1d over (B, C, T): folded into one Conv at export."""

    def __init__(self, cin: int, cout: int, opts: BatchNormOptions, *, kernel_size: int,
                 stride: int = 1, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv1d(cin, cout, kernel_size, stride, padding=kernel_size // 2,
                      bias=norm == "none"),
            norm_layer(1, cout, opts, norm),
        )


class LinearBN(nn.Sequential):
    """Linear without bias, then BatchNorm1d over (B, F): folded into one Gemm at export."""

    def __init__(self, fin: int, fout: int, opts: BatchNormOptions, *, norm: str = "batch") -> None:
        super().__init__(nn.Linear(fin, fout, bias=norm == "none"),
                         norm_layer(1, fout, opts, norm))


class ResidualBlock(nn.Module):
    """Two ConvBN layers and a shortcut (a strided 1x1 ConvBN when the shape changes)."""

    def __init__(self, cin: int, cout: int, opts: BatchNormOptions, *, stride: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, cout, opts, stride=stride, norm=norm)
        self.conv2 = ConvBN(cout, cout, opts, norm=norm)
        self.shortcut: nn.Module = (
            nn.Identity() if cin == cout and stride == 1
            else ConvBN(cin, cout, opts, kernel_size=1, stride=stride, norm=norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W)
        out = torch.relu(self.conv1(x))  # (B, Cout, H/s, W/s)
        return torch.relu(self.conv2(out) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A stem, two residual stages (the second halves H and W), then a BatchNorm1d head."""

    def __init__(self, in_channels: int, num_classes: int, width: int,
                 opts: BatchNormOptions, *, dropout: float = 0.1, norm: str = "batch") -> None:
        super().__init__()
        self.stem = ConvBN(in_channels, width, opts, norm=norm)
        self.stage1 = ResidualBlock(width, width, opts, norm=norm)
        self.stage2 = ResidualBlock(width, 2 * width, opts, stride=2, norm=norm)
        self.head = nn.Sequential(
            nn.Linear(2 * width, 2 * width, bias=norm == "none"),
            norm_layer(1, 2 * width, opts, norm),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = torch.relu(self.stem(x))  # (B, W, H, W)
        x = self.stage2(self.stage1(x))  # (B, 2W, H/2, W/2)
        x = x.mean(dim=(2, 3))  # (B, 2W): global average pool
        return self.head(x)  # (B, num_classes) logits


@register_model("cnn", inputs=("image",))
def build_cnn(spec: ModelSpec) -> nn.Module:
    if len(spec.sample_shape) != 3:
        raise ValueError(f"cnn needs (C, H, W) samples, got shape {spec.sample_shape}")
    return SmallResNet(spec.sample_shape[0], spec.num_classes, spec.width, spec.batchnorm,
                       norm=spec.norm)


class MLP(nn.Module):
    """Two hidden LinearBN + ReLU blocks, dropout, a linear classifier."""

    def __init__(self, features: int, num_classes: int, width: int, opts: BatchNormOptions,
                 *, dropout: float = 0.1, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            LinearBN(features, width, opts, norm=norm), nn.ReLU(),
            LinearBN(width, width, opts, norm=norm), nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F)
        return self.classifier(self.body(x))  # (B, num_classes) logits


@register_model("mlp", inputs=("tabular",))
def build_mlp(spec: ModelSpec) -> nn.Module:
    if len(spec.sample_shape) != 1:
        raise ValueError(f"mlp needs (F,) feature vectors, got shape {spec.sample_shape}")
    return MLP(spec.sample_shape[0], spec.num_classes, spec.width, spec.batchnorm,
               norm=spec.norm)


class AudioCNN(nn.Module):
    """A learned strided filterbank over the waveform, three ConvBN1d stages, mean+max pool."""

    def __init__(self, in_channels: int, num_classes: int, width: int, opts: BatchNormOptions,
                 *, dropout: float = 0.1, norm: str = "batch") -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBN1d(in_channels, width, opts, kernel_size=31, stride=8, norm=norm), nn.ReLU(),
            ConvBN1d(width, width, opts, kernel_size=5, stride=2, norm=norm), nn.ReLU(),
            ConvBN1d(width, 2 * width, opts, kernel_size=5, stride=2, norm=norm), nn.ReLU(),
            ConvBN1d(2 * width, 2 * width, opts, kernel_size=3, stride=2, norm=norm), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        h = self.features(x)  # (B, 2W, T/64)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # (B, 4W)
        return self.classifier(pooled)  # (B, num_classes) logits


@register_model("audio", inputs=("audio",))
def build_audio(spec: ModelSpec) -> nn.Module:
    if len(spec.sample_shape) != 2:
        raise ValueError(f"audio needs (C, T) samples, got shape {spec.sample_shape}")
    return AudioCNN(spec.sample_shape[0], spec.num_classes, spec.width, spec.batchnorm,
                    norm=spec.norm)


def _require_vocabulary(spec: ModelSpec) -> None:
    if len(spec.sample_shape) != 1 or spec.vocab_size < 1:
        raise ValueError(f"{spec.kind} on text needs (L,) token ids and a vocab_size, got shape "
                         f"{spec.sample_shape} and vocab_size {spec.vocab_size}")


class TextCNN(nn.Module):
    """Token embeddings, two ConvBN1d layers over positions, max pool over time."""

    def __init__(self, vocab_size: int, num_classes: int, width: int, opts: BatchNormOptions,
                 *, dropout: float = 0.1, norm: str = "batch") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.features = nn.Sequential(
            ConvBN1d(width, 2 * width, opts, kernel_size=3, norm=norm), nn.ReLU(),
            ConvBN1d(2 * width, 2 * width, opts, kernel_size=3, norm=norm), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) int64
        h = self.embed(tokens).transpose(1, 2)  # (B, E, L)
        h = self.features(h).amax(dim=2)  # (B, 2W)
        return self.classifier(h)  # (B, num_classes) logits


@register_model("text", inputs=("text",))
def build_text(spec: ModelSpec) -> nn.Module:
    _require_vocabulary(spec)
    return TextCNN(spec.vocab_size, spec.num_classes, spec.width, spec.batchnorm,
                   norm=spec.norm)


class SequenceBatchNormGRU(nn.Module):
    """A GRU whose input-to-hidden projection is batch-normalized over batch and time.

    Laurent et al. 2016, "Batch Normalized Recurrent Neural Networks": the gates get
    BN(W_x x_t) with statistics over every (batch, time) position, and nothing on
    W_h h_{t-1}. W_x is a Conv1d (kernel = stride = frame: one step per frame of a
    waveform, or per token with frame 1) and BatchNorm1d normalizes its (B, 3H, S) output.
    nn.GRU always multiplies its input by its own W_ih, so W_ih is fixed to the identity
    (frozen): its gates then see exactly BN(W_x x_t) + b_ih, and the fast GRU kernel (and
    one ONNX GRU node at export) runs the recurrence. The exporter folds this BatchNorm
    into the Conv1d before it like any other: frozen statistics make it affine.
    """

    def __init__(self, in_channels: int, hidden: int, opts: BatchNormOptions, *,
                 frame: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.input_projection = nn.Conv1d(in_channels, 3 * hidden, frame, stride=frame,
                                          bias=norm == "none")
        self.input_norm = norm_layer(1, 3 * hidden, opts, norm)
        self.gru = nn.GRU(3 * hidden, hidden, batch_first=True)
        with torch.no_grad():
            self.gru.weight_ih_l0.copy_(torch.eye(3 * hidden))
        self.gru.weight_ih_l0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        gates_x = self.input_norm(self.input_projection(x))  # (B, 3H, S): S = T / frame
        _, h = self.gru(gates_x.transpose(1, 2))  # (1, B, H): the last step's state
        return h[0]  # (B, H)


RNN_STEPS = 32  # audio: frames per clip the GRU steps through (1024 samples -> 32 of 32)


class RecurrentClassifier(nn.Module):
    """Token embeddings (text) or raw frames (audio) -> sequence-BN GRU -> linear classifier."""

    def __init__(self, spec: ModelSpec, *, dropout: float = 0.1) -> None:
        super().__init__()
        width, opts = spec.width, spec.batchnorm
        if spec.vocab_size:
            _require_vocabulary(spec)
            self.embed: nn.Module | None = nn.Embedding(spec.vocab_size, width, padding_idx=0)
            in_channels, frame = width, 1
        else:
            if len(spec.sample_shape) != 2:
                raise ValueError(f"rnn needs (L,) token ids or (C, T) sequences, got shape "
                                 f"{spec.sample_shape}")
            self.embed = None
            in_channels, steps = spec.sample_shape[0], min(RNN_STEPS, spec.sample_shape[1])
            frame = spec.sample_shape[1] // steps  # a ragged tail of T is dropped
        self.gru = SequenceBatchNormGRU(in_channels, width, opts, frame=frame, norm=spec.norm)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, spec.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) int64 or (B, C, T)
        if self.embed is not None:
            x = self.embed(x).transpose(1, 2)  # (B, E, L)
        return self.classifier(self.gru(x))  # (B, num_classes) logits


@register_model("rnn", inputs=("text", "audio"))
def build_rnn(spec: ModelSpec) -> nn.Module:
    return RecurrentClassifier(spec)
