"""Smoke tests after a deployment (spec 8.1): concurrent checks, bounded retries with backoff.

    python -m scripts.smoke --url URL [--dsn DSN | --secret-id ARN] [--redis-url URL | --redis-secret-id ARN] [--json]
    python -m scripts.smoke --url https://api.example.com --via-function psychology-api-prod-db-health

Checks (each reported with name, verdict, duration, attempts, error):
  health          GET /health/ answers 200
  api_health      GET /api/v1/health/ answers 200 with JSON status "ok"
  static          a static file (--static-path) answers 200 with Cache-Control containing "public"
  https_redirect  (HTTPS URLs) plain HTTP answers 301 to https://
  hsts            (HTTPS URLs) Strict-Transport-Security with a positive max-age
  maintenance     (--expect-maintenance, instead of the first three) /health/ answers 503
  database        SELECT 1 and the database is at the latest migration of migrations/
  redis           SET/GET round trip (TLS for rediss://, AUTH with the password)

In AWS the database and Redis are only reachable inside the VPC: --via-function runs those two
checks in the health function and merges its verdicts. Exit 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from scripts.dbops import checks as smoke
from scripts.lib import aws, cli
from scripts.lib.db import add_target_arguments, target_from_args
from scripts.lib.secrets import read_secret_json


def http_url(text: str) -> str:
    """An argparse type: an http:// or https:// URL with a host (anything else would fail every
    HTTP check only after all its retries)."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, not {text!r}")
    return text


