"""``bnserve serve``: run the inference server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.001


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the models of a repository over the Open Inference Protocol (gRPC)",
        description="Load the models under --repository into onnxruntime (each model the "
        "versions its config.pbtxt's version_policy selects; default the highest) and serve "
        "them over the Open Inference Protocol (KServe V2) gRPC API and Triton's extensions, "
        "with dynamic batching. Every option can also be set as an environment variable "
        "BNSERVE_<OPTION> (e.g. BNSERVE_MAX_BATCH_SIZE=32); flags win.",
    )
    parser.add_argument("--repository", help="model repository folder (default: models)")
    parser.add_argument("--host", help="listen address (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, help="gRPC port, 0 = any free port (default: 8001)")
    parser.add_argument("--max-batch-size", type=int, help="rows per onnxruntime run (default: 64)")
    parser.add_argument(
        "--max-queue-delay-ms", type=float, help="longest wait to fill a batch (default: 1.0)"
    )
    parser.add_argument("--max-queue-size", type=int, help="waiting requests per model (default: 1024)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="execution provider (default: cpu)"
    )
    parser.add_argument("--intra-op-threads", type=int,
                        help="onnxruntime intra-op threads per model instance; 0 = usable "
                        "cores // instances (default: 0)")
    parser.add_argument("--inter-op-threads", type=int,
                        help="onnxruntime inter-op threads (parallel execution only; default: 1)")
    parser.add_argument("--graph-optimization-level",
                        choices=["disabled", "basic", "extended", "all"],
                        help="onnxruntime graph optimizations (default: all)")
    parser.add_argument("--execution-mode", choices=["sequential", "parallel"],
                        help="onnxruntime node execution (default: sequential)")
    parser.add_argument("--allow-spinning", choices=["auto", "on", "off"],
                        help="busy-waiting onnxruntime threads; auto: only while the threads "
                        "fit in the usable cores (default: auto)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    parser.add_argument("--metrics-host",
                        help="address /metrics listens on (default: 127.0.0.1, loopback only)")
    parser.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                        help="none: load at start only (default); poll: follow the repository "
                        "while serving; explicit: load what --load-model and the repository "
                        "API ask")
    parser.add_argument("--repository-poll-secs", type=float,
                        help="seconds between repository polls in poll mode (default: 15)")
    parser.add_argument("--load-model", action="append", metavar="NAME",
                        help="explicit mode: load this model at start (repeatable)")
    parser.add_argument("--admin-token-file",
                        help="file with the token the repository API needs "
                        "(metadata 'authorization: Bearer <token>')")
    parser.add_argument("--auth-token-file",
                        help="file of tokens (one per line) every inference call needs as "
                        "metadata 'authorization: Bearer <token>'; re-read when it changes")
    parser.add_argument("--allow-unauthenticated-admin", action="store_true", default=None,
                        help="open the repository API without a token (trusted networks only)")
    parser.add_argument("--drain-window-s", type=float,
                        help="on SIGTERM, seconds of NOT_SERVING health while calls are still "
                        "answered (default: 5)")
    parser.add_argument("--shutdown-grace-s", type=float,
                        help="after the drain window, seconds accepted calls may take to "
                        "finish (default: 5)")
    parser.add_argument("--tls-certificate", help="PEM certificate chain (enables TLS)")
    parser.add_argument("--tls-private-key", help="PEM private key (enables TLS)")
    parser.add_argument("--tls-client-ca",
                        help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    parser.add_argument("--drift-sample-rate", type=float,
                        help="share of batches the BatchNorm drift monitor measures, 0 = off "
                        "(default: 0.05)")
    parser.add_argument("--drift-rows-per-sample", type=int,
                        help="most rows measured per sampled batch (default: 32)")
    parser.add_argument("--drift-probe-budget", type=float,
                        help="most of one core's time the drift probes may take (default: 0.01)")
    parser.add_argument("--drift-window-rows", type=int,
                        help="sliding window of the monitor when the card has none (default: 128)")
    parser.add_argument("--drift-threshold", type=float,
                        help="alarm threshold when the card has no calibrated one (default: 0.05)")
    parser.add_argument("--drift-history-points", type=int,
                        help="history points kept per monitor (default: 360)")
    parser.add_argument("--drift-history-interval-s", type=float,
                        help="seconds between history points (default: 10)")
    parser.add_argument("--capture-rows", type=int,
                        help="keep the N most recent sampled input rows per version in memory "
                        "for CapturedInputs (admin token); 0 = off (default)")
    parser.add_argument("--auto-recalibrate-after-s", type=float,
                        help="recalibrate a version by itself from its captured rows once its "
                        "drift alarm has held this long (needs --capture-rows; default: off)")
    parser.add_argument(
        "--port-file", help="write the bound port to this file once serving (for scripts and tests)"
    )
    parser.set_defaults(handler=run, extra="server")


async def serve_until_signalled(settings, *, port_file: str | None = None,
                                loader=None) -> bool:
    """Serve until SIGTERM or SIGINT, then drain (``InferenceServer.stop``). A second signal
    cuts the drain short: new calls are refused and the process stops within a second.
    True when the drain ran to its end."""
    from bnserve.server.app import build_server

    # The event loop shares the GIL with the codec and runtime threads; by default a thread
    # that wants it waits up to 5 ms per handover, which a health check pays several times.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    server = build_server(settings) if loader is None else build_server(settings, loader=loader)
    await server.start()
    if port_file:
        with open(port_file, "w") as handle:
            handle.write(f"{server.port}\n")
    signals = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    first = await signals.get()
    log.info("%s received: draining (window %.1fs, then grace %.1fs; signal again to stop "
             "now)", signal.Signals(first).name, settings.drain_window_s,
             settings.shutdown_grace_s)
    draining = asyncio.ensure_future(server.stop())
    second = asyncio.ensure_future(signals.get())
    await asyncio.wait({draining, second}, return_when=asyncio.FIRST_COMPLETED)
    if draining.done():
        second.cancel()
        draining.result()
        log.info("stopped")
        return True
    log.warning("second signal: stopping now")
    server.end_drain_window()
    try:
        await asyncio.wait_for(server.grpc_server.stop(0), timeout=0.5)
    except TimeoutError:
        pass
    draining.cancel()
    return False


def _exit_without_waiting_for_runs(code: int) -> int:
    """A model run that outlived the grace period lives on in an executor thread, which the
    interpreter would join at exit: leave without it (its answer has no caller anymore)."""
    stuck = [t for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        log.warning("exiting with %d runtime thread(s) still busy", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from bnserve.server.settings import ServerSettings

    names = ("repository", "host", "port", "max_batch_size", "max_queue_delay_ms",
             "max_queue_size", "device", "intra_op_threads", "inter_op_threads",
             "graph_optimization_level", "execution_mode", "allow_spinning", "metrics_port",
             "tls_certificate",
             "tls_private_key", "model_control_mode", "repository_poll_secs", "load_model",
             "admin_token_file", "allow_unauthenticated_admin", "shutdown_grace_s",
             "drain_window_s", "auth_token_file", "metrics_host", "tls_client_ca",
             "drift_sample_rate", "drift_rows_per_sample", "drift_probe_budget",
             "drift_window_rows", "drift_threshold", "drift_history_points",
             "drift_history_interval_s", "capture_rows", "auto_recalibrate_after_s")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        print(f"bnserve serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    from bnserve.cli.errors import UserError
    from bnserve.server.errors import ModelLoadError

    if not settings.repository.is_dir():  # named before any start-up work
        given = (f"--repository {settings.repository}" if args.repository is not None else
                 f"the repository {settings.repository} (BNSERVE_REPOSITORY or the default)")
        raise UserError(f"{given} is not a directory; expected a model repository folder "
                        "(NAME/VERSION/model.onnx, as `bnserve export` writes)")
    try:
        drained = asyncio.run(serve_until_signalled(settings, port_file=args.port_file))
    except (FileNotFoundError, OSError, ValueError, ModelLoadError) as exc:
        # Start-up problems a user can fix (port taken, a TLS file or token file that cannot
        # be used, a model that does not load).
        raise UserError(str(exc)) from exc
    return _exit_without_waiting_for_runs(0 if drained else 1)
