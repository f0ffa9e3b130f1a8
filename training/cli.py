"""``bnserve train`` and ``bnserve export``.

Only the standard library is imported here; torch, scikit-learn and onnx are imported by
the handlers, so ``bnserve --help`` works with the base install.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnserve.training.config import TrainConfig
from bnserve.training.errors import TrainingError

DEFAULTS = TrainConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a BatchNorm model and write a run folder",
        description="Train a BatchNorm model on a dataset; write RUN_DIR/checkpoint.pt, "
        "metrics.json and curves.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--model", default=DEFAULTS.model, help="registered model builder")
    train.add_argument("--dataset", default=DEFAULTS.dataset, help="registered dataset")
    train.add_argument("--run-dir", type=Path, required=True, help="folder to write the run to")
    train.add_argument("--epochs", type=_positive_int, default=DEFAULTS.epochs,
                       help="passes over the training split")
    train.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size,
                       help="rows per optimizer step")
    train.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate")
    train.add_argument("--seed", type=int, default=DEFAULTS.seed,
                       help="seeds init, dropout, split and shuffling")
    train.add_argument("--threads", type=_positive_int, default=DEFAULTS.num_threads,
                       help="torch CPU threads")
    train.add_argument("--dry-run", action="store_true",
                       help=f"one epoch of {DEFAULTS.dry_run_steps} steps, for tests")
    train.set_defaults(handler=run_train, extra="training")

    export = subparsers.add_parser(
        "export", help="export a trained run to ONNX, verify it, publish it to a repository",
        description="Export RUN_DIR's model (raw inputs in, probabilities out, BatchNorm "
        "folded) to REPOSITORY/NAME/VERSION/model.onnx with metadata.json, after checking "
        "it against PyTorch. Nothing is written when a check fails.",
    )
    export.add_argument("--run-dir", type=Path, required=True, help="run folder from `train`")
    export.add_argument("--repository", type=Path, required=True, help="model repository")
    export.add_argument("--name", required=True, help="model name in the repository")
    export.add_argument("--version", type=_positive_int, default=None,
                        help="version to publish (default: highest existing + 1); "
                        "an existing version is never overwritten")
    export.set_defaults(handler=run_export, extra="training")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bnserve.training.train import train

    config = replace(DEFAULTS, model=args.model, dataset=args.dataset, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     num_threads=args.threads, dry_run=args.dry_run)
    try:
        result = train(config, args.run_dir)
    except TrainingError as exc:
        print(f"bnserve train: error: {exc}", file=sys.stderr)
        return 1
    final = result.metrics["final"]
    print(f"trained {config.model} on {config.dataset} in {result.seconds:.1f} s "
          f"({result.metrics['epochs']} epochs): val accuracy {final['val_accuracy']:.2%} "
          f"(best {result.metrics['best_val_accuracy']:.2%}), val loss {final['val_loss']:.4f}")
    print(f"wrote {args.run_dir}/: checkpoint.pt, metrics.json, curves.png")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from bnserve.training.export import export_run, format_summary

    try:
        result = export_run(args.run_dir, args.repository, args.name, args.version)
    except TrainingError as exc:
        print(f"bnserve export: error: {exc}", file=sys.stderr)
        print("bnserve export: nothing was written to the repository", file=sys.stderr)
        return 1
    print(format_summary(result))
    return 0
