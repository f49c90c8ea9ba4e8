"""Rotate the application's database credentials by hand, with the code the rotation function runs.

    python -m scripts.rotate --secret-id ID [--step createSecret|setSecret|testSecret|finishSecret|all]
                             [--token VERSION] [--master-secret-id ARN] [--endpoint-url URL] [--json]

`all` (the default) runs the four steps in order on a new version (or finishes the rotation in
progress). A single step works on the version staged AWSPENDING, or on --token; createSecret
alone starts a new version and prints its token. Alternating users: the new version switches
between psychology_app_a and psychology_app_b; the previous credentials keep working.

In AWS the database is reachable only inside the VPC: there, start a rotation with
`aws secretsmanager rotate-secret --secret-id ID` and the rotation function runs these steps.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Optional

from scripts.dbops.rotation import STEPS, Rotation, pending_version, rotate_all
from scripts.lib import aws, cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.rotate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secret-id", required=True, help="the application's database credentials secret (name or ARN)")
    parser.add_argument("--step", choices=[*STEPS, "all"], default="all", help="which step to run (default: all)")
    parser.add_argument("--token", default=None,
                        help="the version (ClientRequestToken) to work on; default: the version staged AWSPENDING, "
                             "or a new one for createSecret/all")
    parser.add_argument("--master-secret-id", default=None,
                        help="master credentials secret, when the application secret has no masterarn")
    cli.add_common_arguments(parser, endpoint=True)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with aws.one_line_errors():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    sm = aws.client("secretsmanager", region=args.region, endpoint_url=args.endpoint_url)
    try:
        if args.step == "all":
            results = rotate_all(sm, args.secret_id, token=args.token, master_secret_id=args.master_secret_id, log=cli.info)
        else:
            token = args.token or pending_version(sm, args.secret_id)
            if token is None:
                if args.step != "createSecret":
                    cli.fail(f"no rotation of {args.secret_id} is in progress (no version is staged AWSPENDING); "
                             "start one with --step createSecret or --step all")
                token = str(uuid.uuid4())
            rotation = Rotation(sm, args.secret_id, token, master_secret_id=args.master_secret_id, manual=True, log=cli.info)
            results = [rotation.run(args.step)]
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
