"""``bnserve recalibrate --address A --model M``: the running server recalibrates itself.

    the server's captured rows (it runs with --capture-rows) --> version N+1 published,
    loaded, checked, warmed up and serving; this prints what it did

Only the thin client is needed (the server does the work). The admin token is read from a
file, never taken on the command line (where ``ps`` shows it).
"""

from __future__ import annotations

import argparse

from bnserve.client.security_cli import security_options


def run_remote(args: argparse.Namespace) -> int:
    from bnserve.cli.errors import UserError, file_problem
    from bnserve.client import BnserveError, Client
    from bnserve.client.call_errors import explain_call_error

    token = None
    try:
        if args.admin_token_file:
            with open(args.admin_token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        options = security_options(args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:
        raise UserError(file_problem(exc, "read")) from exc
    try:
        with Client(args.address, timeout=args.timeout, admin_token=token, **options) as client:
            done = client.recalibrate(
                args.model, args.version, max_rows=args.max_rows,
                prior_strength=args.prior_strength,
                input_statistics=False if args.keep_input_statistics else None)
    except BnserveError as exc:
        raise UserError(explain_call_error(exc, address=args.address, model=args.model,
                                           version=None if args.version is None
                                           else str(args.version), timeout=args.timeout,
                                           token_flag="--admin-token-file")) from exc
    print(f"recalibrated {done.model} from version {done.base_version}'s statistics on "
          f"{done.samples} captured rows: published version {done.new_version}")
    print(f"  drift of those rows: {done.drift_before:.4f} against the old statistics, "
          f"{done.drift_after:.4f} against the new (alarm above {done.threshold:.4f})")
    print(f"  {done.message}")
    return 0 if done.serving else 3
