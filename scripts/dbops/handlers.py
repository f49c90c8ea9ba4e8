"""AWS Lambda entry points (python3.12, in the private subnets, security group `dbops`).

Each function reads only ARNs and endpoint settings from its environment and the credentials
from Secrets Manager at run time:

| handler | environment | does |
|---|---|---|
| `migrate_handler` | MASTER_SECRET_ARN, DB_HOST, DB_PORT, DB_NAME, APP_DB_SECRET_ARN, MONITOR_DB_SECRET_ARN, BACKUP_DB_SECRET_ARN, DRILL_DB_SECRET_ARN, MIGRATION_LOCK_TIMEOUT_SECONDS, MIGRATION_LOCK_ATTEMPTS, MIGRATION_STATEMENT_TIMEOUT_SECONDS | applies `migrations/` as the RDS master, then makes the current user of the application's, the monitoring, the backup and the drill secret accept its password |
| `health_handler` | APP_DB_SECRET_ARN, DB_HOST, DB_PORT, DB_NAME, REDIS_SECRET_ARN | the in-VPC smoke checks: database (with the application's credentials: SELECT 1, latest migration) and Redis round trip |
| `rotation_handler` | MASTER_SECRET_ARN, DB_HOST, DB_PORT, DB_NAME | Secrets Manager's four rotation steps for the application's, the monitoring, the backup and the drill database credentials (alternating users) |
| `redis_rotation_handler` | REDIS_REPLICATION_GROUP_ID, REDIS_HOST, REDIS_PORT | the four rotation steps for the Redis AUTH token (two valid tokens during the change) |
| `rotation_check_handler` | ROTATED_SECRET_ARNS, METRIC_NAMESPACE, MARGIN_DAYS | hourly: publishes how many rotated secrets are overdue (scripts/dbops/rotation_check.py) |
| `generated_rotation_handler` | (none) | the four rotation steps for the Django SECRET_KEY (announced next key, previous key kept as a fallback) and the Grafana admin password |

`migrate_handler` and `health_handler` answer `{"ok": bool, ...}`; a known failure is
`{"ok": false, "error": "<one line>"}`. The rotation handlers raise on failure, as Secrets
Manager expects. Every message passes through the masker: no secret value reaches the logs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Optional

import psycopg

from scripts.dbops import checks as smoke
from scripts.dbops.credentials import ensure_role_matches_secret
from scripts.dbops.elasticache import AuthTokens, Deadline, ElastiCacheAuthTokens
from scripts.dbops.generated_rotation import GeneratedSecretRotation
from scripts.dbops.migrations import (
    DEFAULT_LOCK_ATTEMPTS,
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    Timeouts,
    migrate,
)
from scripts.dbops.redis_rotation import RedisRotation, redis_endpoint_from_environment
from scripts.dbops.rotation import Rotation, endpoint_from_environment
from scripts.dbops.rotation_check import DEFAULT_MARGIN_DAYS, check_rotation
from scripts.lib import aws
from scripts.lib.cli import ScriptError, masker
from scripts.lib.db import DbTarget, target_from_document, target_from_secret
from scripts.lib.secrets import read_secret_json

logger = logging.getLogger("psychology_api.dbops")
logger.setLevel(logging.INFO)


def _log(message: str) -> None:
    logger.info(masker(message))


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ScriptError(f"the function's environment lacks {name}")
    return value


def _endpoint() -> dict[str, Any]:
    return {"host": _env("DB_HOST"), "port": int(os.environ.get("DB_PORT") or 5432), "dbname": _env("DB_NAME")}


def master_target() -> DbTarget:
    """The RDS-managed master secret holds only {username, password}; the endpoint comes from
    the function's environment."""
    return target_from_secret(_env("MASTER_SECRET_ARN"), **_endpoint())


def secret_target(secret_arn: str) -> DbTarget:
    doc = read_secret_json(secret_arn)
    return target_from_document(doc, source=f"secret {secret_arn}", **_endpoint())


