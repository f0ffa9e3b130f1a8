"""``bnserve repository index | load | unload``: the repository API from the command line.

    bnserve repository index  --address HOST:PORT --admin-token-file TOKEN [--ready]
    bnserve repository load   NAME [--config config.json] --admin-token-file TOKEN
    bnserve repository unload NAME --admin-token-file TOKEN

The token is read from a file, never taken on the command line (where ``ps`` shows it).
"""

from __future__ import annotations

import argparse

from bnserve.client.channels import DEFAULT_ADDRESS
from bnserve.client.security_cli import add_security_flags, security_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "repository",
        help="list, load and unload the models of a running server (Triton's repository API)",
        description="Talk to a server's repository API: the index of every model and version "
        "with its state, and (with --model-control-mode explicit) loading and unloading.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    index = actions.add_parser("index", help="every model and version, with its state")
    index.add_argument("--ready", action="store_true", help="only the ready versions")
    load = actions.add_parser("load", help="load or reload a model (explicit mode)")
    load.add_argument("model", help="model name (its folder in the repository)")
    load.add_argument("--config", help="a ModelConfig as JSON, used instead of config.pbtxt")
    unload = actions.add_parser("unload", help="stop serving a model (explicit mode)")
    unload.add_argument("model", help="model name")
    for action in (index, load, unload):
        action.add_argument("--address", default=DEFAULT_ADDRESS,
                            help=f"server address (default {DEFAULT_ADDRESS})")
        action.add_argument("--admin-token-file", help="file holding the server's admin token")
        action.add_argument("--timeout", type=float, default=120.0,
                            help="seconds for the call (default 120: a load includes checks "
                            "and warm-up)")
        add_security_flags(action, auth_token=False)
    parser.set_defaults(handler=run, extra=None)


def run(args: argparse.Namespace) -> int:
    from bnserve.cli.errors import UserError, file_problem
    from bnserve.client import BnserveError, Client
    from bnserve.client.call_errors import explain_call_error

    token = None
    try:
        if args.admin_token_file:
            with open(args.admin_token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        config = None
        if getattr(args, "config", None):
            with open(args.config, encoding="utf-8") as handle:
                config = handle.read()
        options = security_options(args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:
        raise UserError(file_problem(exc, "read")) from exc
    try:
        with Client(args.address, timeout=args.timeout, admin_token=token, **options) as client:
            if args.action == "index":
                rows = client.repository_index(ready=args.ready)
                width = max([len(r.name) for r in rows] + [5])
                print(f"{'model':<{width}}  version  state        reason")
                for row in rows:
                    print(f"{row.name:<{width}}  {row.version or '-':>7}  {row.state:<11}  "
                          f"{row.reason}".rstrip())
            elif args.action == "load":
                client.load_model(args.model, config=config)
                ready = [r.version for r in client.repository_index(ready=True)
                         if r.name == args.model and r.version]
                print(f"loaded {args.model}: ready versions {', '.join(ready) or 'none'}")
            else:
                client.unload_model(args.model)
                print(f"unloaded {args.model}")
    except BnserveError as exc:
        # The model is a positional name here, not --model: the server's message names it.
        raise UserError(explain_call_error(exc, address=args.address, timeout=args.timeout,
                                           token_flag="--admin-token-file")) from exc
    return 0
