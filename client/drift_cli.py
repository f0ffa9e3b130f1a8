"""``bnserve drift``: a served model's BatchNorm drift, as a table (and a plot).

    bnserve drift --address HOST:PORT --model NAME [--version V] [--watch SECONDS]
                  [--plot drift.png] [--auth-token-file FILE]

The table: each BatchNorm layer's channels, score (mean over channels of KL(live ||
reference), nats), mean shift (in reference standard deviations) and std ratio, then the
model's score against its threshold, ALARM or ok. ``--plot`` draws the score history per
layer and, for the worst layer, the reference and live mean of each channel; it needs
matplotlib, which the thin client does not depend on (imported only then).
Exit status: 0 ok, 3 while the alarm is raised (for scripts and cron), 1 on an error.
"""

from __future__ import annotations

import argparse
import sys
import time

from bnserve.client.channels import DEFAULT_ADDRESS
from bnserve.client.security_cli import add_security_flags, security_options

ALARM_EXIT = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "drift",
        help="how far live traffic is from what a model's BatchNorm layers were trained on",
        description="Ask a server's BatchNorm monitor for a served model's drift: per layer, "
        "the divergence of the activations entering it (a sliding window of sampled rows) "
        "from the running statistics training froze into it. Exit status 3 while the alarm "
        "is raised.",
    )
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"server address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", default=None, help="version (default: the highest ready)")
    parser.add_argument("--watch", type=float, metavar="SECONDS",
                        help="ask again every SECONDS until interrupted")
    parser.add_argument("--count", type=int, metavar="N",
                        help="with --watch: stop after N reports")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the score history and the worst layer's channels "
                        "(needs matplotlib)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    add_security_flags(parser)
    parser.set_defaults(handler=run, extra=None)


def format_report(report) -> str:
    """The table ``bnserve drift`` prints for one ``DriftReport``."""
    width = max([len(layer.name) for layer in report.layers] + [5])
    lines = [f"model {report.model} version {report.version}: drift {report.measure}, window "
             f"{report.rows_in_window}/{report.window_rows} rows, sampled {report.sampled_batches} "
             f"batches ({report.sampled_rows} rows, rate {report.sample_rate:g}, "
             f"{report.dropped_samples} dropped)",
             f"{'layer':<{width}}  channels     score  mean shift  std ratio"]
    for layer in report.layers:
        lines.append(f"{layer.name:<{width}}  {layer.channels:>8}  {layer.score:>8.4f}  "
                     f"{layer.mean_shift:>10.3f}  {layer.std_ratio:>9.3f}")
    state = "ok"
    if report.alarm:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.alarm_since))
        state = f"ALARM (since {since})"
    lines.append(f"model score {report.score:.4f} vs threshold {report.threshold:.4f} "
                 f"({report.threshold_source}): {state}")
    if report.message:
        lines.append(f"note: {report.message}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bnserve.cli.errors import UserError, file_problem
    from bnserve.client import BnserveError, Client
    from bnserve.client.call_errors import explain_call_error

    if args.watch is not None and args.watch <= 0:
        print("bnserve drift: --watch needs a positive number of seconds", file=sys.stderr)
        return 2
    plot = None
    if args.plot:
        try:
            from bnserve.client.drift_plot import plot_report as plot
        except ModuleNotFoundError:
            raise UserError("--plot needs matplotlib, which the thin client does not "
                            "install: pip install matplotlib") from None
    options = security_options(args)
    shown = 0
    try:
        with Client(args.address, timeout=args.timeout, **options) as client:
            while True:
                report = client.drift_report(args.model, args.version,
                                             include_channels=plot is not None)
                if shown:
                    print()
                print(format_report(report), flush=True)
                shown += 1
                if plot is not None:
                    plot(report, args.plot)
                    print(f"plot written to {args.plot}")
                if args.watch is None or (args.count is not None and shown >= args.count):
                    break
                time.sleep(args.watch)
    except BnserveError as exc:
        raise UserError(explain_call_error(exc, address=args.address, model=args.model,
                                           version=args.version, timeout=args.timeout)) from exc
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # the plot file
        raise UserError(f"--plot {args.plot}: {file_problem(exc, 'write')}") from exc
    return ALARM_EXIT if report.alarm else 0
