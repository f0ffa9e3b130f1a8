"""Write digits as a blurrier, washed-out scanner would see them, for `bnserve recalibrate`.

    python bench/make_shifted_digits.py [OUT_DIR]   # -> shifted.npz, shifted_test.npz, shifted.npy

Each pixel is averaged with its 4 neighbours, then the contrast is halved and 6 added.
The split is `bnserve train`'s default (20% held out, seed 0), so shifted_test.npz holds
digits the model never saw, to score the recalibrated version afterwards.
"""

import sys
from pathlib import Path

import numpy as np

from bnserve.training.datasets import load_dataset
from bnserve.training.train import split_dataset


def scanner(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # (N, 1, 10, 10)
    blurred = (padded[..., 1:-1, 1:-1] + padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1]
               + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) / 5
    return np.clip(0.5 * blurred + 6, 0, 16).astype(np.float32)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = split_dataset(load_dataset("digits"), 0.2, 0)
    np.savez(out / "shifted.npz", x=scanner(x_train), y=y_train)  # y is optional: only reported
    np.savez(out / "shifted_test.npz", x=scanner(x_test), y=y_test)
    np.save(out / "shifted.npy", scanner(x_train))  # the same images, for `bnserve predict`
    print(f"wrote {out / 'shifted.npz'} ({len(x_train)} rows), {out / 'shifted_test.npz'} "
          f"({len(x_test)} rows)")
    print(f"wrote {out / 'shifted.npy'} (the images of shifted.npz, for bnserve predict --input)")


if __name__ == "__main__":
    main()
