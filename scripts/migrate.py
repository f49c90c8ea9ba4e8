"""Apply the versioned SQL migrations in `migrations/` (each exactly once, in order).

    python -m scripts.migrate [--dsn DSN] [--dir DIR] [--dry-run] [--json]
        (without --dsn: $PSYCHOLOGY_API_DSN; the password from PGPASSWORD or ~/.pgpass, not argv)
    python -m scripts.migrate --secret-id MASTER_ARN --db-host H --db-name D [--ensure-credentials SECRET_ID ...]

Concurrent runs are safe (an advisory lock serialises them); each file runs in its own
transaction unless its first line is `-- migrate: no-transaction`, with a short lock_timeout
(tried again --lock-attempts times, so the application never waits long behind its DDL) and a
statement_timeout; an applied file whose checksum changed is refused, and so is a file older
than the latest applied one unless --allow-out-of-order. `--ensure-credentials` then makes the role named in each given
secret accept that secret's password (what the migrate function does in AWS for the
application's current user and the monitoring role). Exit codes: 0 done, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from scripts.dbops.credentials import ensure_role_matches_secret
from scripts.dbops.migrations import (
    DEFAULT_LOCK_ATTEMPTS,
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_LOCK_WAIT_SECONDS,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    MigrationFailed,
    Timeouts,
    default_directory,
    migrate,
)
from scripts.lib import aws, cli
from scripts.lib.db import add_target_arguments, target_from_args, target_from_document
from scripts.lib.secrets import read_secret_json


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m scripts.migrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--dir", type=cli.existing_dir, default=None,
                        help=f"directory of NNNN_name.sql files (default: {default_directory()})")
    parser.add_argument("--dry-run", action="store_true", help="list what would be applied; change nothing")
    parser.add_argument("--lock-wait", type=cli.int_range(0), default=DEFAULT_LOCK_WAIT_SECONDS, metavar="SECONDS",
                        help="how long to wait for another run's migration lock (default %(default)s)")
    parser.add_argument("--lock-timeout", type=cli.float_range(0.001), default=DEFAULT_LOCK_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="lock_timeout of each file: how long its DDL may wait for a table lock, and so how long "
                             "the application may queue behind it (default %(default)s)")
    parser.add_argument("--lock-attempts", type=int, default=DEFAULT_LOCK_ATTEMPTS, metavar="N",
                        help="attempts per file when the lock_timeout is reached, with growing waits (default %(default)s)")
    parser.add_argument("--statement-timeout", type=cli.float_range(0.001), default=DEFAULT_STATEMENT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="statement_timeout of each file (default %(default)s)")
    parser.add_argument("--allow-out-of-order", action="store_true",
                        help="apply files older than the latest applied version (refused by default)")
    parser.add_argument("--ensure-credentials", action="append", default=[], metavar="SECRET_ID",
                        help="after migrating, set the password of the role named in this secret to the secret's "
                             "(only when logging in with it fails); repeatable")
    cli.add_common_arguments(parser, endpoint=True)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with aws.one_line_errors():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    # Checked before anything connects: a bad value is a usage error (exit 2).
    timeouts = Timeouts(lock_timeout_seconds=args.lock_timeout, lock_attempts=args.lock_attempts,
                        statement_timeout_seconds=args.statement_timeout)
    target = target_from_args(args)
    assert target is not None
    cli.info(f"migrating {target.describe()}" + (" (dry run)" if args.dry_run else ""))
    try:
        result = migrate(target, Path(args.dir) if args.dir else None, dry_run=args.dry_run,
                         lock_wait_seconds=args.lock_wait, timeouts=timeouts,
                         allow_out_of_order=args.allow_out_of_order, log=cli.info)
    except MigrationFailed as err:
        if args.json:
            cli.emit_json({"ok": False, "error": str(err), "file": err.migration.filename, "applied": err.applied})
        raise
    credentials = []
    if not args.dry_run:
        for secret_id in args.ensure_credentials:
            doc = read_secret_json(secret_id, endpoint_url=args.endpoint_url, region=args.region)
            # The secret names the role and password; the endpoint is the one just migrated.
            role_target = target_from_document(doc, source=f"secret {secret_id}", host=target.host,
                                               port=target.port, dbname=target.dbname)
            outcome = ensure_role_matches_secret(target, role_target, secret_label=f"secret {secret_id}")
            cli.info(f"role {outcome.role}: " + ("password set from the secret" if outcome.changed
                                                 else "already accepts the secret's password"))
            credentials.append(outcome.to_json())
    if args.dry_run:
        for name in result.pending:
            cli.info(f"would apply {name}")
    if args.json:
        cli.emit_json({**result.to_json(), "credentials": credentials})
    cli.verdict(True, result.summary())
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
