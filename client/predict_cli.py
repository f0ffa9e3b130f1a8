"""``bnserve predict`` and ``bnserve health``: the client side of the command line."""

from __future__ import annotations

import argparse
import sys

from bnserve.client.channels import DEFAULT_ADDRESS
from bnserve.client.security_cli import add_security_flags, security_options


def register(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="send a .npy array to a served model and print or save its output",
        description="Send the array in --input (a .npy file) to --model and print the output "
        "and, for 2-D outputs, the index of the largest value per row; --output saves it "
        "as .npy. Arrays longer than --batch-size rows go as several requests.",
    )
    predict.add_argument("--model", required=True, help="model name")
    predict.add_argument("--input", required=True, help=".npy file with the input batch")
    predict.add_argument("--address", action="append",
                         help=f"server address (repeat for several; default {DEFAULT_ADDRESS})")
    predict.add_argument("--version", default="", help="model version (default: served one)")
    predict.add_argument("--output", help="save the output array to this .npy file")
    predict.add_argument("--timeout", type=float, default=30.0,
                         help="seconds for the whole call (default 30)")
    predict.add_argument("--batch-size", type=int, default=64,
                         help="rows per request (default 64, the server's default limit)")
    add_security_flags(predict)
    predict.set_defaults(handler=run_predict, extra=None)

    health = subparsers.add_parser(
        "health",
        help="exit 0 when the server answers ready (for container health checks)",
    )
    health.add_argument("--address", default=DEFAULT_ADDRESS, help=f"default {DEFAULT_ADDRESS}")
    health.add_argument("--model", help="also require this model to be ready")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    add_security_flags(health)
    health.set_defaults(handler=run_health, extra=None)


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from bnserve.client import BnserveError, Client

    array = np.load(args.input, allow_pickle=False)
    try:
        options = security_options(args)
    except (OSError, ValueError) as exc:
        print(f"bnserve predict: {_problem(exc)}", file=sys.stderr)
        return 1
    try:
        with Client(args.address or [DEFAULT_ADDRESS], timeout=args.timeout, **options) as client:
            result = client.predict(args.model, array, version=args.version,
                                    batch_size=args.batch_size)
    except BnserveError as exc:
        print(f"bnserve predict: {exc}", file=sys.stderr)
        return 1
    if args.output:
        np.save(args.output, result)
        print(f"saved {result.dtype} {list(result.shape)} to {args.output}")
    else:
        np.set_printoptions(precision=4, suppress=True)
        print(result)
        if result.ndim == 2:
            print("argmax per row:", result.argmax(axis=1).tolist())
    return 0


def run_health(args: argparse.Namespace) -> int:
    from bnserve.client import BnserveError, Client

    try:
        options = security_options(args)
    except (OSError, ValueError) as exc:
        print(f"not ready: {_problem(exc)}", file=sys.stderr)
        return 1
    try:
        with Client(args.address, timeout=args.timeout, **options) as client:
            ready = client.is_ready()
            if ready and args.model:
                ready = client.is_model_ready(args.model)
    except BnserveError as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    print("ready" if ready else "not ready")
    return 0 if ready else 1


def _problem(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror}"
    return str(exc)
