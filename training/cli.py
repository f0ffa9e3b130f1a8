"""``bnserve train`` and ``bnserve export`` (and ``recalibrate``).

    bnserve train --model {mlp,cnn,audio,text,rnn} [--dataset NAME | --data x.npz] --run-dir RUN
    bnserve train --run-dir RUN --resume [--epochs N]
    bnserve export --run-dir RUN --repository models --name NAME [--no-fold] [--report]
                   [--include-checkpoint]
    bnserve recalibrate --model NAME --data x.npz [--engine onnxruntime|torch] [--prior-strength N0]
    bnserve compare --model cnn --dataset digits --out OUT [--seeds 0,1,2] [--lrs 0.003,0.03]

Only the standard library is imported here; torch, scikit-learn and onnx are imported by
the handlers, so ``bnserve --help`` works with the base install.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnserve.cli.arguments import integer_at_least
from bnserve.cli.errors import UserError, user_errors
from bnserve.training.config import DEFAULT_DATASETS, NORMS, UNKNOWN_WORD_RATES, TrainConfig
from bnserve.training.errors import RepositoryError, TrainingError, TrainingInterrupted

# What a user can fix: re-raised as UserError, so the dispatcher prints one line (exit 1).
USER_ERRORS = (TrainingError, RepositoryError)
NOTHING_WRITTEN = "; nothing was written to the repository"

DEFAULTS = TrainConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a BatchNorm model and write a run folder",
        description="Train a BatchNorm model on a dataset; write RUN_DIR/checkpoint.pt, "
        "metrics.json and curves.png.",
        epilog="Several processes or GPUs (DistributedDataParallel, SyncBatchNorm; the same "
        "run folder): torchrun --nproc_per_node=N -m bnserve.training.distributed "
        "--run-dir RUN_DIR [options]; there --batch-size is the global batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_options(train)
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
    export.add_argument("--no-fold", action="store_true",
                        help="keep BatchNormalization nodes (inference mode) instead of folding "
                        "them into the preceding Conv/Gemm")
    export.add_argument("--report", action="store_true",
                        help="also measure onnxruntime latency at batch 1 and 32 of the folded, "
                        "unfolded and no-BatchNorm graphs (into metadata.json `latency`)")
    export.add_argument("--latency-runs", type=_positive_int, default=200,
                        help="timed runs per figure for --report (median reported)")
    export.add_argument("--include-checkpoint", action="store_true",
                        help="also publish checkpoint.pt (weights and statistics, no data "
                        "rows) for `bnserve recalibrate --engine torch`; the run's "
                        "validation rows never leave RUN_DIR")
    export.set_defaults(handler=run_export, extra="training")

    add_recalibrate_parser(subparsers)

    report = subparsers.add_parser(
        "recalibration-report", help="measure how much accuracy recalibration wins back "
        "on corrupted inputs",
        description="Train the digits CNN and the audio 1-D CNN (clean train / calibration / "
        "test splits), export them, corrupt the inputs five ways at three severities, and "
        "recalibrate with the onnxruntime engine from 8 to 256 unlabeled samples. Writes "
        "OUT/recalibration.md, recalibration.json and recalibration.png.",
    )
    report.add_argument("--out", type=Path, required=True, help="folder for the report")
    report.add_argument("--dry-run", action="store_true",
                        help="fewer epochs, the highest severity only, one draw per cell "
                        "(under a minute, for tests)")
    report.set_defaults(handler=run_recalibration_report, extra="training")

    compare = subparsers.add_parser(
        "compare", help="train the same model with and without BatchNorm and compare them",
        description="Train MODEL with BatchNorm and without (--norm batch / none) on the same "
        "data split and batches for every seed (and every peak LR of --lrs); report epochs to "
        "the target val accuracy, final and best val accuracy and time per epoch. Writes "
        "OUT/comparison.md, comparison.json, comparison.png and one run folder per run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    compare.add_argument("--model", default=DEFAULTS.model, metavar="{" + ",".join(DEFAULT_DATASETS)
                         + "}", help="registered model builder")
    compare_data = compare.add_mutually_exclusive_group()
    compare_data.add_argument("--dataset", default=None,
                              help="registered dataset; default per model: "
                              + ", ".join(f"{m}->{d}" for m, d in DEFAULT_DATASETS.items()))
    compare_data.add_argument("--data", type=Path, default=None, metavar="PATH.npz",
                              help="your own data (as for `bnserve train --data`)")
    compare.add_argument("--out", type=Path, required=True,
                         help="folder for the comparison and its run folders")
    compare.add_argument("--seeds", type=_int_list, default="0,1,2",
                         help="comma-separated seeds; each trains both variants")
    compare.add_argument("--lrs", type=_lr_list, default=f"{DEFAULTS.lr:g}",
                         help="comma-separated peak learning rates; one table row per variant "
                         "and LR (BatchNorm's known benefit is tolerating higher ones)")
    compare.add_argument("--target", type=_fraction, default=0.95,
                         help="val accuracy whose first epoch is reported")
    compare.add_argument("--epochs", type=_positive_int, default=DEFAULTS.epochs,
                         help="passes over the training split, per run")
    compare.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size,
                         help="rows per optimizer step")
    compare.add_argument("--width", type=_positive_int, default=DEFAULTS.width,
                         help="channels of the first stage / hidden units")
    compare.add_argument("--threads", type=_positive_int, default=DEFAULTS.num_threads,
                         help="torch CPU threads")
    compare.add_argument("--dry-run", action="store_true",
                         help=f"every run is one epoch of {DEFAULTS.dry_run_steps} steps, for tests")
    compare.set_defaults(handler=run_compare, extra="training")


# --engine -> the extra it needs and the handler's module. The onnxruntime engine works from
# the version folder alone (unfolded.onnx); torch rebuilds the model from checkpoint.pt,
# which a version holds only when exported with --include-checkpoint.
RECALIBRATE_ENGINES = {"onnxruntime": "server", "torch": "training"}


class _EngineAction(argparse.Action):
    """--engine also sets which extra the dispatcher checks before the handler runs."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.extra = RECALIBRATE_ENGINES[str(values)]


