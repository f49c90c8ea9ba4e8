"""Rotate a database credentials secret, the Redis AUTH token or a generated secret by hand,
with the code the rotation functions run.

    python -m scripts.rotate --secret-id ID [--step createSecret|setSecret|testSecret|finishSecret|all]
                             [--token VERSION] [--master-secret-id ARN]
                             [--replication-group-id ID] [--redis-ca-bundle PEM] [--timeout SECONDS]
                             [--endpoint-url URL] [--region R] [--json]

`all` (the default) runs the four steps in order on a new version (or finishes the rotation in
progress). A single step works on the version staged AWSPENDING, or on --token; createSecret
alone starts a new version and prints its token.

The secret's current value says what it is:
* database credentials (`username`/`password`: the application's or the monitoring role's):
  alternating users, psychology_app_a/_b or psychology_monitor_a/_b; the previous credentials
  keep working;
* the Redis secret (`auth_token`): a new AUTH token made valid next to the current one on the
  ElastiCache replication group --replication-group-id (stack output
  redis_replication_group_id); the current token keeps working. Waiting for the group's token
  changes stops after --timeout seconds for the whole run (default 1800) with "retry this
  step"; running the same step again continues.
* a generated secret (Django's `SECRET_KEY` with its fallbacks, Grafana's `admin_password`): a
  new value, announced or applied by the hosts' refresh as the rotation function does.

In AWS the database and Redis are reachable only inside the VPC: there, start a rotation with
`aws secretsmanager rotate-secret --secret-id ID` and the rotation function runs these steps.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any, Optional

from scripts.dbops.elasticache import Deadline, ElastiCacheAuthTokens
from scripts.dbops.generated_rotation import GeneratedSecretRotation, is_django_document, is_grafana_document
from scripts.dbops.redis_rotation import RedisRotation, is_redis_document
from scripts.dbops.rotation import MIN_HOURS_BETWEEN_ROTATIONS, STEPS, Rotation, SecretRotation, pending_version, run_all
from scripts.lib import aws, cli
from scripts.lib.secrets import read_secret_json

# A token change takes minutes; a hand-run `all` may need the restore of a lost token (two
# changes) and the new token (one).
DEFAULT_TIMEOUT_SECONDS = 1800.0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m scripts.rotate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secret-id", required=True,
                        help="the secret to rotate (name or ARN): database credentials or the Redis secret")
    parser.add_argument("--step", choices=[*STEPS, "all"], default="all", help="which step to run (default: all)")
    parser.add_argument("--token", default=None,
                        help="the version (ClientRequestToken) to work on; default: the version staged AWSPENDING, "
                             "or a new one for createSecret/all")
    parser.add_argument("--master-secret-id", default=None,
                        help="database: master credentials secret, when the secret has no masterarn")
    parser.add_argument("--replication-group-id", default=None,
                        help="Redis: the ElastiCache replication group whose AUTH token changes (setSecret needs it)")
    parser.add_argument("--redis-ca-bundle", type=cli.existing_file, default=None,
                        help="Redis: CA certificates (PEM) for a server with a private CA; default: the system's")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="Redis: stop waiting for the replication group's token changes after this many seconds "
                             "for the whole run (default %(default)s); the step then fails with 'retry this step'")
    parser.add_argument("--force", action="store_true",
                        help=f"start a rotation although the current version is younger than "
                             f"{MIN_HOURS_BETWEEN_ROTATIONS} h: clients that have not re-read the secret since the last "
                             "rotation lose access, so refresh every client first")
    cli.add_common_arguments(parser, endpoint=True)
    return parser


def _rotation(args: argparse.Namespace, sm: Any, token: str, deadline: Deadline) -> SecretRotation:
    current = read_secret_json(args.secret_id, client=sm)
    if is_redis_document(current):
        if not args.replication_group_id and args.step in ("setSecret", "all"):
            cli.fail("setSecret of a Redis secret needs --replication-group-id (stack output redis_replication_group_id)")
        tokens = None
        if args.replication_group_id:
            tokens = ElastiCacheAuthTokens(
                aws.client("elasticache", region=args.region, endpoint_url=args.endpoint_url), args.replication_group_id,
                deadline=deadline, log=cli.info)
        return RedisRotation(sm, args.secret_id, token, tokens=tokens, ca_bundle=args.redis_ca_bundle, manual=True,
                             force=args.force, log=cli.info)
    if is_django_document(current) or is_grafana_document(current):
        return GeneratedSecretRotation(sm, args.secret_id, token, manual=True, force=args.force, log=cli.info)
    return Rotation(sm, args.secret_id, token, master_secret_id=args.master_secret_id, manual=True, force=args.force,
                    log=cli.info)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with aws.one_line_errors():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        cli.fail("--timeout must be positive", cli.EXIT_USAGE)
    deadline = Deadline.after(args.timeout, what=f"--timeout {args.timeout:g} s")
    sm = aws.client("secretsmanager", region=args.region, endpoint_url=args.endpoint_url)
    try:
        token = args.token or pending_version(sm, args.secret_id)
        if args.step == "all":
            results = run_all(_rotation(args, sm, token or str(uuid.uuid4()), deadline))
        else:
            if token is None:
                if args.step != "createSecret":
                    cli.fail(f"no rotation of {args.secret_id} is in progress (no version is staged AWSPENDING); "
                             "start one with --step createSecret or --step all")
                token = str(uuid.uuid4())
            results = [_rotation(args, sm, token, deadline).run(args.step)]
    except sm.exceptions.ResourceNotFoundException:
        cli.fail(f"secret {args.secret_id} does not exist")
    token = results[-1].token
    if args.json:
        cli.emit_json({"ok": True, "secret_id": args.secret_id, "token": token, "steps": [r.to_json() for r in results]})
    outcomes = ", ".join(f"{r.step} {r.outcome}" for r in results)
    if args.step in ("all", "finishSecret"):
        summary = f"{args.secret_id}: version {token} is AWSCURRENT ({outcomes})"
    else:
        summary = f"{args.secret_id}: version {token}: {outcomes}"
    cli.verdict(True, summary)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
