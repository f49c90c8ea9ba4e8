"""Database operations inside the VPC: Lambda functions built from `scripts/dbops`, the
application's and the monitoring role's database credentials, and the rotation of those two
secrets and of the Redis AUTH token.

| function | handler | does |
|---|---|---|
| `<project>-<stack>-db-migrate` | migrate_handler | applies `migrations/` as the RDS master; makes the application's current user and the monitoring role accept their secrets' passwords |
| `<project>-<stack>-db-health` | health_handler | the in-VPC smoke checks (database with the application's credentials, Redis) |
| `<project>-<stack>-db-rotate` | rotation_handler | Secrets Manager's four rotation steps for the four database login secrets, alternating users |
| `<project>-<stack>-db-rotate-redis` | redis_rotation_handler | the four steps for the Redis secret: a new AUTH token next to the current one on the replication group (when the Redis inputs are given) |
| `<project>-<stack>-db-rotate-generated` | generated_rotation_handler | the four steps for the generated secrets (Django SECRET_KEY with announced and previous keys, Grafana admin password), added by `rotate_generated_secrets` |

Each function has its own role: the VPC-access managed policy (ENIs and its logs) plus exactly
the secrets it reads or writes and the data key through Secrets Manager only. They run in the
private subnets with the `dbops` security group, which the database and Redis groups admit, and
reach the Secrets Manager API through the interface endpoint (prod) or the NAT gateway.

Secrets (encrypted with the data key):
* `psychology-api/<stack>/database/app`: `{"engine", "host", "port", "dbname", "username",
  "password", "masterarn"}`. Pulumi writes only the first version (user psychology_app_a and a
  generated password) and never touches the value again: rotation owns it from then on.
* `psychology-api/<stack>/database/monitor`: `{"username", "password", "host", "port", "dbname"}`
  for postgres_exporter. Pulumi writes the first version (user psychology_monitor_a, members of
  the group psychology_monitor that holds pg_monitor) and never touches the value again.
* `psychology-api/<stack>/database/backup` and `.../database/drill`: the same keys, for the
  monitoring host's nightly backup (users psychology_backup_a/_b, pg_read_all_data, read-only)
  and its restore drill (psychology_drill_a/_b acting as psychology_drill: CREATEDB only), so
  that host never reads the master secret (migration 0005).

Each secret rotates every `rotation_days` with its own SecretRotation and an invoke permission
that names exactly that secret. The first `up` runs the migrate function once (the `bootstrap`
command) before rotation of the database secrets is switched on, so the roles exist and accept
the secrets' passwords when Secrets Manager first tests the rotation function; the Redis
rotation waits for the Redis secret's first value. The bootstrap and the Redis rotation also
wait for `network_ready` (the network and the security groups), so no function runs before
its routes, rules and endpoints exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.commands import release_step, script_command
from components.common import as_text, assume_role_policy, name_tag, physical_prefix, policy_json, type_token
from components.connection_budget import FUNCTION_LIMITS
from components.lambda_package import LambdaPackage, build_lambda_package
from scripts.dbops.rotation_check import DEFAULT_MARGIN_DAYS

VPC_ACCESS_POLICY_ARN = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
RUNTIME = "python3.12"
APP_FIRST_USER = "psychology_app_a"
MONITOR_FIRST_USER = "psychology_monitor_a"
# The monitoring host's own logins (migration 0005): secret key -> (first user, what it is for).
MONITORING_HOST_LOGINS = {
    "backup": ("psychology_backup_a", "Backup credentials (pg_read_all_data, read-only) for the nightly pg_dump"),
    "drill": ("psychology_drill_a", "Restore-drill credentials (CREATEDB: its scratch database only, no live data)"),
}
# The only punctuation the rotation function's passwords can contain (scripts/dbops/rotation.py
# excludes the rest); the first password uses the same set.
PASSWORD_SPECIALS = "-_."  # noqa: S105 - a character set, not a password
ROTATE_SECRET_ACTIONS = ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue",
                         "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"]


@dataclass(frozen=True)
class FunctionSpec:
    role: str
    handler: str
    description: str
    timeout: int
    memory: int


FUNCTIONS = {
    "migrate": FunctionSpec("migrate", "scripts.dbops.handlers.migrate_handler",
                            "Applies migrations/ and sets the application and monitoring roles' passwords", 900, 512),
    "health": FunctionSpec("health", "scripts.dbops.handlers.health_handler",
                           "In-VPC smoke checks: database (latest migration) and Redis", 180, 256),
    "rotate": FunctionSpec("rotate", "scripts.dbops.handlers.rotation_handler",
                           "Rotates the application's and the monitoring role's database credentials (alternating users)",
                           120, 256),
    # One token change on the replication group per step, waited for: minutes, not seconds.
    # The waits end 45 s before this timeout (scripts/dbops/elasticache.py, Deadline).
    "rotate-redis": FunctionSpec("rotate-redis", "scripts.dbops.handlers.redis_rotation_handler",
                                 "Rotates the Redis AUTH token (two valid tokens during the change)", 900, 256),
    "check-rotation": FunctionSpec("check-rotation", "scripts.dbops.handlers.rotation_check_handler",
                                   "Hourly: publishes how many rotated secrets are overdue (alarm rotation-overdue)",
                                   60, 128),
    # Secrets Manager calls only: seconds.
    "rotate-generated": FunctionSpec("rotate-generated", "scripts.dbops.handlers.generated_rotation_handler",
                                     "Rotates the generated secrets: Django SECRET_KEY (with fallbacks), Grafana admin "
                                     "password", 60, 256),
}
ROTATION_CHECK_SCHEDULE = "rate(1 hour)"


@dataclass
class DbOpsArgs:
    region: str                                  # AWS region (config aws:region): the kms:ViaService conditions
    account_id: str                              # this account's id: the roles' and invoke permissions' source account
    kms_key_arn: pulumi.Input[str]               # DataKey.arn: the secrets, the functions' environment and logs
    private_subnet_ids: Sequence[pulumi.Input[str]]  # Network.private_subnet_ids: where the functions run
    security_group_id: pulumi.Input[str]         # SecurityGroups.ids["dbops"]
    master_secret_arn: pulumi.Input[str]         # Database.master_secret_arn: the RDS-managed master secret
    db_host: pulumi.Input[str]                   # Database.endpoint (host name, no port)
    db_port: pulumi.Input[int]                   # Database.port (TCP port)
    db_name: str                                 # config dbName: the application's database
    rotation_days: int                           # config secretRotationDays: days between rotations of each secret
    recovery_window_days: int                    # config secretRecoveryWindowDays: days a deleted secret can be restored
    redis_secret_arn: Optional[pulumi.Input[str]] = None  # Cache.secret_arn: the health check reads it; rotated with the below
    # The replication group whose AUTH token the Redis rotation changes; with these and
    # redis_secret_arn the Redis secret rotates too.
    redis_replication_group_id: Optional[pulumi.Input[str]] = None  # Cache.replication_group_id
    redis_replication_group_arn: Optional[pulumi.Input[str]] = None  # Cache.arn: the one group the rotation may modify
    redis_host: Optional[pulumi.Input[str]] = None   # Cache.primary_endpoint
    redis_port: Optional[pulumi.Input[int]] = None   # Cache.port (TCP port; 6379 when not given)
    log_retention_days: int = 90                 # config dataLogRetentionDays: days the functions' log groups keep logs
    # Each migration file's lock_timeout, attempts at it and statement_timeout (the migrate
    # function's environment; scripts/dbops/migrations.py).
    migration_lock_timeout_seconds: int = 5      # config migrationLockTimeoutSeconds (seconds)
    migration_lock_attempts: int = 5             # config migrationLockAttempts (count)
    migration_statement_timeout_seconds: int = 600  # config migrationStatementTimeoutSeconds (seconds)
    package: Optional[LambdaPackage] = None      # the functions' zip (components/lambda_package.py); built on demand when not given
    # What must exist before a function runs: its way to the database, Redis and the Secrets
    # Manager API (security-group rules, NAT routes, interface endpoints). The functions only
    # reference the subnets and the group, not the rules and routes, so without this the
    # first `up` could invoke them before their network path exists. Give the components
    # (Network, SecurityGroups): depending on a component waits for all its children.
    network_ready: Sequence[pulumi.Resource] = ()


class DbOps(pulumi.ComponentResource):
    app_db_secret_arn: pulumi.Output[str]
    monitor_db_secret_arn: pulumi.Output[str]
    backup_db_secret_arn: pulumi.Output[str]
    drill_db_secret_arn: pulumi.Output[str]
    function_names: dict[str, pulumi.Output[str]]
    function_arns: dict[str, pulumi.Output[str]]
    role_arns: dict[str, pulumi.Output[str]]
    migrate_function_name: pulumi.Output[str]
    health_function_name: pulumi.Output[str]
    rotation_function_arn: pulumi.Output[str]
    redis_rotation_function_arn: Optional[pulumi.Output[str]]
    # The functions Secrets Manager invokes to rotate ("rotate", "rotate-redis"), for the
    # Errors alarms, and the namespace of the rotation check's metric.
    rotation_function_names: dict[str, pulumi.Output[str]]
    rotation_metric_namespace: str
    package_sha256: str
    bootstrap: pulumi.Resource

    def __init__(self, name: str, args: DbOpsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("dbops", "DbOps"), name, None, opts)
        package = args.package or build_lambda_package()
        self._name, self._args, self._package = name, args, package  # for rotate_generated_secrets
        # The contents' hash, not the zip's: the release steps follow it, and it must not
        # change with the machine that builds the zip (components/lambda_package.py).
        self.package_sha256 = package.content_sha256
        credentials = self._credentials(name, args)
        self.app_db_secret_arn = credentials.app.arn
        self.monitor_db_secret_arn = credentials.monitor.arn
        self.backup_db_secret_arn = credentials.host_logins["backup"][0].arn
        self.drill_db_secret_arn = credentials.host_logins["drill"][0].arn
        arns = credentials.arns()
        redis_rotation = rotates_redis(args)
        # Every secret a function rotates; watch_rotations() checks them all hourly.
        self._rotated: list[pulumi.Input[str]] = rotated_secret_arns(arns, redis_rotation, args.redis_secret_arn)
        self.rotation_metric_namespace = f"{pulumi.get_project()}/{pulumi.get_stack()}/rotation"
        functions = self._functions(name, args, package, function_statements(args, arns, redis_rotation),
                                    function_environments(args, arns, redis_rotation))
        self.bootstrap = self._bootstrap(name, args, credentials, functions["migrate"])
        self._rotations(name, args, credentials, functions)
        self.register_outputs({
            "app_db_secret_arn": self.app_db_secret_arn,
            "monitor_db_secret_arn": self.monitor_db_secret_arn,
            "backup_db_secret_arn": self.backup_db_secret_arn,
            "drill_db_secret_arn": self.drill_db_secret_arn,
            "function_names": self.function_names,
            "function_arns": self.function_arns,
            "package_sha256": self.package_sha256,
        })

    # --- secrets --------------------------------------------------------------------------

    def _credentials(self, name: str, args: DbOpsArgs) -> _Credentials:
        app = self._app_secret(name, args)
        monitor, monitor_version = self._monitor_secret(name, args)
        host_logins = {key: self._login_secret(name, key, first_user, purpose, args)
                       for key, (first_user, purpose) in MONITORING_HOST_LOGINS.items()}
        return _Credentials(app=app, monitor=monitor, monitor_version=monitor_version, host_logins=host_logins)

    def _app_secret(self, name: str, args: DbOpsArgs) -> aws.secretsmanager.Secret:
        child = pulumi.ResourceOptions(parent=self)
        secret = aws.secretsmanager.Secret(f"{name}-app-credentials", aws.secretsmanager.SecretArgs(
            name=f"{pulumi.get_project()}/{pulumi.get_stack()}/database/app",
            description="Application database credentials (engine, host, port, dbname, username, password, masterarn); "
                        f"rotated every {args.rotation_days} days with alternating users",
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=args.recovery_window_days,
            tags=name_tag("db-app-credentials", {"secret-kind": "database"})), child)
        password = random.RandomPassword(f"{name}-app-first-password", _first_password_args(), child)
        aws.secretsmanager.SecretVersion(f"{name}-app-credentials-first", aws.secretsmanager.SecretVersionArgs(
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps(
                app_credentials_document(args, password.result))),
        ), pulumi.ResourceOptions(parent=self,
                                  # After the first rotation the value belongs to the rotation function;
                                  # writing it again would put back credentials that no longer work.
                                  ignore_changes=["secret_string", "version_stages"]))
        return secret

    def _monitor_secret(self, name: str, args: DbOpsArgs) -> tuple[aws.secretsmanager.Secret,
                                                                    aws.secretsmanager.SecretVersion]:
        child = pulumi.ResourceOptions(parent=self)
        secret = aws.secretsmanager.Secret(f"{name}-monitor-credentials", aws.secretsmanager.SecretArgs(
            name=f"{pulumi.get_project()}/{pulumi.get_stack()}/database/monitor",
            description="Read-only monitoring credentials (pg_monitor) for postgres_exporter: username, password, host, "
                        f"port, dbname; rotated every {args.rotation_days} days with alternating users",
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=args.recovery_window_days,
            tags=name_tag("db-monitor-credentials", {"secret-kind": "database"})), child)
        password = random.RandomPassword(f"{name}-monitor-password", _first_password_args(), child)
        version = aws.secretsmanager.SecretVersion(f"{name}-monitor-credentials-value", aws.secretsmanager.SecretVersionArgs(
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps(
                login_credentials_document(args, MONITOR_FIRST_USER, password.result))),
        ), pulumi.ResourceOptions(parent=self,
                                  # Rotation owns the value after the first version, as for the
                                  # application's secret. A stack created before the monitoring
                                  # users alternated keeps its psychology_monitor version, which
                                  # the first rotation moves over to psychology_monitor_a.
                                  ignore_changes=["secret_string", "version_stages"]))
        return secret, version

    # --- functions ------------------------------------------------------------------------

    def _functions(self, name: str, args: DbOpsArgs, package: LambdaPackage,
                   statements: dict[str, list[dict[str, Any]]],
                   environments: dict[str, dict[str, pulumi.Input[str]]]) -> dict[str, aws.lambda_.Function]:
        """The functions that have a policy (rotate-redis only when Redis rotates), in FUNCTIONS order."""
        self.function_names, self.function_arns, self.role_arns = {}, {}, {}
        functions: dict[str, aws.lambda_.Function] = {}
        for key, spec in FUNCTIONS.items():
            if key not in statements:
                continue
            functions[key] = self._function(name, spec, args, package, statements[key], environments[key])
            self.function_names[key] = functions[key].name
            self.function_arns[key] = functions[key].arn
        self.migrate_function_name = functions["migrate"].name
        self.health_function_name = functions["health"].name
        self.rotation_function_arn = functions["rotate"].arn
        self.redis_rotation_function_arn = functions["rotate-redis"].arn if "rotate-redis" in functions else None
        self.rotation_function_names = {k: functions[k].name for k in ("rotate", "rotate-redis") if k in functions}
        return functions

    # --- first run and rotation -----------------------------------------------------------

    def _bootstrap(self, name: str, args: DbOpsArgs, credentials: _Credentials,
                   migrate: aws.lambda_.Function) -> pulumi.Resource:
        """Roles and passwords must exist before Secrets Manager tests the rotation function;
        the release steps run the same function again whenever the migrations change."""
        return release_step(
            f"{name}-bootstrap",
            script_command("scripts.release", "invoke", "--function", migrate.name, "--region", args.region),
            triggers=[credentials.app.arn, credentials.monitor_version.version_id,
                      *(v.version_id for _, v in credentials.host_logins.values()),
                      args.master_secret_arn, args.db_host],
            parent=self, depends_on=list(args.network_ready))

    def _rotations(self, name: str, args: DbOpsArgs, credentials: _Credentials,
                   functions: dict[str, aws.lambda_.Function]) -> None:
        """One SecretRotation per secret, each with an invoke permission naming exactly that
        secret: Secrets Manager may call a function only for the secrets it rotates."""
        rotate, after = functions["rotate"], [self.bootstrap]
        self._rotation(name, "app-credentials", "rotation-invoke", credentials.app.arn, credentials.app.id, rotate,
                       args, after=after)
        self._rotation(name, "monitor-credentials", "monitor-rotation-invoke", credentials.monitor.arn,
                       credentials.monitor.id, rotate, args, after=after)
        for key, (secret, _) in credentials.host_logins.items():
            self._rotation(name, f"{key}-credentials", f"{key}-rotation-invoke", secret.arn, secret.id, rotate, args,
                           after=after)
        if "rotate-redis" in functions:
            assert args.redis_secret_arn is not None
            # The Redis secret's ARN resolves once the secret holds its first value
            # (components/cache.py), which Secrets Manager's test of the function reads; the
            # test runs the function, so its network path must be there too (the database
            # rotations wait for it through the bootstrap).
            self._rotation(name, "redis", "redis-rotation-invoke", args.redis_secret_arn, args.redis_secret_arn,
                           functions["rotate-redis"], args, after=list(args.network_ready))

    def watch_rotations(self) -> aws.lambda_.Function:
        """The hourly check that every rotated secret (database, Redis and, once
        rotate_generated_secrets ran, the generated ones) rotated on schedule; call it after the
        last rotation is registered. It publishes the count of overdue secrets (alarm
        rotation-overdue in components/alarms.py)."""
        spec = FUNCTIONS["check-rotation"]
        function = self._function(self._name, spec, self._args, self._package,
                                  rotation_check_statements(self._rotated, self.rotation_metric_namespace),
                                  rotation_check_environment(self._rotated, self.rotation_metric_namespace))
        self.function_names[spec.role] = function.name
        self.function_arns[spec.role] = function.arn
        self._schedule_rotation_check(self._name, function)
        return function

    def _schedule_rotation_check(self, name: str, function: aws.lambda_.Function) -> None:
        child = pulumi.ResourceOptions(parent=self)
        rule = aws.cloudwatch.EventRule(f"{name}-check-rotation-schedule", aws.cloudwatch.EventRuleArgs(
            name=f"{physical_prefix()}-check-rotation",
            description="Hourly check that every rotated secret rotated on schedule",
            schedule_expression=ROTATION_CHECK_SCHEDULE,
            tags=name_tag("check-rotation-schedule")), child)
        permission = aws.lambda_.Permission(f"{name}-check-rotation-invoke", aws.lambda_.PermissionArgs(
            action="lambda:InvokeFunction", function=function.name, principal="events.amazonaws.com",
            source_arn=rule.arn), child)
        aws.cloudwatch.EventTarget(f"{name}-check-rotation-target", aws.cloudwatch.EventTargetArgs(
            rule=rule.name, arn=function.arn), pulumi.ResourceOptions(parent=self, depends_on=[permission]))

    def _login_secret(self, name: str, key: str, first_user: str, purpose: str,
                      args: DbOpsArgs) -> tuple[aws.secretsmanager.Secret, aws.secretsmanager.SecretVersion]:
        """A login of the monitoring host: its secret and first version, then rotation owns it."""
        child = pulumi.ResourceOptions(parent=self)
        secret = aws.secretsmanager.Secret(f"{name}-{key}-credentials", aws.secretsmanager.SecretArgs(
            name=f"{pulumi.get_project()}/{pulumi.get_stack()}/database/{key}",
            description=f"{purpose}: username, password, host, port, dbname; rotated every {args.rotation_days} days "
                        "with alternating users",
            kms_key_id=args.kms_key_arn,
            recovery_window_in_days=args.recovery_window_days,
            tags=name_tag(f"db-{key}-credentials", {"secret-kind": "database"})), child)
        password = random.RandomPassword(f"{name}-{key}-password", _first_password_args(), child)
        version = aws.secretsmanager.SecretVersion(f"{name}-{key}-credentials-value", aws.secretsmanager.SecretVersionArgs(
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps(
                login_credentials_document(args, first_user, password.result))),
        ), pulumi.ResourceOptions(parent=self, ignore_changes=["secret_string", "version_stages"]))
        return secret, version

    def _rotation(self, name: str, secret_role: str, permission_name: str, secret_arn: pulumi.Input[str],
                  secret_id: pulumi.Input[str], function: aws.lambda_.Function, args: DbOpsArgs,
                  after: Sequence[pulumi.Resource]) -> aws.secretsmanager.SecretRotation:
        permission = aws.lambda_.Permission(f"{name}-{permission_name}", aws.lambda_.PermissionArgs(
            action="lambda:InvokeFunction",
            function=function.name,
            principal="secretsmanager.amazonaws.com",
            # Only Secrets Manager acting for this account's secret may invoke it.
            source_account=args.account_id,
            source_arn=secret_arn,
        ), pulumi.ResourceOptions(parent=self))
        return aws.secretsmanager.SecretRotation(f"{name}-{secret_role}-rotation", aws.secretsmanager.SecretRotationArgs(
            secret_id=secret_id,
            rotation_lambda_arn=function.arn,
            rotation_rules=aws.secretsmanager.SecretRotationRotationRulesArgs(automatically_after_days=args.rotation_days),
            # The schedule starts the first rotation; enabling it only tests the function.
            rotate_immediately=False,
        ), pulumi.ResourceOptions(parent=self, depends_on=[permission, *after]))

    def _function(self, name: str, spec: FunctionSpec, args: DbOpsArgs, package: LambdaPackage,
                  statements: list[dict[str, Any]], environment: dict[str, pulumi.Input[str]]) -> aws.lambda_.Function:
        child = pulumi.ResourceOptions(parent=self)
        function_name = f"{physical_prefix()}-db-{spec.role}"
        log_group = aws.cloudwatch.LogGroup(f"{name}-{spec.role}-logs", aws.cloudwatch.LogGroupArgs(
            name=f"/aws/lambda/{function_name}",
            retention_in_days=args.log_retention_days,
            kms_key_id=args.kms_key_arn,
            tags=name_tag(f"db-{spec.role}-logs")), child)
        role = aws.iam.Role(f"{name}-{spec.role}-role", aws.iam.RoleArgs(
            description=f"Execution role of {function_name}: {spec.description}",
            assume_role_policy=assume_role_policy("lambda.amazonaws.com", args.account_id),
            tags=name_tag(f"db-{spec.role}-role")), child)
        vpc_access = aws.iam.RolePolicyAttachment(f"{name}-{spec.role}-vpc-access", aws.iam.RolePolicyAttachmentArgs(
            role=role.name, policy_arn=VPC_ACCESS_POLICY_ARN), child)
        access = aws.iam.RolePolicy(f"{name}-{spec.role}-access", aws.iam.RolePolicyArgs(
            role=role.id, policy=policy_json(statements)), child)
        self.role_arns[spec.role] = role.arn
        return aws.lambda_.Function(f"{name}-{spec.role}", aws.lambda_.FunctionArgs(
            name=function_name,
            description=spec.description,
            runtime=RUNTIME,
            architectures=["x86_64"],
            handler=spec.handler,
            code=pulumi.FileArchive(str(package.path)),
            code_sha256=package.code_sha256,
            role=role.arn,
            timeout=spec.timeout,
            memory_size=spec.memory,
            # A cap on the database connections it can hold (components/connection_budget.py).
            reserved_concurrent_executions=FUNCTION_LIMITS[spec.role].reserved_concurrency,
            vpc_config=aws.lambda_.FunctionVpcConfigArgs(
                subnet_ids=list(args.private_subnet_ids), security_group_ids=[args.security_group_id]),
            environment=aws.lambda_.FunctionEnvironmentArgs(variables=environment),
            kms_key_arn=args.kms_key_arn,
            logging_config=aws.lambda_.FunctionLoggingConfigArgs(log_format="Text", log_group=log_group.name),
            tags=name_tag(f"db-{spec.role}"),
        ),
            # The role must be able to create ENIs and write logs before the function exists,
            # and the log group must exist first so Lambda does not create one unencrypted.
            pulumi.ResourceOptions(parent=self, depends_on=[log_group, vpc_access, access]))


    def rotate_generated_secrets(self, secrets: Mapping[str, pulumi.Input[str]],
                                 after: Sequence[pulumi.Resource] = ()) -> aws.lambda_.Function:
        """Rotation of generated secrets that only their readers use (role -> secret ARN: the Django
        secret, Grafana's admin secret), every `rotation_days`, by one more function of the same
        package (scripts/dbops/generated_rotation.py). Called once the secrets exist (they belong to
        components built after this one); `after`: what writes their first values."""
        arns = list(secrets.values())
        spec = FUNCTIONS["rotate-generated"]
        function = self._function(self._name, spec, self._args, self._package,
                                  generated_rotation_statements(arns, self._args.kms_key_arn, self._args.region), {})
        self.function_names[spec.role] = function.name
        self.function_arns[spec.role] = function.arn
        self.rotation_function_names[spec.role] = function.name
        self._rotated.extend(arns)
        for role, arn in secrets.items():
            # Enabling rotation has Secrets Manager test the function: the first value and the
            # function's network path (to the Secrets Manager API) must be there.
            self._rotation(self._name, role, f"{role}-rotation-invoke", arn, arn, function, self._args,
                           after=[*after, *self._args.network_ready])
        return function


# --- what the component is made of, as plain data --------------------------------------------
# Pure functions (arguments in, documents out; Outputs only as values), called by the component
# above and by the unit tests directly.

@dataclass(frozen=True)
class DatabaseSecretArns:
    """The ARNs of the database login secrets this component writes."""
    app: pulumi.Input[str]                             # psychology-api/<stack>/database/app
    monitor: pulumi.Input[str]                         # .../database/monitor (postgres_exporter)
    host_logins: Mapping[str, pulumi.Input[str]]       # MONITORING_HOST_LOGINS key -> .../database/<key>

    def rotated_by_rotate(self) -> list[pulumi.Input[str]]:
        """The secrets the `rotate` function rotates, in a fixed order."""
        return [self.app, self.monitor, *self.host_logins.values()]


@dataclass
class _Credentials:
    app: aws.secretsmanager.Secret
    monitor: aws.secretsmanager.Secret
    monitor_version: aws.secretsmanager.SecretVersion
    host_logins: dict[str, tuple[aws.secretsmanager.Secret, aws.secretsmanager.SecretVersion]]

    def arns(self) -> DatabaseSecretArns:
        return DatabaseSecretArns(app=self.app.arn, monitor=self.monitor.arn,
                                  host_logins={key: secret.arn for key, (secret, _) in self.host_logins.items()})


def _first_password_args() -> random.RandomPasswordArgs:
    return random.RandomPasswordArgs(length=32, special=True, override_special=PASSWORD_SPECIALS,
                                     min_special=1, min_numeric=1)


def app_credentials_document(args: DbOpsArgs, password: pulumi.Input[str]) -> dict[str, Any]:
    """The application secret's first value (scripts/dbops reads these keys)."""
    return {"engine": "postgres", "host": args.db_host, "port": args.db_port, "dbname": args.db_name,
            "username": APP_FIRST_USER, "password": password, "masterarn": args.master_secret_arn}


def login_credentials_document(args: DbOpsArgs, username: str, password: pulumi.Input[str]) -> dict[str, Any]:
    """The first value of a login secret of the monitoring host (monitor, backup, drill)."""
    return {"username": username, "password": password, "host": args.db_host, "port": args.db_port,
            "dbname": args.db_name}


def rotates_redis(args: DbOpsArgs) -> bool:
    """The Redis secret rotates when the secret and the replication group are given."""
    return (args.redis_secret_arn is not None and args.redis_replication_group_id is not None
            and args.redis_replication_group_arn is not None and args.redis_host is not None)


def rotated_secret_arns(arns: DatabaseSecretArns, redis_rotation: bool,
                        redis_secret_arn: Optional[pulumi.Input[str]]) -> list[pulumi.Input[str]]:
    """Every secret the component's functions rotate (the hourly check watches them)."""
    rotated = arns.rotated_by_rotate()
    if redis_rotation and redis_secret_arn is not None:
        rotated.append(redis_secret_arn)
    return rotated


def _data_key_statement(sid: str, actions: str | list[str], kms_key_arn: pulumi.Input[str],
                        region: str) -> dict[str, Any]:
    """The data key, used through Secrets Manager only."""
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": kms_key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}}}


# GetRandomPassword acts on no resource: IAM accepts only "*" for it.
GENERATE_PASSWORDS = {"Sid": "GeneratePasswords", "Effect": "Allow", "Action": "secretsmanager:GetRandomPassword",
                      "Resource": "*"}


def function_statements(args: DbOpsArgs, arns: DatabaseSecretArns,
                        redis_rotation: bool) -> dict[str, list[dict[str, Any]]]:
    """Function key -> the statements of its role's inline policy: exactly the secrets it reads
    or writes, and the data key through Secrets Manager only. `rotate-redis` only when the Redis
    secret rotates."""
    read_through_secrets_manager = _data_key_statement("DecryptSecretsWithTheDataKey", "kms:Decrypt",
                                                       args.kms_key_arn, args.region)
    # New versions are encrypted with the data key, through Secrets Manager only.
    write_through_secrets_manager = _data_key_statement("EncryptAndDecryptSecretsWithTheDataKey",
                                                        ["kms:Decrypt", "kms:GenerateDataKey"], args.kms_key_arn, args.region)
    health_secrets = [arns.app] + ([args.redis_secret_arn] if args.redis_secret_arn is not None else [])
    statements: dict[str, list[dict[str, Any]]] = {
        "migrate": [
            {"Sid": "ReadMasterAndRoleCredentials", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": [args.master_secret_arn, *arns.rotated_by_rotate()]},
            read_through_secrets_manager,
        ],
        "health": [
            {"Sid": "ReadApplicationAndRedisCredentials", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": health_secrets},
            read_through_secrets_manager,
        ],
        "rotate": [
            {"Sid": "RotateTheDatabaseCredentialSecrets", "Effect": "Allow", "Action": ROTATE_SECRET_ACTIONS,
             "Resource": arns.rotated_by_rotate()},
            {"Sid": "ReadMasterCredentials", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": args.master_secret_arn},
            GENERATE_PASSWORDS,
            write_through_secrets_manager,
        ],
    }
    if redis_rotation:
        statements["rotate-redis"] = [
            {"Sid": "RotateTheRedisSecret", "Effect": "Allow", "Action": ROTATE_SECRET_ACTIONS,
             "Resource": args.redis_secret_arn},
            {
                # The token changes on exactly this replication group; nothing else in ElastiCache.
                "Sid": "ChangeTheAuthTokenOfTheReplicationGroup", "Effect": "Allow",
                "Action": ["elasticache:ModifyReplicationGroup", "elasticache:DescribeReplicationGroups"],
                "Resource": args.redis_replication_group_arn,
            },
            GENERATE_PASSWORDS,
            write_through_secrets_manager,
        ]
    return statements


def function_environments(args: DbOpsArgs, arns: DatabaseSecretArns,
                          redis_rotation: bool) -> dict[str, dict[str, pulumi.Input[str]]]:
    """Function key -> its environment variables (scripts/dbops/handlers.py reads them)."""
    endpoint = {"DB_HOST": args.db_host, "DB_PORT": as_text(args.db_port), "DB_NAME": args.db_name}
    environments: dict[str, dict[str, pulumi.Input[str]]] = {
        "migrate": {"MASTER_SECRET_ARN": args.master_secret_arn, "APP_DB_SECRET_ARN": arns.app,
                    "MONITOR_DB_SECRET_ARN": arns.monitor, "BACKUP_DB_SECRET_ARN": arns.host_logins["backup"],
                    "DRILL_DB_SECRET_ARN": arns.host_logins["drill"], **endpoint,
                    "MIGRATION_LOCK_TIMEOUT_SECONDS": str(args.migration_lock_timeout_seconds),
                    "MIGRATION_LOCK_ATTEMPTS": str(args.migration_lock_attempts),
                    "MIGRATION_STATEMENT_TIMEOUT_SECONDS": str(args.migration_statement_timeout_seconds)},
        "health": {"APP_DB_SECRET_ARN": arns.app, **endpoint,
                   **({"REDIS_SECRET_ARN": args.redis_secret_arn} if args.redis_secret_arn is not None else {})},
        "rotate": {"MASTER_SECRET_ARN": args.master_secret_arn, **endpoint},
    }
    if redis_rotation:
        assert args.redis_replication_group_id is not None and args.redis_host is not None
        environments["rotate-redis"] = {
            "REDIS_REPLICATION_GROUP_ID": args.redis_replication_group_id,
            "REDIS_HOST": args.redis_host,
            "REDIS_PORT": as_text(args.redis_port or 6379),
        }
    return environments


def rotation_check_statements(rotated: Sequence[pulumi.Input[str]], namespace: str) -> list[dict[str, Any]]:
    """The hourly rotation check's policy: describe the rotated secrets, publish its metric."""
    return [
        {"Sid": "DescribeTheRotatedSecrets", "Effect": "Allow", "Action": "secretsmanager:DescribeSecret",
         "Resource": list(rotated)},
        {
            # PutMetricData has no resource-level permissions; the namespace condition
            # confines it to the check's own namespace.
            "Sid": "PublishTheRotationCheck", "Effect": "Allow", "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": namespace}},
        },
    ]


def rotation_check_environment(rotated: Sequence[pulumi.Input[str]], namespace: str) -> dict[str, pulumi.Input[str]]:
    """The rotation check's environment (scripts/dbops/rotation_check.py)."""
    arns: pulumi.Input[str]
    if all(isinstance(arn, str) for arn in rotated):
        arns = ",".join(str(arn) for arn in rotated)
    else:
        arns = pulumi.Output.all(*rotated).apply(lambda values: ",".join(values))
    return {"ROTATED_SECRET_ARNS": arns, "METRIC_NAMESPACE": namespace, "MARGIN_DAYS": str(DEFAULT_MARGIN_DAYS)}


def generated_rotation_statements(arns: Sequence[pulumi.Input[str]], kms_key_arn: pulumi.Input[str],
                                  region: str) -> list[dict[str, Any]]:
    """The generated-secret rotation's policy: rotate exactly those secrets, new passwords, the data key."""
    return [
        {"Sid": "RotateTheGeneratedSecrets", "Effect": "Allow", "Action": ROTATE_SECRET_ACTIONS, "Resource": list(arns)},
        GENERATE_PASSWORDS,
        _data_key_statement("EncryptAndDecryptSecretsWithTheDataKey", ["kms:Decrypt", "kms:GenerateDataKey"],
                            kms_key_arn, region),
    ]
