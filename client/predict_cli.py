"""``bnserve predict`` and ``bnserve health``: the client side of the command line."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bnserve.cli.arguments import integer_at_least
from bnserve.client.channels import DEFAULT_ADDRESS
from bnserve.client.security_cli import add_security_flags, security_options

if TYPE_CHECKING:
    import numpy as np

    from bnserve.client import ClassScore, Client

DEFAULT_PORT = 8001  # bnserve serve's default, when BNSERVE_PORT is unset


def register(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="send a .npy array (or texts) to a served model and print or save its output",
        description="Send the array in --input (a .npy file) to --model and print the output; "
        "--output saves it as .npy. For a text model, --text (repeatable) or --text-file (one "
        "text per line) send texts instead, one row each, encoded into token ids with the "
        "model's own tokenizer (the vocabulary and rules in its model.onnx, which the server "
        "reports in its ModelConfig); words outside the vocabulary are named on stderr. For a "
        "model answering one row of class scores per input row, it prints each row's top "
        "--classes classes by label instead (the server ranks them: Triton's classification "
        "extension, whose labels come from the model card, the graph's metadata or the "
        "config's label_filename), then the index of the best per row. Arrays longer than "
        "--batch-size rows go as several requests.",
    )
    predict.add_argument("--model", required=True, help="model name")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help=".npy file with the input batch")
    source.add_argument("--text", action="append", metavar="TEXT",
                        help="a text for a text model, one row (repeat for several)")
    source.add_argument("--text-file", metavar="FILE",
                        help="a UTF-8 file of texts for a text model, one row per line")
    predict.add_argument("--address", action="append",
                         help=f"server address (repeat for several; default {DEFAULT_ADDRESS})")
    predict.add_argument("--version", default="", help="model version (default: served one)")
    predict.add_argument("--output", help="save the output array to this .npy file")
    predict.add_argument("--timeout", type=float, default=30.0,
                         help="seconds for the whole call (default 30)")
    predict.add_argument("--batch-size", type=integer_at_least(1), default=64,
                         help="rows per request (default 64, the server's default limit)")
    predict.add_argument("--classes", type=integer_at_least(0), default=1, metavar="K",
                         help="top classes to print per row, by label (default 1); 0 prints "
                         "the output array instead")
    add_security_flags(predict)
    predict.set_defaults(handler=run_predict, extra=None)

    health = subparsers.add_parser(
        "health",
        help="exit 0 when the server answers ready (for container health checks)",
        description="Ask a server whether it is ready (the Open Inference Protocol's "
        "ServerReady; with --model also ModelReady) or, with --live, only whether it is live "
        "(ServerLive); exit 0 when it is, 1 when it is not or does not answer. Without "
        "--address it checks the local server that the BNSERVE_* environment variables "
        "configure, as `bnserve serve` reads them: 127.0.0.1 (or BNSERVE_HOST when that names "
        "one address) on BNSERVE_PORT (default 8001), over TLS when BNSERVE_TLS_CERTIFICATE "
        "is set, trusting that certificate. This is the image's HEALTHCHECK.",
    )
    health.add_argument("--address",
                        help=f"server address (default: 127.0.0.1:$BNSERVE_PORT, port "
                        f"{DEFAULT_PORT} when unset)")
    check = health.add_mutually_exclusive_group()
    check.add_argument("--live", action="store_true",
                       help="check liveness only (ServerLive), not readiness")
    check.add_argument("--model", help="also require this model to be ready")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    add_security_flags(health)
    health.add_argument("--tls-server-name", metavar="NAME",
                        help="the name the server's certificate must carry (implies TLS; default: "
                        "the address's host; without --address and with "
                        "BNSERVE_TLS_CERTIFICATE: that certificate's first name)")
    health.set_defaults(handler=run_health, extra=None)


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from bnserve.cli.errors import UserError
    from bnserve.client import BnserveError, Client
    from bnserve.client.call_errors import explain_call_error
    from bnserve.client.input_file import check_output_path, load_input_array, load_texts

    # The files first: their mistakes are named at once, without waiting on a server.
    texts = None
    if args.input is not None:
        array = load_input_array(args.input, model=args.model)
        subject = f"--input {args.input}"
    else:
        texts = load_texts(args.text, args.text_file)
        subject = "--text" if args.text is not None else f"--text-file {args.text_file}"
    if args.output:
        check_output_path(args.output)
    options = security_options(args)
    addresses = args.address or [DEFAULT_ADDRESS]
    try:
        with Client(addresses, timeout=args.timeout, **options) as client:
            if texts is not None:
                array = encode_texts(client, args.model, args.version, texts, subject)
            if not args.output and args.classes > 0 and _ranks_classes(client, args):
                classes = client.classify(args.model, array, top=args.classes,
                                          version=args.version, batch_size=args.batch_size)
                print_classes(classes)
                return 0
            result = client.predict(args.model, array, version=args.version,
                                    batch_size=args.batch_size)
    except BnserveError as exc:
        raise UserError(explain_call_error(
            exc, address=", ".join(addresses), model=args.model, version=args.version,
            timeout=args.timeout, subject=subject)) from exc
    if args.output:
        try:
            np.save(args.output, result)
        except OSError as exc:
            raise UserError(f"--output {args.output}: cannot write: {exc.strerror or exc}") from exc
        print(f"saved {result.dtype} {list(result.shape)} to {args.output}")
    else:
        np.set_printoptions(precision=4, suppress=True)
        print(result)
        if result.ndim == 2:
            print("argmax per row:", result.argmax(axis=1).tolist())
    return 0


MAX_UNKNOWN_SHOWN = 5


def encode_texts(client: Client, model: str, version: str, texts: list[tuple[str, str]],
                 subject: str) -> np.ndarray:
    """The texts as token ids (N, L), encoded with the tokenizer the server reports for the
    model; ``UserError`` when it has none or a text cannot be encoded. Words outside the
    vocabulary go as its unknown-word id, and are named on stderr."""
    from bnserve.cli.errors import UserError
    from bnserve.client import TextEncodingError, TokenizerError

    try:
        tokenizer = client.tokenizer(model, version=version)
    except TokenizerError as exc:
        raise UserError(f"{subject}: the server's tokenizer for model {model} is unusable "
                        f"({exc}); send token ids with --input FILE.npy") from exc
    if tokenizer is None:
        raise UserError(f"{subject}: model {model} ships no vocabulary (its model.onnx has no "
                        "tokenizer: not a text model, or exported from token ids without a "
                        "vocabulary); expected a text model, or token ids with --input FILE.npy")
    try:
        rows = tokenizer.encode(text for _, text in texts)
    except TextEncodingError as exc:
        raise UserError(f"{texts[exc.index][0]}: {exc.reason}") from exc
    for named, text in texts:
        unknown = tokenizer.unknown_words(text)
        if unknown:
            shown = ", ".join(unknown[:MAX_UNKNOWN_SHOWN]) + (
                ", ..." if len(unknown) > MAX_UNKNOWN_SHOWN else "")
            print(f"note: {named}: {len(unknown)} of {len(tokenizer.words(text))} words not in "
                  f"the vocabulary, sent as {tokenizer.vocabulary[tokenizer.unknown_id]!r}: "
                  f"{shown}", file=sys.stderr)
    return rows


def _ranks_classes(client: Client, args: argparse.Namespace) -> bool:
    """Whether the server can rank the model's output into labelled classes: it announces
    the classification extension and the first output is one axis of scores per row."""
    if "classification" not in client.server_metadata()["extensions"]:
        return False
    output = client.metadata(args.model, version=args.version).outputs[0]
    return len(output.shape) == 2 and output.datatype not in ("BYTES", "BOOL")


def print_classes(rows: list[list[ClassScore]]) -> None:
    """``row 0: cat 0.9312 | dog 0.0511`` per row (the class index when a class has no
    label), then the best class index of each row."""
    for number, classes in enumerate(rows):
        print(f"row {number}: " + " | ".join(f"{c.label or c.index} {c.score:.4f}"
                                              for c in classes))
    print("argmax per row:", [classes[0].index for classes in rows if classes])


@dataclass(frozen=True)
class HealthTarget:
    """Where ``bnserve health`` connects, and how."""

    address: str
    tls: bool = False
    root_certificates: Path | None = None  # PEM to trust instead of the system roots
    tls_server_name: str | None = None  # the name to verify the certificate for


# Listen addresses that mean "every interface": the local server is reached on loopback.
_ANY_HOST = {"", "0.0.0.0", "::", "[::]"}


def local_health_target(environ: Mapping[str, str]) -> HealthTarget:
    """The local server as ``bnserve serve`` would configure it from these BNSERVE_* variables.

    Only the command line calls this (with ``os.environ``): runtime code never reads the
    environment. Raises ValueError when the variables name no address a health check can reach.
    """
    raw_port = environ.get("BNSERVE_PORT", "").strip() or str(DEFAULT_PORT)
    try:
        port = int(raw_port)
    except ValueError:
        raise ValueError(f"BNSERVE_PORT={raw_port!r} is not a port number; give --address") from None
    if port == 0:
        raise ValueError("BNSERVE_PORT=0 lets the server pick a free port, which a health "
                         "check cannot know; give --address")
    if not 0 < port < 65536:
        raise ValueError(f"BNSERVE_PORT={raw_port} is not a port number; give --address")
    host = environ.get("BNSERVE_HOST", "").strip()
    if host in _ANY_HOST:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    certificate = environ.get("BNSERVE_TLS_CERTIFICATE", "").strip()
    if not certificate:
        return HealthTarget(f"{host}:{port}")
    # The server presents this chain; trusting it (gRPC accepts the leaf as the anchor)
    # checks our own server without knowing its CA. Its name, not 127.0.0.1, is verified.
    return HealthTarget(f"{host}:{port}", tls=True, root_certificates=Path(certificate),
                        tls_server_name=certificate_name(Path(certificate)))


def certificate_name(path: Path) -> str | None:
    """The first DNS name (else IP address, else common name) of the first certificate in a
    PEM file; None when it cannot be read (then the address's host is verified)."""
    # The standard library decodes a certificate file only through this private helper
    # (its public APIs decode peers and loaded CAs, not a leaf on disk), so it is looked up
    # defensively. Without it, TLS still works for certificates that name 127.0.0.1.
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:
        return None
    try:
        decoded = decode(str(path))
    except (OSError, ssl.SSLError, ValueError):
        return None
    alternatives = decoded.get("subjectAltName", ())
    for kind in ("DNS", "IP Address"):
        for found_kind, value in alternatives:
            if found_kind == kind:
                # A wildcard certificate matches any one label in its place.
                return "health" + value[1:] if value.startswith("*.") else value
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def health_target(args: argparse.Namespace, environ: Mapping[str, str]) -> HealthTarget:
    """--address and the TLS flags as given, or else the local server the environment describes."""
    if args.address:
        target = HealthTarget(args.address)
    else:
        target = local_health_target(environ)
    if args.tls or args.tls_ca:
        roots = Path(args.tls_ca) if args.tls_ca else None
        target = HealthTarget(target.address, tls=True, root_certificates=roots)
    if args.tls_server_name:
        target = HealthTarget(target.address, tls=True, root_certificates=target.root_certificates,
                              tls_server_name=args.tls_server_name)
    return target


def run_health(args: argparse.Namespace) -> int:
    from bnserve.cli.errors import UserError
    from bnserve.client import BnserveError, Client

    try:
        options = security_options(args)
        target = health_target(args, os.environ)
        if target.root_certificates is not None:
            options["root_certificates"] = target.root_certificates.read_bytes()
    except UserError as exc:  # the security flags
        print(f"bnserve health: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"bnserve health: {_problem(exc)}", file=sys.stderr)
        return 2
    options["tls"] = options["tls"] or target.tls
    state = "live" if args.live else "ready"
    try:
        with Client(target.address, timeout=args.timeout,
                    tls_server_name=target.tls_server_name, **options) as client:
            if args.live:
                ok = client.is_live()
            else:
                ok = client.is_ready()
                if ok and args.model:
                    ok = client.is_model_ready(args.model)
    except BnserveError as exc:
        print(f"not {state}: {exc}", file=sys.stderr)
        return 1
    print(state if ok else f"not {state}")
    return 0 if ok else 1


def _problem(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror}"
    return str(exc)
