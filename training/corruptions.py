"""Corruptions of raw inputs at three severities, for the recalibration report.

    digits (N, 1, 8, 8), pixel values 0..16      audio (N, 1, 1024) waveforms at 8 kHz
    contrast   toward mid-gray 8, x0.6/0.4/0.25   gain        quieter: x0.5/0.25/0.1
    brightness +2 / +4 / +8                        dc_offset   +0.2 / +0.5 / +1.0
    noise      gaussian, sd 1 / 2 / 3              noise       white, sd 0.05 / 0.1 / 0.2
    blur       1/2/3 passes of a 5-point average   lowpass     moving average of 3/5/9 taps
    gamma      16 (x/16)^g, g 0.7 / 0.5 / 0.3      speed       played 1.1/1.25/1.5x faster

Each is what a changed sensor does (a washed-out scanner, a re-tuned microphone), except
``speed``, which moves every pitch: it changes what the classes sound like, not only the
statistics, and is there to show what recalibration cannot undo. No clipping: a sensor's
new range is part of the shift. All are deterministic given the generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SEVERITIES = (1, 2, 3)


@dataclass(frozen=True)
class Corruption:
    name: str
    levels: tuple[float, float, float]  # the parameter at severity 1, 2, 3
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

    def __call__(self, x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        return self.apply(x, self.levels[severity - 1], rng).astype(np.float32)


def _contrast(x: np.ndarray, c: float, _: np.random.Generator) -> np.ndarray:
    return 8.0 + c * (x - 8.0)


def _shift(x: np.ndarray, b: float, _: np.random.Generator) -> np.ndarray:
    return x + b


def _noise(x: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sd, size=x.shape)


def _blur(x: np.ndarray, passes: float, _: np.random.Generator) -> np.ndarray:
    for _ in range(int(passes)):  # each pixel and its 4 neighbours, zero outside the image
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        x = (p[..., 1:-1, 1:-1] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2]
             + p[..., 1:-1, 2:]) / 5
    return x


def _gamma(x: np.ndarray, g: float, _: np.random.Generator) -> np.ndarray:
    return 16.0 * (np.clip(x, 0.0, None) / 16.0) ** g


def _gain(x: np.ndarray, g: float, _: np.random.Generator) -> np.ndarray:
    return x * g


def _lowpass(x: np.ndarray, taps: float, _: np.random.Generator) -> np.ndarray:
    kernel = np.ones(int(taps)) / taps
    return np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), -1, x)


def _speed(x: np.ndarray, rate: float, _: np.random.Generator) -> np.ndarray:
    # Resampled by linear interpolation, the clip's end padded with silence: (N, C, T).
    t = np.arange(x.shape[-1])
    source = t * rate
    inside = source <= t[-1]
    out = np.zeros_like(x, dtype=np.float64)
    flat, flat_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    for row, target in zip(flat, flat_out, strict=True):
        target[inside] = np.interp(source[inside], t, row)
    return out


IMAGE = (
    Corruption("contrast", (0.6, 0.4, 0.25), _contrast),
    Corruption("brightness", (2.0, 4.0, 8.0), _shift),
    Corruption("noise", (1.0, 2.0, 3.0), _noise),
    Corruption("blur", (1, 2, 3), _blur),
    Corruption("gamma", (0.7, 0.5, 0.3), _gamma),
)
AUDIO = (
    Corruption("gain", (0.5, 0.25, 0.1), _gain),
    Corruption("dc_offset", (0.2, 0.5, 1.0), _shift),
    Corruption("noise", (0.05, 0.1, 0.2), _noise),
    Corruption("lowpass", (3, 5, 9), _lowpass),
    Corruption("speed", (1.1, 1.25, 1.5), _speed),
)