def url_path(text: str) -> str:
    """An argparse type: a path on the API's host, starting with /."""
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected a path starting with /, not {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m scripts.smoke", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    http = parser.add_argument_group("HTTP")
    http.add_argument("--url", type=http_url, default=None, help="base URL of the API, e.g. https://api.example.com")
    http.add_argument("--http-url", type=http_url, default=None,
                      help="where plain HTTP answers, for the redirect check (default: the --url host on port 80)")
    http.add_argument("--static-path", type=url_path, default=smoke.DEFAULT_STATIC_PATH,
                      help="a static file that must be served with public cache headers (default %(default)s)")
    http.add_argument("--ca-bundle", type=cli.existing_file, default=None,
                      help="CA bundle to verify the server's certificate with")
    http.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    http.add_argument("--expect-maintenance", action="store_true",
                      help="maintenance mode is on: expect 503 from /health/ instead of the application checks")
    add_target_arguments(parser, required=False)
    redis_group = parser.add_argument_group("Redis")
    redis_group.add_argument("--redis-url", default=os.environ.get("SMOKE_REDIS_URL"),
                             help="redis:// or rediss:// URL with the password (or SMOKE_REDIS_URL, which keeps it out of ps)")
    redis_group.add_argument("--redis-ca-bundle", type=cli.existing_file, default=None,
                             help="CA bundle for rediss:// with a private CA (ElastiCache's certificates are public)")
    redis_group.add_argument("--redis-secret-id", default=None,
                             help="Redis secret ({host, port, auth_token, tls}) instead of --redis-url")
    parser.add_argument("--via-function", default=None, metavar="NAME",
                        help="run the database and Redis checks in this in-VPC function instead of from here")
    parser.add_argument("--migrations-dir", type=cli.existing_dir, default=None,
                        help="migrations to compare the database with (default: migrations/ of this code)")
    retry = parser.add_argument_group("retries")
    retry.add_argument("--attempts", type=cli.int_range(1), default=6, help="attempts per check (default %(default)s)")
    retry.add_argument("--initial-wait", type=cli.float_range(0), default=1.0,
                       help="first backoff in seconds (default %(default)s)")
    retry.add_argument("--max-wait", type=cli.float_range(0), default=20.0,
                       help="longest backoff in seconds (default %(default)s)")
    parser.add_argument("--summary-only", action="store_true",
                        help="with --json: print only {ok, summary, checks: {name: verdict}} (the stack output)")
    cli.add_common_arguments(parser, endpoint=True)
    return parser


def _invoke_function(name: str, policy: smoke.RetryPolicy, *, region: Optional[str],
                     endpoint_url: Optional[str]) -> list[smoke.CheckResult]:
    started = time.monotonic()
    try:
        client = aws.client("lambda", region=region, endpoint_url=endpoint_url, read_timeout=900, total_attempts=1)
        response = client.invoke(FunctionName=name, InvocationType="RequestResponse", Payload=json.dumps(
            {"attempts": policy.attempts, "initial_wait": policy.initial_wait, "max_wait": policy.max_wait}).encode())
        payload = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError"):
            message = payload.get("errorMessage") if isinstance(payload, dict) else None
            raise RuntimeError(f"function {name} failed: {message or response['FunctionError']}")
        if not isinstance(payload, dict) or "checks" not in payload:
            raise RuntimeError(f"function {name} answered something that is not a smoke report")
        return [smoke.CheckResult.from_json(doc) for doc in payload["checks"]]
    except Exception as err:  # noqa: BLE001 - reported as a failed check, like every other failure
        return [smoke.CheckResult("in_vpc", False, int((time.monotonic() - started) * 1000), 1,
                                  cli.masker(str(err).splitlines()[0] if str(err) else type(err).__name__))]


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with aws.one_line_errors():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.ca_bundle and args.insecure:
        cli.fail("give either --ca-bundle or --insecure", cli.EXIT_USAGE)
    if args.summary_only and not args.json:
        cli.fail("--summary-only shapes the --json document: give --json too", cli.EXIT_USAGE)
    if args.redis_url and args.redis_secret_id:
        cli.fail("give either --redis-url or --redis-secret-id", cli.EXIT_USAGE)
    policy = smoke.RetryPolicy(attempts=args.attempts, initial_wait=args.initial_wait, max_wait=args.max_wait)

    checks: list[smoke.Check] = []
    if args.url:
        verify: Any = args.ca_bundle or not args.insecure
        checks += smoke.http_checks(smoke.HttpTarget(args.url, http_url=args.http_url, verify=verify),
                                    static_path=args.static_path, expect_maintenance=args.expect_maintenance)
    local_data = not args.via_function
    if local_data:
        db_target = target_from_args(args)
        if db_target is not None:
            checks.append(smoke.database_check(db_target, Path(args.migrations_dir) if args.migrations_dir else None))
        if args.redis_url:
            cli.masker.add(args.redis_url)
            try:
                redis_target = smoke.RedisTarget.from_url(args.redis_url)
            except ValueError as err:
                cli.fail(f"--redis-url: {err}", cli.EXIT_USAGE)
            if args.redis_ca_bundle:
                redis_target = dataclasses.replace(redis_target, ca_bundle=args.redis_ca_bundle)
            checks.append(smoke.redis_check(redis_target))
        elif args.redis_secret_id:
            redis_doc = read_secret_json(args.redis_secret_id, endpoint_url=args.endpoint_url, region=args.region)
            checks.append(smoke.redis_check(smoke.RedisTarget.from_secret(redis_doc)))
    elif args.dsn or args.secret_id or args.redis_url or args.redis_secret_id:
        cli.fail("--via-function runs the database and Redis checks in the function; drop --dsn/--secret-id/--redis-*",
                 cli.EXIT_USAGE)
    if not checks and not args.via_function:
        cli.fail("nothing to check: give --url, a database (--dsn/--secret-id), Redis or --via-function", cli.EXIT_USAGE)

    cli.info(f"running {len(checks)} check(s)" + (f" and the in-VPC checks of {args.via_function}" if args.via_function else "")
             + f", up to {policy.attempts} attempts each")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        local_future = pool.submit(smoke.run_checks, checks, policy, cli.info)
        remote_future = pool.submit(_invoke_function, args.via_function, policy, region=args.region,
                                    endpoint_url=args.endpoint_url) if args.via_function else None
        results = local_future.result() + (remote_future.result() if remote_future else [])
    doc = smoke.report(results, int((time.monotonic() - started) * 1000))
    for result in results:
        line = f"{'pass' if result.ok else 'FAIL'}  {result.name:<15} {result.duration_ms:>6} ms  {result.attempts} attempt(s)  "
        cli.info(line + ((result.detail or "") if result.ok else (result.error or "")))
    if args.json:
        cli.emit_json(smoke.compact_report(doc) if args.summary_only else doc)
    cli.verdict(doc["ok"], doc["summary"])
    return cli.EXIT_OK if doc["ok"] else cli.EXIT_FAILURE


if __name__ == "__main__":
    cli.run(main)