def add_recalibrate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``bnserve recalibrate``: where the new statistics are computed is one option
    (--engine); another place to run it (a server's address) is one more."""
    recalibrate = subparsers.add_parser(
        "recalibrate", help="re-estimate a published model's statistics on new data, "
        "publish the next version",
        description="Re-estimate the input statistics and BatchNorm running statistics of "
        "REPOSITORY/NAME/VERSION on unlabeled inputs (no gradient step, weights untouched), "
        "verify the result and publish it as the next version. The source version is never "
        "changed, and a recalibrated version is recalibrated from the version it came from.",
    )
    recalibrate.add_argument("--model", required=True, help="model name in the repository")
    recalibrate.add_argument("--data", type=Path, default=None, metavar="PATH.{npy,npz}",
                             help="raw inputs as clients send them: .npy for a single-input "
                             "model, or .npz with one array per input name (or `x` for a "
                             "single-input model)")
    recalibrate.add_argument("--repository", type=Path, default=Path("models"),
                             help="model repository (default: models)")
    recalibrate.add_argument("--version", type=_positive_int, default=None,
                             help="source version (default: the latest)")
    recalibrate.add_argument("--engine", choices=tuple(RECALIBRATE_ENGINES),
                             default="onnxruntime", action=_EngineAction,
                             help="onnxruntime (default): from the version's unfolded.onnx, "
                             "no torch needed, layer by layer; torch: from its checkpoint.pt "
                             "(exported with --include-checkpoint), BatchNorm layers in train "
                             "mode")
    # recalibrate.BATCH_SIZE, not imported: it would import torch for --help.
    recalibrate.add_argument("--batch-size", type=_positive_int, default=256,
                             help="rows per forward pass (default: 256)")
    recalibrate.add_argument("--labels-key", default="y",
                             help="array of class ids in the .npz; when present, accuracy "
                             "before and after is printed (recalibration never uses it; default: y)")
    recalibrate.add_argument("--keep-input-statistics", action="store_true",
                             help="re-estimate only BatchNorm; keep the training data's input "
                             "mean and std")
    recalibrate.add_argument("--prior-strength", type=_non_negative_float, default=None,
                             metavar="N0",
                             help="onnxruntime engine: weigh the base statistics as N0 rows "
                             "already seen, new = (N0 * base + n * estimate) / (N0 + n) "
                             "(default: 8, measured by `bnserve recalibration-report`)")
    remote = recalibrate.add_argument_group(
        "inside a running server (instead of --data and --repository)")
    remote.add_argument("--address", default=None, action=_AddressAction,
                        help="server address: the server recalibrates the model from the inputs "
                        "it captured (--capture-rows), publishes the next version into its "
                        "repository and serves it; needs only the client install")
    remote.add_argument("--max-rows", type=_non_negative_int, default=0,
                        help="the most recent captured rows to use (default 0: all)")
    remote.add_argument("--admin-token-file", help="file holding the server's admin token")
    remote.add_argument("--timeout", type=float, default=300.0,
                        help="seconds for the call (default 300: it includes the new "
                        "version's checks and warm-up)")
    from bnserve.client.security_cli import add_security_flags

    add_security_flags(remote, auth_token=False)
    recalibrate.set_defaults(handler=run_recalibrate, extra=RECALIBRATE_ENGINES["onnxruntime"])
    return recalibrate


class _AddressAction(argparse.Action):
    """--address: the server does the work, so this process needs no extra at all."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.extra = None


_non_negative_int = integer_at_least(0)


def add_training_options(parser: argparse.ArgumentParser, *,
                         batch_help: str = "rows per optimizer step") -> None:
    """The model, data and hyperparameter flags of `bnserve train` (and of the torchrun entry)."""
    parser.add_argument("--model", default=DEFAULTS.model,
                        metavar="{" + ",".join(DEFAULT_DATASETS) + "}", help="registered model builder")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset", default=None,
                      help="registered dataset (digits, wine, breast_cancer, audio, text); default "
                      "per model: " + ", ".join(f"{m}->{d}" for m, d in DEFAULT_DATASETS.items()))
    data.add_argument("--data", type=Path, default=None, metavar="PATH.npz",
                      help="your own data: arrays x, y (and optional labels); x is (N, F) "
                      "for mlp, (N, H, W) or (N, C, H, W) for cnn, (N, T) or (N, C, T) for "
                      "audio/rnn, int token ids (N, L) for text/rnn")
    parser.add_argument("--run-dir", type=Path, required=True, help="folder to write the run to")
    parser.add_argument("--norm", choices=NORMS, default=DEFAULTS.norm,
                        help="batch: BatchNorm where it belongs; none: the same network without")
    parser.add_argument("--bn-eps", type=_positive_float, default=DEFAULTS.batchnorm.eps,
                        help="BatchNorm epsilon (> 0)")
    parser.add_argument("--bn-momentum", type=_unit_interval, default=DEFAULTS.batchnorm.momentum,
                        help="BatchNorm running-statistics momentum, in [0, 1]")
    parser.add_argument("--unknown-word-rate", type=_below_one, default=DEFAULTS.unknown_word_rate,
                        help="text data with a vocabulary: the share of each training batch's "
                        "words replaced by <unk>, so the model learns unknown words, in [0, 1) "
                        "(default: " + ", ".join(f"{m} {r:g}" for m, r in UNKNOWN_WORD_RATES.items())
                        + ", 0 for the other models)")
    parser.add_argument("--no-affine", action="store_true",
                        help="BatchNorm without learnable scale and shift (gamma, beta)")
    parser.add_argument("--width", type=_positive_int, default=DEFAULTS.width,
                        help="channels of the first stage / hidden units")
    # SUPPRESS: absent unless given, so --resume can tell "continue to N" from the default.
    parser.add_argument("--epochs", type=_positive_int, default=argparse.SUPPRESS,
                        help=f"passes over the training split (default: {DEFAULTS.epochs}; with "
                        "--resume: the run's own, and a larger N continues it to N)")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size,
                        help=batch_help)
    parser.add_argument("--lr", type=_positive_float, default=DEFAULTS.lr,
                        help="peak learning rate (> 0)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="seeds init, dropout, split and shuffling")
    parser.add_argument("--threads", type=_positive_int, default=DEFAULTS.num_threads,
                        help="torch CPU threads")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"one epoch of {DEFAULTS.dry_run_steps} steps, for tests")
    parser.add_argument("--patience", type=_positive_int, default=None,
                        help="early stopping: stop after N epochs without a lower val loss "
                        "(default: train every epoch); either way the checkpoint keeps the "
                        "best epoch, the one with the lowest val loss")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true",
                      help="continue RUN_DIR from its last finished epoch (RUN_DIR/last.pt) "
                      "with the run's own configuration; only --epochs and --threads may "
                      "change")
    runs.add_argument("--overwrite", action="store_true",
                      help="replace the run RUN_DIR already holds (refused without it)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that the flags of ``add_training_options`` describe."""
    from dataclasses import replace

    from bnserve.training.config import BatchNormOptions

    return replace(
        DEFAULTS, model=args.model,
        dataset=args.dataset or DEFAULT_DATASETS.get(args.model, DEFAULTS.dataset),
        data=str(args.data) if args.data else None,
        epochs=getattr(args, "epochs", DEFAULTS.epochs),
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, width=args.width,
        num_threads=args.threads, dry_run=args.dry_run, norm=args.norm,
        patience=getattr(args, "patience", None),
        unknown_word_rate=args.unknown_word_rate,
        batchnorm=BatchNormOptions(eps=args.bn_eps, momentum=args.bn_momentum,
                                   affine=not args.no_affine),
    )


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, dict | None]:
    """The flags' TrainConfig, and None; with --resume, the run's own configuration
    (RUN/last.pt) with the flags that were changed from their defaults on top (``train``
    refuses any change but --epochs and --threads), and the saved training state."""
    from dataclasses import fields, replace

    requested = config_from_args(args)
    if not args.resume:
        return requested, None
    from bnserve.training.checkpoint import load_training_state

    state = load_training_state(args.run_dir)
    changed = {f.name: getattr(requested, f.name) for f in fields(TrainConfig)
               if getattr(requested, f.name) != getattr(DEFAULTS, f.name)}
    changed["num_threads"] = requested.num_threads
    changed.pop("epochs", None)
    if "epochs" in vars(args):  # given, even if equal to the default
        changed["epochs"] = args.epochs
    return replace(TrainConfig.from_dict(state["config"]), **changed), state