# The secrets whose role the migrate function makes accept the secret's password, after the
# migrations created the roles (the first version of each; rotation owns them afterwards).
MANAGED_SECRETS = (("application", "APP_DB_SECRET_ARN"), ("monitoring", "MONITOR_DB_SECRET_ARN"),
                   ("backup", "BACKUP_DB_SECRET_ARN"), ("restore drill", "DRILL_DB_SECRET_ARN"))


def _failure(err: BaseException, started: float) -> dict[str, Any]:
    message = masker(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    logger.error(message)
    return {"ok": False, "error": message, "duration_ms": int((time.monotonic() - started) * 1000)}


def migration_timeouts(event: dict[str, Any]) -> Timeouts:
    """The event's settings, else the function's environment (the stack's configuration), else
    the defaults."""
    def setting(key: str, variable: str, default: float) -> float:
        value = event.get(key, os.environ.get(variable) or default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ScriptError(f"{key} must be a finite number, not {value!r}")
        return number

    return Timeouts(
        lock_timeout_seconds=setting("lock_timeout_seconds", "MIGRATION_LOCK_TIMEOUT_SECONDS", DEFAULT_LOCK_TIMEOUT_SECONDS),
        lock_attempts=int(setting("lock_attempts", "MIGRATION_LOCK_ATTEMPTS", DEFAULT_LOCK_ATTEMPTS)),
        statement_timeout_seconds=setting("statement_timeout_seconds", "MIGRATION_STATEMENT_TIMEOUT_SECONDS",
                                          DEFAULT_STATEMENT_TIMEOUT_SECONDS))


def migrate_handler(event: Optional[dict[str, Any]], context: Any = None) -> dict[str, Any]:
    """Event: {} or any of {"dry_run": true, "allow_out_of_order": true, "lock_timeout_seconds": s,
    "lock_attempts": n, "statement_timeout_seconds": s}."""
    started = time.monotonic()
    event = event or {}
    dry_run = bool(event.get("dry_run"))
    try:
        admin = master_target()
        # Called by Lambda: the run ends between files before the invocation's timeout.
        deadline = Deadline.from_lambda_context(context) if context is not None else None
        result = migrate(admin, dry_run=dry_run, timeouts=migration_timeouts(event),
                         allow_out_of_order=bool(event.get("allow_out_of_order")), log=_log, deadline=deadline)
        credentials = []
        if not dry_run:
            for label, variable in MANAGED_SECRETS:
                arn = os.environ.get(variable)
                if not arn:
                    continue
                outcome = ensure_role_matches_secret(admin, secret_target(arn), secret_label=f"the {label} secret")
                _log(f"{label} credentials: role {outcome.role} " + ("password set" if outcome.changed else "already matches"))
                credentials.append(outcome.to_json())
        _log(result.summary())
        return {**result.to_json(), "credentials": credentials,
                "duration_ms": int((time.monotonic() - started) * 1000)}
    except (ScriptError, psycopg.Error) as err:
        return _failure(err, started)


def health_handler(event: Optional[dict[str, Any]], context: Any = None) -> dict[str, Any]:
    """Event: {} or {"attempts": n, "initial_wait": s, "max_wait": s}. Answers the smoke report
    of the checks that need the VPC."""
    started = time.monotonic()
    event = event or {}
    policy = smoke.RetryPolicy(attempts=int(event.get("attempts", 4)), initial_wait=float(event.get("initial_wait", 1.0)),
                               max_wait=float(event.get("max_wait", 10.0)))
    checks: list[smoke.Check] = []
    app_secret = os.environ.get("APP_DB_SECRET_ARN")
    if app_secret:
        checks.append(smoke.Check("database", lambda: smoke.database_check(secret_target(app_secret)).run()))
    redis_secret = os.environ.get("REDIS_SECRET_ARN")
    if redis_secret:
        checks.append(smoke.Check("redis", lambda: smoke.redis_check(
            smoke.RedisTarget.from_secret(read_secret_json(redis_secret))).run()))
    results = smoke.run_checks(checks, policy)
    doc = smoke.report(results, int((time.monotonic() - started) * 1000))
    _log(doc["summary"])
    return doc


def rotation_event(event: dict[str, Any]) -> tuple[str, str, str]:
    """(SecretId, ClientRequestToken, Step) of Secrets Manager's rotation contract."""
    try:
        return event["SecretId"], event["ClientRequestToken"], event["Step"]
    except KeyError as missing:
        raise ValueError(f"rotation event lacks {missing}") from None


@contextlib.contextmanager
def failed_step_raised() -> Iterator[None]:
    """A failed rotation step raised again, masked and in one line, so that Secrets Manager
    records it (and the function's Errors alarm sees it)."""
    try:
        with aws.one_line_errors():
            yield
    except ScriptError as err:
        raise RuntimeError(masker(str(err))) from None


def rotation_handler(event: dict[str, Any], context: Any = None) -> None:
    """Secrets Manager's rotation contract: {"SecretId", "ClientRequestToken", "Step"}."""
    secret_id, token, step = rotation_event(event)
    _log(f"rotation step {step} for version {token}")
    with failed_step_raised():
        Rotation(aws.client("secretsmanager"), secret_id, token,
                 master_secret_id=os.environ.get("MASTER_SECRET_ARN") or None,
                 endpoint=endpoint_from_environment(), log=_log).run(step)


def auth_tokens_from_environment(deadline: Deadline) -> AuthTokens:
    """The replication group whose AUTH token the Redis rotation changes: the one named in the
    function's environment (its role may modify exactly that group), never one from a secret.
    No wait goes past `deadline`."""
    return ElastiCacheAuthTokens(aws.client("elasticache"), _env("REDIS_REPLICATION_GROUP_ID"), deadline=deadline)


def redis_rotation_handler(event: dict[str, Any], context: Any = None) -> None:
    """Secrets Manager's rotation contract for the Redis secret: {"SecretId", "ClientRequestToken", "Step"}.
    Waiting for the replication group stops a safety margin before the function's timeout (the
    Lambda context's remaining time), with a one-line "retry this step" error."""
    secret_id, token, step = rotation_event(event)
    deadline = Deadline.from_lambda_context(context)
    _log(f"Redis rotation step {step} for version {token} ({int(deadline.remaining())} s for waiting)")
    with failed_step_raised():
        RedisRotation(aws.client("secretsmanager"), secret_id, token, tokens=auth_tokens_from_environment(deadline),
                      endpoint=redis_endpoint_from_environment(), log=_log).run(step)


def rotation_check_handler(event: Optional[dict[str, Any]], context: Any = None) -> dict[str, Any]:
    """EventBridge's hourly schedule. Raises (so Lambda counts an error) only when the check
    itself cannot run; overdue secrets are reported through the metric, and logged."""
    secret_ids = [arn for arn in _env("ROTATED_SECRET_ARNS").split(",") if arn]
    margin = int(os.environ.get("MARGIN_DAYS") or DEFAULT_MARGIN_DAYS)
    with aws.one_line_errors():
        answer = check_rotation(aws.client("secretsmanager"), aws.client("cloudwatch"), secret_ids,
                                namespace=_env("METRIC_NAMESPACE"), now=datetime.now(UTC), margin_days=margin)
    for name, reason in answer["overdue"].items():
        logger.warning(masker(f"rotation overdue: {name}: {reason}"))
    _log(f"rotation check: {answer['checked']} secret(s), {len(answer['overdue'])} overdue")
    return answer


def generated_rotation_handler(event: dict[str, Any], context: Any = None) -> None:
    """Secrets Manager's rotation contract for the Django secret and Grafana's admin secret:
    {"SecretId", "ClientRequestToken", "Step"} (scripts/dbops/generated_rotation.py)."""
    secret_id, token, step = rotation_event(event)
    _log(f"generated-secret rotation step {step} for version {token}")
    with failed_step_raised():
        GeneratedSecretRotation(aws.client("secretsmanager"), secret_id, token, log=_log).run(step)