_positive_int = integer_at_least(1)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"repeated value in {text!r}")
    return values


def _lr_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if any(not v > 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"learning rates must be positive and distinct: {text!r}")
    return values


def _number(accepts, expected: str):
    """An argparse type for a float that ``accepts`` (NaN never does: it compares false),
    refusing others as ``must be <expected>, got <text>``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    return parse


_non_negative_float = _number(lambda v: 0 <= v < float("inf"), "a finite number >= 0")
_positive_float = _number(lambda v: 0 < v < float("inf"), "a finite number > 0")
_unit_interval = _number(lambda v: 0 <= v <= 1, "in [0, 1]")
_below_one = _number(lambda v: 0 <= v < 1, "in [0, 1)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def run_train(args: argparse.Namespace) -> int:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # N copies would each train alone
        print("bnserve train: error: launched as one of several processes (WORLD_SIZE="
              f"{os.environ['WORLD_SIZE']}); use `torchrun --nproc_per_node=N -m "
              "bnserve.training.distributed` for data-parallel training", file=sys.stderr)
        return 1

    with user_errors(*USER_ERRORS):
        try:
            config, state = resolve_config(args)  # the flags are checked without torch
            if state is None:
                _check_data(config)  # before torch is imported: a wrong file is named at once
            from bnserve.training.train import describe_resume, summary_line, train

            if state is not None:
                print(describe_resume(state, config), flush=True)
            result = train(config, args.run_dir, resume=args.resume, overwrite=args.overwrite,
                           state=state)
        except KeyboardInterrupt as exc:  # Ctrl-C: one line on how to go on, no traceback
            hint = (exc.hint() if isinstance(exc, TrainingInterrupted)
                    else "interrupted before training started; nothing was written")
            print(f"bnserve train: {hint}", file=sys.stderr)
            return 130
    print(summary_line(result.metrics))
    print(f"wrote {args.run_dir}/: checkpoint.pt, last.pt, metrics.json, curves.png")
    return 0


def _check_data(config: TrainConfig) -> None:
    """A user's --data: that it is an .npz archive and that its ``y`` is large enough for the
    train/validation split (the registered datasets always are), in a moment, with numpy
    alone, before train.py imports torch; the rule itself is ``datasets.rows_for_split``,
    which ``train.check_split`` applies to the loaded dataset too."""
    if config.data:
        from bnserve.training.datasets import check_npz_splits

        check_npz_splits(config.data, config.val_fraction)


def run_recalibrate(args: argparse.Namespace) -> int:
    if args.address is not None:
        if args.data is not None:
            print("bnserve recalibrate: error: --address recalibrates from the server's "
                  "captured inputs; drop --data (or drop --address to recalibrate a file)",
                  file=sys.stderr)
            return 2
        from bnserve.client.recalibrate_cli import run_remote

        return run_remote(args)
    if args.data is None:
        print("bnserve recalibrate: error: --data PATH (or --address of a server that "
              "captures its inputs) is required", file=sys.stderr)
        return 2
    if args.engine == "onnxruntime":
        from bnserve.server.recalibrate_cli import run_onnxruntime

        if args.prior_strength is None:
            from bnserve.server.recalibration import DEFAULT_PRIOR_STRENGTH

            args.prior_strength = DEFAULT_PRIOR_STRENGTH
        return run_onnxruntime(args)
    if args.prior_strength is not None:
        print("bnserve recalibrate: error: --prior-strength needs --engine onnxruntime",
              file=sys.stderr)
        return 2
    from bnserve.training.export import format_summary
    from bnserve.training.republish import (
        format_recalibration,
        load_recalibration_data,
        recalibrate_version,
    )

    with user_errors(*USER_ERRORS, note=NOTHING_WRITTEN):
        data = load_recalibration_data(args.data, labels_key=args.labels_key)
        result = recalibrate_version(args.repository, args.model, data.x, y=data.y,
                                     version=args.version, batch_size=args.batch_size,
                                     keep_input_statistics=args.keep_input_statistics,
                                     data_sha256=data.sha256)
    print(format_recalibration(result, args.data.name))
    print(format_summary(result.export))
    return 0


def run_recalibration_report(args: argparse.Namespace) -> int:
    from bnserve.training.recalibration_report import recalibration_report

    with user_errors(*USER_ERRORS):
        report = recalibration_report(args.out, dry_run=args.dry_run)
    print((args.out / "recalibration.md").read_text(), end="")
    print(f"wrote {args.out}/: recalibration.md, recalibration.json, recalibration.png "
          f"in {report['seconds']:.0f} s")
    return 0


def run_export(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():  # said before torch is imported
        raise UserError(f"--run-dir {args.run_dir}: no such folder; expected a run folder "
                        "written by `bnserve train --run-dir` (with checkpoint.pt)")
    from bnserve.training.export import export_run, format_summary

    with user_errors(*USER_ERRORS, note=NOTHING_WRITTEN):
        result = export_run(args.run_dir, args.repository, args.name, args.version,
                            fold=not args.no_fold, report=args.report,
                            latency_runs=args.latency_runs,
                            include_checkpoint=args.include_checkpoint)
    print(format_summary(result))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    config = replace(
        DEFAULTS, model=args.model,
        dataset=args.dataset or DEFAULT_DATASETS.get(args.model, DEFAULTS.dataset),
        data=str(args.data) if args.data else None, epochs=args.epochs,
        batch_size=args.batch_size, width=args.width, num_threads=args.threads,
        dry_run=args.dry_run,
    )
    with user_errors(*USER_ERRORS):
        _check_data(config)
        from bnserve.training.compare import compare_batchnorm

        result = compare_batchnorm(config, args.out, seeds=args.seeds, lrs=args.lrs,
                                   target_accuracy=args.target)
    print(result.table)
    print(f"wrote {args.out}/: comparison.md, comparison.json, comparison.png and "
          f"{len(result.runs)} run folders under runs/")
    return 0
